"""Tier 1: OpenAI's response_format and tools as decoder guidance, and calls parsed back."""

from __future__ import annotations

import json

import pytest

from slipway.generation.constraints import (
    ANY_OBJECT,
    ToolSpec,
    compact,
    json_guidance,
    parse_tool_call,
    tool_call_schema,
    tools_guidance,
)

CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
TOOLS = [ToolSpec("get_weather", CITY), ToolSpec("get_time", {"type": "object"})]


def test_json_guidance_is_the_schema_or_any_object() -> None:
    assert json.loads(json_guidance(None).data) == compact(ANY_OBJECT)
    assert json.loads(json_guidance(CITY).data) == compact(CITY)
    assert compact(CITY)["x-guidance"] == {"whitespace_flexible": False}
    assert json_guidance(CITY).kind == "json_schema"


def test_tool_choice_decides_what_the_output_may_be() -> None:
    assert tools_guidance(TOOLS, "none") is None and tools_guidance([], "auto") is None
    required = tools_guidance(TOOLS, "required")
    assert required is not None
    assert json.loads(required.data) == compact(tool_call_schema(TOOLS))
    assert len(tool_call_schema(TOOLS)["anyOf"]) == 2
    named = tools_guidance(TOOLS, "get_time")
    assert named is not None
    only = json.loads(named.data)
    assert only["properties"]["name"] == {"const": "get_time"} and "anyOf" not in only
    auto = tools_guidance(TOOLS, "auto")
    assert auto is not None and auto.kind == "lark_grammar"
    assert "%json" in auto.data and "text" in auto.data
    with pytest.raises(ValueError, match="not one of the tools"):
        tools_guidance(TOOLS, "get_stock_price")


def test_a_guided_output_becomes_a_call_or_stays_text() -> None:
    call = parse_tool_call(' {"name": "get_weather", "arguments": {"city": "Oslo"}}', TOOLS)
    assert call is not None and call.name == "get_weather"
    assert json.loads(call.arguments) == {"city": "Oslo"}
    assert parse_tool_call("It is sunny in Oslo.", TOOLS) is None  # auto: the model wrote text
    assert parse_tool_call('{"name": "get_weather", "argu', TOOLS) is None  # cut by max_tokens
    assert parse_tool_call('{"name": "launch", "arguments": {}}', TOOLS) is None


def test_unimplemented_openai_fields_are_refused_unless_at_their_defaults() -> None:
    from pydantic import ValidationError

    from slipway.api.schemas import ChatRequest, CompletionRequest

    ask = [{"role": "user", "content": "hi"}]
    ok = ChatRequest.model_validate(
        {"messages": ask, "presence_penalty": 0, "logprobs": False, "logit_bias": {}}
    )
    assert ok.presence_penalty == 0
    refused = [
        ({"presence_penalty": 0.5}, "unsupported_parameter"),
        ({"frequency_penalty": -3.0}, "greater_than_equal"),
        ({"top_logprobs": 3}, "unsupported_parameter"),
        ({"functions": [{"name": "f"}]}, "unsupported_parameter"),
        ({"response_format": {"type": "json_schema"}}, "value_error"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "s", "schema": {"type": 1}},
                }
            },
            "invalid_json_schema",
        ),
        (
            {
                "tools": [{"type": "function", "function": {"name": "f"}}],
                "tool_choice": {"type": "function", "function": {"name": "g"}},
            },
            "value_error",
        ),
        ({"tool_choice": "required"}, "value_error"),
    ]
    for extra, code in refused:
        with pytest.raises(ValidationError) as caught:
            ChatRequest.model_validate({"messages": ask, **extra})
        assert caught.value.errors()[0]["type"] == code, extra
    for extra in ({"echo": True}, {"best_of": 3}, {"suffix": "x"}, {"logprobs": 1}):
        with pytest.raises(ValidationError, match="unsupported_parameter"):
            CompletionRequest.model_validate({"prompt": "hi", **extra})
    tool_turn = ChatRequest.model_validate(
        {
            "messages": [
                *ask,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": "c1",
                            "type": "function",
                            "function": {"name": "f", "arguments": "{}"},
                        }
                    ],
                },
                {"role": "tool", "tool_call_id": "c1", "content": "42"},
            ]
        }
    )
    assert tool_turn.messages[1].text() == '{"name": "f", "arguments": {}}'
