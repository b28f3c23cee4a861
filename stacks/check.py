"""Check a stack definition, and the run configurations meant for it, without touching it.

    python -m stacks.check stacks/kubernetes.yaml configs/*_schedule.yaml

In a throw-away ZenML store (never your real one) it registers the stack with ZenML's own API,
which validates every component's configuration against its flavor's schema; runs ZenML's stack
validation (for Kubernetes: a remote artifact store, a container registry, an image builder and
the kubeconfig context the orchestrator names); then compiles each pipeline with its run
configuration on that stack, which validates parameters against the pipeline's signature and
settings against the stack components, and checks each schedule's cron expression. The secrets
the stack declares are created there with placeholder values: their real values are never read.
A configuration ``configs/<name>[_anything].yaml`` belongs to ``pipelines.<name>.<name>``;
``MODULE.FUNCTION=FILE`` names the pipeline of any other file.
No cluster, registry, bucket or MLflow server is contacted.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import Any


def pipeline_of(config: str) -> tuple[Any, Path]:
    """The pipeline a run configuration belongs to and the file: ``MODULE.FUNCTION=FILE``, or
    by the file's name: ``configs/<name>[_anything].yaml`` → ``pipelines.<name>.<name>``."""
    source, _, path = config.rpartition("=")
    file = Path(path)
    parts = file.stem.split("_")
    candidates = (
        [source]
        if source
        else [f"pipelines.{n}.{n}" for n in ("_".join(parts[:i]) for i in range(len(parts), 0, -1))]
    )
    for candidate in candidates:
        module, _, name = candidate.rpartition(".")
        try:
            return getattr(importlib.import_module(module), name), file
        except (ImportError, AttributeError):
            continue
    raise SystemExit(
        f"{file}: no pipeline {' or '.join(candidates)} for it; name the file "
        "after its pipeline or pass MODULE.FUNCTION=FILE."
    )


def check_schedule(config: Path, schedule: Any) -> str:
    """A line describing ``schedule``; an error when it is missing or its cron is invalid."""
    from croniter import croniter

    if schedule is None:
        return "no schedule (runs once)"
    cron = schedule.cron_expression
    if cron is None:
        return f"schedule {schedule.name!r} every {schedule.interval_second}"
    if not croniter.is_valid(cron) or len(cron.split()) != 5:
        raise SystemExit(
            f"{config}: schedule.cron_expression {cron!r} is not a 5-field cron "
            "expression (minute hour day-of-month month day-of-week)."
        )
    return f"schedule {schedule.name!r} cron {cron!r}"


class Ignored(logging.Handler):
    """Collects ZenML's "Ignoring invalid setting attributes" warnings: a misspelt setting
    that ZenML would silently drop is an error here."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Keep the warnings about ignored settings."""
        if "Ignoring invalid setting" in record.getMessage():
            self.messages.append(record.getMessage())


def compile_config(config: str) -> tuple[Path, Any, Any]:
    """The compiled snapshot and schedule of ``config`` on the active stack; a parameter or
    setting that ZenML rejects or would ignore is an error naming the file."""
    from zenml.config import compiler

    ignored = Ignored()
    compiler_log = logging.getLogger(compiler.__file__)  # ZenML names its loggers by file
    compiler_log.addHandler(ignored)
    try:
        source, file = pipeline_of(config)
        pipeline = source.with_options(config_path=str(file))
        pipeline.prepare()
        snapshot, schedule, _ = pipeline._compile(config_path=str(file))
    except (ValueError, TypeError, KeyError) as exc:
        cause = f": {exc.__cause__}" if exc.__cause__ else ""
        raise SystemExit(f"{config}: {exc}{cause}") from exc
    finally:
        compiler_log.removeHandler(ignored)
    if ignored.messages:
        raise SystemExit(f"{config}: " + "; ".join(ignored.messages))
    return file, snapshot, schedule


def check(stack_path: Path, configs: list[str]) -> list[str]:
    """Register ``stack_path`` in the current (throw-away) ZenML store, validate it, compile
    ``configs`` on it; returns what was checked, one line each."""
    from zenml.client import Client
    from zenml.stack import Stack

    from stacks.register import load_spec, register

    spec = load_spec(stack_path)
    client = Client()
    for name, wanted in (spec.get("secrets") or {}).items():
        client.create_secret(name, values={key: "placeholder" for key in wanted.get("keys", [])})
    name = register(stack_path)
    components = ", ".join(f"{t}={items[0]['flavor']}" for t, items in spec["components"].items())
    lines = [f"stack {name}: registered ({components})"]
    Stack.from_model(client.get_stack(name)).validate()
    lines.append(f"stack {name}: ZenML stack validation passed")
    for config in configs:
        file, snapshot, schedule = compile_config(config)
        lines.append(
            f"{file}: {snapshot.pipeline_configuration.name} compiles on {name} "
            f"({len(snapshot.step_configurations)} steps), {check_schedule(file, schedule)}"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, point ZenML at a temporary store, and check."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("stack", type=Path, help="stack definition, e.g. stacks/kubernetes.yaml")
    parser.add_argument(
        "configs",
        nargs="*",
        help="run configurations to compile on it: FILE or MODULE.FUNCTION=FILE",
    )
    args = parser.parse_args(argv)
    if "zenml" in sys.modules:
        raise SystemExit("stacks.check must run before ZenML is imported (python -m stacks.check)")
    with tempfile.TemporaryDirectory(prefix="slipway-stack-check-") as tmp:
        os.environ.update(
            {
                "ZENML_CONFIG_PATH": f"{tmp}/config",
                "ZENML_REPOSITORY_PATH": tmp,
                "ZENML_ANALYTICS_OPT_IN": "false",
                "ZENML_LOGGING_VERBOSITY": "WARN",
            }
        )
        os.environ.pop("ZENML_STORE_URL", None)
        os.environ.pop("ZENML_STORE_API_KEY", None)
        Path(tmp, ".zen").mkdir()
        for line in check(args.stack, args.configs):
            print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
