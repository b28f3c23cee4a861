"""Constrained decoding for OpenAI's ``response_format`` and ``tools``.

onnxruntime-genai constrains the decoder with llguidance (``GeneratorParams.set_guidance``): a
JSON schema, or a Lark grammar that may embed JSON schemas. Here the requests' formats and tool
lists become that guidance, and a guided tool-call output becomes OpenAI's ``tool_calls``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

ANY_OBJECT: dict[str, Any] = {"type": "object"}


@dataclass(frozen=True)
class Guidance:
    """What the decoder's output must match: llguidance's ``json_schema`` or ``lark_grammar``."""

    kind: Literal["json_schema", "lark_grammar"]
    data: str


@dataclass(frozen=True)
class ToolSpec:
    """A function the model may call: its name, what it does and the JSON schema of its
    arguments."""

    name: str
    parameters: Mapping[str, Any]
    description: str = ""


@dataclass(frozen=True)
class ToolCall:
    """A parsed call: the function's name and its arguments as a JSON string."""

    name: str
    arguments: str


def compact(schema: Mapping[str, Any]) -> dict[str, Any]:
    """``schema`` with llguidance's option for JSON without free whitespace (else a weak
    model can fill its token budget with blanks between the braces)."""
    return {**schema, "x-guidance": {"whitespace_flexible": False}}


def json_guidance(schema: Mapping[str, Any] | None = None) -> Guidance:
    """Output that is compact JSON valid against ``schema`` (any JSON object when None)."""
    return Guidance("json_schema", json.dumps(compact(schema or ANY_OBJECT)))


def tool_call_schema(tools: Sequence[ToolSpec]) -> dict[str, Any]:
    """The JSON of one call of any of ``tools``: ``{"name": ..., "arguments": {...}}``."""
    options = [
        {
            "type": "object",
            "properties": {"name": {"const": t.name}, "arguments": dict(t.parameters)},
            "required": ["name", "arguments"],
            "additionalProperties": False,
        }
        for t in tools
    ]
    return options[0] if len(options) == 1 else {"anyOf": options}


def tools_guidance(tools: Sequence[ToolSpec], choice: str) -> Guidance | None:
    """The guidance of a ``tool_choice``: ``required`` or a function's name force a call (of
    that function); ``auto`` lets the output be either plain text or one call (a Lark grammar:
    text that does not open with ``{``, or the call's JSON); ``none`` leaves it free."""
    if not tools or choice == "none":
        return None
    if choice == "required":
        return json_guidance(tool_call_schema(tools))
    if choice == "auto":
        schema = json.dumps(compact(tool_call_schema(tools)))
        grammar = f"start: call | text\ncall: %json {schema}\ntext: /[^{{\\s][\\s\\S]*/\n"
        return Guidance("lark_grammar", grammar)
    named = [t for t in tools if t.name == choice]
    if not named:
        raise ValueError(f"tool_choice names {choice!r}, not one of the tools")
    return json_guidance(tool_call_schema(named))


def parse_tool_call(text: str, tools: Sequence[ToolSpec]) -> ToolCall | None:
    """The call in a guided output, or None when the output is plain text (``auto``) or was
    cut before the JSON closed (``finish_reason: length``)."""
    stripped = text.strip()
    if not stripped.startswith("{"):
        return None
    try:
        value = json.loads(stripped)
    except json.JSONDecodeError:
        return None
    names = {t.name for t in tools}
    if not isinstance(value, dict) or value.get("name") not in names:
        return None
    return ToolCall(str(value["name"]), json.dumps(value.get("arguments", {})))


def tools_prompt(tools: Sequence[ToolSpec]) -> str:
    """A short system message that names the functions the model may call and their
    arguments (the decoder's guidance enforces the exact shape; this lets the model choose)."""
    lines = ["You can call these functions:"]
    for t in tools:
        about = f": {t.description}" if t.description else ""
        lines.append(f"- {t.name}({', '.join(_fields(t.parameters))}){about}")
    lines.append(
        'To call one, reply with only {"name": ..., "arguments": {...}}; otherwise reply in '
        "plain text."
    )
    return "\n".join(lines)


def format_prompt(schema: Mapping[str, Any] | None) -> str:
    """A short system message that asks for JSON (with the schema's top-level fields)."""
    fields = _fields(schema or {})
    return "Reply with one JSON object" + (f" with {', '.join(fields)}." if fields else ".")


def _fields(schema: Mapping[str, Any]) -> list[str]:
    properties = schema.get("properties")
    return list(properties) if isinstance(properties, Mapping) else []
