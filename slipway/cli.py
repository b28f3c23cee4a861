"""The ``slipway`` command line."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(
    name="slipway",
    help="Slipway: build, check, register and serve ONNX language models with ZenML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped
ROOT = Path(__file__).resolve().parent.parent


def fail(message: str) -> None:
    """Exit non-zero with a one-line reason."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


def stack_tracking_uri() -> str:
    """The MLflow tracking URI of the active ZenML stack's experiment tracker."""
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None:
        fail("The active ZenML stack has no experiment tracker; run `python -m stacks.register`.")
    return tracker.get_tracking_uri()  # type: ignore[union-attr]


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 3000,
    model_version: Annotated[
        str | None, typer.Option(help="Registered version; default: the champion alias.")
    ] = None,
    bundle_dir: Annotated[
        Path | None, typer.Option(help="Serve a local ONNX bundle directory instead.")
    ] = None,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI; default: the active ZenML stack's.")
    ] = None,
) -> None:
    """Start the BentoML service on the registered champion (or a given version)."""
    env = dict(os.environ)
    if bundle_dir is not None:
        if not (bundle_dir / "manifest.json").is_file():
            fail(f"{bundle_dir} is not an ONNX bundle (no manifest.json).")
        env["SLIPWAY_BUNDLE_DIR"] = str(bundle_dir.resolve())
    else:
        uri = tracking_uri or env.get("SLIPWAY_MLFLOW_TRACKING_URI") or stack_tracking_uri()
        env["SLIPWAY_MLFLOW_TRACKING_URI"] = uri
        _check_registered(uri, model_version)
    if model_version:
        env["SLIPWAY_MODEL_VERSION"] = model_version
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    cmd = [sys.executable, "-m", "bentoml", "serve", "bento.service:Slipway",
           "--host", host, "--port", str(port), "--working-dir", str(ROOT)]
    console.print(f"Serving on http://{host}:{port}  (try: curl -s -X POST "
                  f"http://{host}:{port}/v1/embed -H 'content-type: application/json' "
                  "-d '{\"texts\": [\"hello\"]}')")
    raise typer.Exit(code=subprocess.call(cmd, env=env))


def _check_registered(uri: str, version: str | None) -> None:
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from slipway.config import ModelSettings
    from slipway.registry import CHAMPION

    name = ModelSettings().registered_model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if version:
            client.get_model_version(name, version)
        else:
            client.get_model_version_by_alias(name, CHAMPION)
    except MlflowException:
        wanted = f"version {version}" if version else f"a '{CHAMPION}' alias"
        fail(f"Model '{name}' has no {wanted} at {uri}; run the model_build pipeline first "
             "(see README) or pass --bundle-dir.")


@app.command()
def models(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """List registered versions of the Slipway model and which one is champion."""
    from mlflow import MlflowClient
    from rich.table import Table

    from slipway.config import ModelSettings
    from slipway.registry import current_champion

    uri = tracking_uri or os.environ.get("SLIPWAY_MLFLOW_TRACKING_URI") or stack_tracking_uri()
    name = ModelSettings().registered_model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = current_champion(client, name)
    table = Table("version", "champion", "created", "promotion")
    for mv in client.search_model_versions(f"name='{name}'"):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
        table.add_row(str(mv.version), "yes" if str(mv.version) == champion else "",
                      f"{created:%Y-%m-%d %H:%M:%S}Z", mv.tags.get("promotion", ""))
    Console().print(table)


@app.command()
def version() -> None:
    """Print Slipway's version."""
    from slipway import __version__

    print(__version__)


def main() -> None:
    """Entry point that turns unexpected errors into one-line reasons."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 - the CLI's contract: one line, non-zero
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
