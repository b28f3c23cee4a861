"""Prompts as versioned artifacts: YAML sources in ``prompts/``, versions and aliases in MLflow 3's
prompt registry, and the resolved set a bundle serves (``prompts.json`` beside its manifest).

A source file holds ``name``, ``template`` (MLflow's ``{{variable}}`` placeholders) and optionally
``description`` and ``tags``. The service never talks to the registry: the build resolves each
served kind (``answer``, ``summarize``, ``chat_system``) to concrete versions, with weights when
several versions share the traffic (online A/B), and the bundle carries them."""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The repository's prompt sources (beside the ``slipway`` package in a clone or an install).
SOURCES_DIR = Path(__file__).resolve().parents[1] / "prompts"
SERVED_KINDS: dict[str, frozenset[str]] = {
    "answer": frozenset({"sources", "question"}),
    "summarize": frozenset({"words", "text"}),
    "chat_system": frozenset(),
}
PROMPTS_FILE = "prompts.json"
_VAR = re.compile(r"\{\{\s*(\w+)\s*\}\}")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


class PromptError(ValueError):
    """A prompt source, reference or served set is unusable; the message says what to change."""


@dataclass(frozen=True)
class Prompt:
    """One prompt version: a registry version (``"3"``) or an unregistered file (``file:...``)."""

    name: str
    version: str
    template: str
    description: str = ""
    tags: Mapping[str, str] = field(default_factory=dict)

    @property
    def variables(self) -> frozenset[str]:
        return frozenset(_VAR.findall(self.template))

    @property
    def ref(self) -> str:
        """``name/version``: what answers, traces and metrics name."""
        return f"{self.name}/{self.version}"

    def format(self, **values: object) -> str:
        """The template with every ``{{variable}}`` filled; a missing value is an error."""
        missing = self.variables - values.keys()
        if missing:
            raise PromptError(f"Prompt {self.ref} needs values for {sorted(missing)}.")
        return _VAR.sub(lambda m: str(values[m.group(1)]), self.template)

    def split(self, variable: str) -> tuple[str, str]:
        """The template before and after ``{{variable}}`` (which must occur exactly once)."""
        parts = re.split(r"\{\{\s*" + re.escape(variable) + r"\s*\}\}", self.template)
        if len(parts) != 2:
            raise PromptError(f"Prompt {self.ref} must contain {{{{{variable}}}}} exactly once.")
        return parts[0], parts[1]


def fill(text: str, **values: object) -> str:
    """``text`` with the ``{{variables}}`` named in ``values`` filled, others left as they are."""
    return _VAR.sub(lambda m: str(values[m.group(1)]) if m.group(1) in values else m.group(0), text)


def load_file(path: Path) -> Prompt:
    """A prompt from a YAML source file (version ``file:<path>``)."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise PromptError(f"No prompt file {path}.") from exc
    except yaml.YAMLError as exc:
        raise PromptError(f"{path} is not valid YAML: {exc}") from exc
    if not isinstance(data, dict) or not isinstance(data.get("template"), str):
        raise PromptError(f"{path} needs a 'template' string (and a 'name').")
    name = str(data.get("name") or path.stem)
    if not _NAME.match(name):
        raise PromptError(
            f"{path}: name {name!r} must be letters, digits, '.', '_' or '-' (at most 100)."
        )
    tags = data.get("tags") or {}
    if not isinstance(tags, dict):
        raise PromptError(f"{path}: 'tags' must be a mapping of strings.")
    return Prompt(
        name=name,
        version=f"file:{path.name}",
        template=data["template"],
        description=str(data.get("description") or ""),
        tags={str(k): str(v) for k, v in tags.items()},
    )


def source_files(directory: Path = SOURCES_DIR) -> list[Path]:
    """The YAML prompt sources in ``directory``, sorted."""
    return sorted([*directory.glob("*.yaml"), *directory.glob("*.yml")])


def _registry_uri(ref: str) -> str:
    ref = ref.removeprefix("prompts:/")
    if "@" in ref:
        return f"prompts:/{ref}"
    name, _, version = ref.rpartition("/")
    if not name or not version.isdigit():
        raise PromptError(
            f"Prompt reference {ref!r}: use 'name@alias', 'name/VERSION', "
            "'prompts:/name/VERSION' or a path to a YAML file."
        )
    return f"prompts:/{name}/{version}"


def _from_registry(version: Any) -> Prompt:
    tags = {k: v for k, v in (version.tags or {}).items() if not k.startswith("mlflow.")}
    return Prompt(
        name=version.name,
        version=str(version.version),
        template=version.template,
        description=version.commit_message or "",
        tags=tags,
    )


def resolve(ref: str, tracking_uri: str | None = None) -> Prompt:
    """The prompt ``ref`` names: a YAML path, or a registry version or alias."""
    path = Path(ref)
    if path.suffix in {".yaml", ".yml"} or path.is_file():
        return load_file(path)
    import mlflow
    from mlflow.exceptions import MlflowException

    uri = _registry_uri(ref)
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    try:
        version = mlflow.genai.load_prompt(uri, allow_missing=False)
    except MlflowException as exc:
        raise PromptError(
            f"No prompt {uri} in the registry at {mlflow.get_registry_uri()}; register it with "
            "`slipway prompts register` or check the name and version (`slipway prompts list`)."
        ) from exc
    return _from_registry(version)


def register(prompt: Prompt, tracking_uri: str | None = None, alias: str | None = None) -> Prompt:
    """``prompt`` as a registry version: a new version only when its template or tags differ
    from the latest one (so re-runs do not pile up versions); ``alias`` moved to it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
        mlflow.set_registry_uri(tracking_uri)
    tags = {**prompt.tags, "slipway.source_sha": _digest(prompt)}
    latest = None
    try:
        latest = mlflow.genai.load_prompt(f"prompts:/{prompt.name}@latest", allow_missing=True)
    except MlflowException:
        latest = None
    if (
        latest is not None
        and (latest.tags or {}).get("slipway.source_sha") == tags["slipway.source_sha"]
    ):
        version = latest
    else:
        version = mlflow.genai.register_prompt(
            name=prompt.name,
            template=prompt.template,
            commit_message=prompt.description or None,
            tags=tags,
        )
    if alias:
        mlflow.genai.set_prompt_alias(prompt.name, alias=alias, version=int(version.version))
    return _from_registry(version)


def _digest(prompt: Prompt) -> str:
    body = json.dumps([prompt.template, sorted(prompt.tags.items())]).encode()
    return hashlib.sha256(body).hexdigest()[:16]


# --- what a bundle serves ------------------------------------------------------------------


@dataclass(frozen=True)
class Variant:
    """A prompt version and its share of the traffic."""

    prompt: Prompt
    weight: float


@dataclass(frozen=True)
class ServedPrompts:
    """The prompt versions a bundle serves, by kind; several variants of a kind split the
    traffic by weight (online A/B), picked by a stable hash of the experiment unit."""

    kinds: Mapping[str, tuple[Variant, ...]]

    def variants(self, kind: str) -> tuple[Variant, ...]:
        return self.kinds[kind]

    def pick(self, kind: str, unit: str) -> Prompt:
        """The variant of ``kind`` that experiment unit ``unit`` (a key id, a user) gets: the
        same one every time, each with its weight's share of units."""
        variants = self.kinds[kind]
        if len(variants) == 1:
            return variants[0].prompt
        point = int.from_bytes(hashlib.sha256(f"{kind}:{unit}".encode()).digest()[:8], "big")
        target = point / 2**64 * sum(v.weight for v in variants)
        for variant in variants:
            target -= variant.weight
            if target < 0:
                return variant.prompt
        return variants[-1].prompt

    def versions(self) -> dict[str, list[dict[str, Any]]]:
        """``{kind: [{name, version, weight}]}``: what ``/v1/models`` lists."""
        return {
            kind: [
                {"name": v.prompt.name, "version": v.prompt.version, "weight": v.weight}
                for v in variants
            ]
            for kind, variants in self.kinds.items()
        }

    def to_json(self) -> dict[str, Any]:
        return {
            kind: [
                {
                    "name": v.prompt.name,
                    "version": v.prompt.version,
                    "weight": v.weight,
                    "template": v.prompt.template,
                }
                for v in variants
            ]
            for kind, variants in self.kinds.items()
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ServedPrompts:
        kinds = {
            kind: tuple(
                Variant(Prompt(v["name"], str(v["version"]), v["template"]), float(v["weight"]))
                for v in variants
            )
            for kind, variants in data.items()
        }
        return cls(check_served(kinds))

    def save(self, directory: Path) -> Path:
        path = directory / PROMPTS_FILE
        path.write_text(json.dumps(self.to_json(), indent=2), encoding="utf-8")
        return path


def check_served(kinds: Mapping[str, tuple[Variant, ...]]) -> dict[str, tuple[Variant, ...]]:
    """``kinds`` if every served kind has variants with positive weights and the variables its
    use case fills; otherwise a :class:`PromptError` naming the prompt."""
    out: dict[str, tuple[Variant, ...]] = {}
    for kind, needed in SERVED_KINDS.items():
        variants = tuple(kinds.get(kind, ()))
        if not variants:
            raise PromptError(f"No '{kind}' prompt in the served set.")
        for variant in variants:
            if variant.weight <= 0:
                raise PromptError(f"Prompt {variant.prompt.ref}: weight must be positive.")
            if variant.prompt.variables != needed:
                raise PromptError(
                    f"The '{kind}' prompt {variant.prompt.ref} must use exactly the variables "
                    f"{sorted(needed) or 'none'}; it uses {sorted(variant.prompt.variables)}."
                )
            if kind == "answer":
                variant.prompt.split("sources")
        out[kind] = variants
    return out


Selection = str | Mapping[str, float]


def serve_selection(
    selection: Mapping[str, Selection] | None, tracking_uri: str | None = None
) -> ServedPrompts:
    """Resolve what a bundle will serve: per kind a reference (``"latest"``, an alias, a
    version, ``name@alias``, a YAML path) or ``{reference: weight}`` for an online A/B. Bare
    versions and aliases refer to the kind's registered prompt (``slipway-<kind>``)."""
    selection = dict(selection or {})
    unknown = selection.keys() - SERVED_KINDS.keys()
    if unknown:
        raise PromptError(
            f"Unknown prompt kinds {sorted(unknown)}; served kinds are {sorted(SERVED_KINDS)}."
        )
    kinds: dict[str, tuple[Variant, ...]] = {}
    for kind in SERVED_KINDS:
        choice = selection.get(kind, "latest")
        weighted = {choice: 1.0} if isinstance(choice, str) else dict(choice)
        kinds[kind] = tuple(
            Variant(resolve(_qualified(kind, ref), tracking_uri), float(weight))
            for ref, weight in weighted.items()
        )
    return ServedPrompts(check_served(kinds))


def _qualified(kind: str, ref: str) -> str:
    if ref.endswith((".yaml", ".yml")) or "@" in ref or "/" in ref:
        return ref
    name = default_name(kind)
    return f"{name}/{ref}" if ref.isdigit() else f"{name}@{ref}"


def default_name(kind: str) -> str:
    """The registry name of a served kind's prompt (``slipway-answer``)."""
    return f"slipway-{kind.replace('_', '-')}"


def sync_sources(
    tracking_uri: str | None = None, directory: Path = SOURCES_DIR, alias: str | None = None
) -> list[Prompt]:
    """Register every source in ``directory`` (new versions only where they changed)."""
    return [register(load_file(path), tracking_uri, alias) for path in source_files(directory)]


def from_sources(directory: Path = SOURCES_DIR) -> ServedPrompts:
    """The served set straight from the YAML sources (unregistered): what a bundle without a
    ``prompts.json`` serves."""
    by_name = {p.name: p for p in map(load_file, source_files(directory))}
    kinds: dict[str, tuple[Variant, ...]] = {}
    for kind in SERVED_KINDS:
        prompt = by_name.get(default_name(kind))
        if prompt is None:
            raise PromptError(
                f"No {default_name(kind)} prompt in {directory}; restore prompts/{kind}.yaml."
            )
        kinds[kind] = (Variant(prompt, 1.0),)
    return ServedPrompts(check_served(kinds))


def load_served(bundle_root: Path) -> ServedPrompts:
    """The bundle's ``prompts.json``, or the sources when the bundle predates it."""
    path = bundle_root / PROMPTS_FILE
    if not path.is_file():
        return from_sources()
    try:
        return ServedPrompts.from_json(json.loads(path.read_text(encoding="utf-8")))
    except (KeyError, TypeError, ValueError) as exc:
        raise PromptError(f"{path} is not a valid served prompt set: {exc}") from exc


def describe(prompts: Sequence[Prompt]) -> list[dict[str, str]]:
    """Rows for a table of prompts."""
    return [{"name": p.name, "version": p.version, "description": p.description} for p in prompts]
