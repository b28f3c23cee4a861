"""Register a stack from a YAML definition, idempotently and without prompts.

``zenml stack import`` prompts when the stack exists; this creates what is missing, updates
components whose configuration changed, and activates the stack.

    python -m stacks.register stacks/local.yaml
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml
from zenml.client import Client
from zenml.enums import StackComponentType


def ensure_component(client: Client, ctype: StackComponentType, spec: dict[str, Any]) -> str:
    """The id of the component named in ``spec``, created or updated to match it."""
    name, flavor = spec["name"], spec["flavor"]
    configuration = spec.get("configuration") or {}
    try:
        existing = client.get_stack_component(ctype, name_id_or_prefix=name, allow_name_prefix_match=False)
    except KeyError:
        created = client.create_stack_component(
            name=name, flavor=flavor, component_type=ctype, configuration=configuration
        )
        return str(created.id)
    if existing.flavor_name != flavor:
        raise SystemExit(
            f"A {ctype.value} named '{name}' exists with flavor '{existing.flavor_name}', "
            f"not '{flavor}'; rename it in the stack YAML or delete it with `zenml {ctype.value.replace('_', '-')} delete {name}`."
        )
    if configuration and any(existing.configuration.get(k) != v for k, v in configuration.items()):
        client.update_stack_component(name, ctype, configuration=configuration)
    return str(existing.id)


def register(path: Path, activate: bool = True) -> str:
    """Create or update the stack described in ``path``; returns its name."""
    spec = yaml.safe_load(path.read_text())
    client = Client()
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
