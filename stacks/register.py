"""Register a stack from a YAML definition, idempotently and without prompts.

``zenml stack import`` prompts when the stack exists; this creates what is missing, updates
components whose configuration changed, and activates the stack.

    python -m stacks.register stacks/local.yaml
    python -m stacks.register stacks/kubernetes.yaml      # needs its ${...} variables and secrets

``${NAME}`` in the YAML is read from the environment (``${NAME:-default}`` falls back); the
optional ``secrets:`` section names the ZenML secrets (and their keys) that must exist first.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

VARIABLE = re.compile(r"\$\{([A-Z][A-Z0-9_]*)(?::-([^}]*))?\}")


def variables(value: Any) -> set[str]:
    """The ``${NAME}`` variables without a default used in the strings of ``value``."""
    if isinstance(value, dict):
        return set().union(*(variables(v) for v in value.values()))
    if isinstance(value, list):
        return set().union(*(variables(v) for v in value))
    if isinstance(value, str):
        return {m.group(1) for m in VARIABLE.finditer(value) if m.group(2) is None}
    return set()


def expand(value: Any, env: Mapping[str, str]) -> Any:
    """``value`` with every ``${NAME}`` / ``${NAME:-default}`` in its strings replaced from
    ``env``; empty results leave their setting out (ZenML's default applies)."""
    if isinstance(value, dict):
        expanded = {k: expand(v, env) for k, v in value.items()}
        return {k: v for k, v in expanded.items() if v != "" and (v != {} or value[k] == {})}
    if isinstance(value, list):
        return [expand(v, env) for v in value]
    if isinstance(value, str):
        return VARIABLE.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)
    return value


def load_spec(path: Path, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The stack definition at ``path`` with its variables expanded; a variable missing from
    the environment (and without a default) is an error naming all of them."""
    env = os.environ if env is None else env
    spec = yaml.safe_load(path.read_text())
    if not isinstance(spec, dict) or "stack_name" not in spec or "components" not in spec:
        raise SystemExit(f"{path} is not a stack definition: it needs stack_name and components.")
    missing = sorted(name for name in variables(spec) if name not in env)
    if missing:
        raise SystemExit(
            f"Set {', '.join(missing)} in the environment: {path} reads them "
            "(see the comments at its top)."
        )
    return dict(expand(spec, env))


def missing_secrets(client: Any, spec: Mapping[str, Any]) -> list[str]:
    """One line per secret of ``spec`` that is missing or lacks a key: the command to fix it."""
    problems = []
    for name, wanted in (spec.get("secrets") or {}).items():
        keys = list(wanted.get("keys", []))
        try:
            have = set(client.get_secret(name, allow_partial_name_match=False).secret_values)
        except KeyError:
            have = None
        if have is None or not set(keys) <= have:
            lacking = keys if have is None else sorted(set(keys) - have)
            problems.append(
                f"  {name} (for {wanted.get('used_by', 'the stack')}): missing "
                f"{', '.join(lacking)}: zenml secret "
                f"{'create' if have is None else 'update'} {name} "
                + " ".join(f"--{k}=..." for k in lacking)
            )
    return problems


def ensure_component(client: Any, ctype: Any, spec: dict[str, Any]) -> str:
    """The id of the component named in ``spec``, created or updated to match it."""
    name, flavor = spec["name"], spec["flavor"]
    configuration = spec.get("configuration") or {}
    try:
        existing = client.get_stack_component(
            ctype, name_id_or_prefix=name, allow_name_prefix_match=False
        )
    except KeyError:
        created = client.create_stack_component(
            name=name, flavor=flavor, component_type=ctype, configuration=configuration
        )
        return str(created.id)
    if existing.flavor_name != flavor:
        raise SystemExit(
            f"A {ctype.value} named '{name}' exists with flavor '{existing.flavor_name}', "
            f"not '{flavor}'; rename it in the stack YAML or delete it with "
            f"`zenml {ctype.value.replace('_', '-')} delete {name}`."
        )
    if configuration and any(existing.configuration.get(k) != v for k, v in configuration.items()):
        client.update_stack_component(name, ctype, configuration=configuration)
    return str(existing.id)


def register(path: Path, activate: bool = True, env: Mapping[str, str] | None = None) -> str:
    """Create or update the stack described in ``path``; returns its name."""
    from zenml.client import Client
    from zenml.enums import StackComponentType

    spec = load_spec(path, env)
    client = Client()
    problems = missing_secrets(client, spec)
    if problems:
        raise SystemExit(f"{path} needs these ZenML secrets first:\n" + "\n".join(problems))
    ids = {
        StackComponentType(ctype): ensure_component(client, StackComponentType(ctype), items[0])
        for ctype, items in spec["components"].items()
    }
    name = spec["stack_name"]
    try:
        client.get_stack(name, allow_name_prefix_match=False)
        client.update_stack(name, component_updates={t: [i] for t, i in ids.items()})
    except KeyError:
        client.create_stack(name=name, components=ids)
    if activate:
        client.activate_stack(name)
    return name


if __name__ == "__main__":
    target = Path(sys.argv[1] if len(sys.argv) > 1 else "stacks/local.yaml")
    print(f"Stack '{register(target)}' is registered and active.")
