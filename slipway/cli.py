"""The ``slipway`` command line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console

if typing.TYPE_CHECKING:
    from slipway.config import GraphSettings, ServeSettings

app = typer.Typer(
    name="slipway",
    help="Slipway: build, check, register and serve ONNX language models with ZenML.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True, soft_wrap=True)  # one line per message, never wrapped
ROOT = Path(__file__).resolve().parent.parent


def fail(message: str) -> NoReturn:
    """Exit non-zero with a one-line reason."""
    console.print(f"[red]error:[/red] {message}")
    raise typer.Exit(code=1)


def stack_tracking_uri() -> str:
    """The MLflow tracking URI of the active ZenML stack's experiment tracker."""
    from zenml.client import Client

    tracker = Client().active_stack.experiment_tracker
    if tracker is None:
        fail("The active ZenML stack has no experiment tracker; run `python -m stacks.register`.")
    return str(tracker.get_tracking_uri())  # type: ignore[attr-defined]


def tracking_uri_of(given: str | None) -> str:
    """``given``, else ``SLIPWAY_MLFLOW_TRACKING_URI``, else the active stack's tracker URI."""
    return given or os.environ.get("SLIPWAY_MLFLOW_TRACKING_URI") or stack_tracking_uri()


def zenml_secret(name: str) -> dict[str, str]:
    """The values of a ZenML secret of the active ZenML server or store."""
    from zenml.client import Client

    return {key: str(value) for key, value in Client().get_secret(name).secret_values.items()}


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
    drain_timeout: Annotated[
        float,
        typer.Option(
            help="On SIGTERM/SIGINT: seconds in-flight requests may finish "
            "before every server process is stopped.",
            min=0,
        ),
    ] = 30.0,
) -> None:
    """Start the BentoML service on the registered champion (or a given version); SIGTERM or
    SIGINT drains it, then stops every process it started."""
    env = dict(os.environ)
    if bundle_dir is not None:
        if not (bundle_dir / "manifest.json").is_file():
            fail(f"{bundle_dir} is not an ONNX bundle (no manifest.json).")
        env["SLIPWAY_BUNDLE_DIR"] = str(bundle_dir.resolve())
    else:
        uri = tracking_uri or env.get("SLIPWAY_MLFLOW_TRACKING_URI") or stack_tracking_uri()
        env["SLIPWAY_MLFLOW_TRACKING_URI"] = uri
        _registered_version(uri, model_version)
    if model_version:
        env["SLIPWAY_MODEL_VERSION"] = model_version
    env.setdefault("BENTOML_DO_NOT_TRACK", "true")
    settings = _serve_settings()
    env["BENTOML_CONFIG_OPTIONS"] = " ".join(
        filter(None, [env.get("BENTOML_CONFIG_OPTIONS"), bentoml_options(settings)])
    )
    cmd = [
        sys.executable,
        "-m",
        "bentoml",
        "serve",
        service_target(settings),
        "--host",
        host,
        "--port",
        str(port),
        "--working-dir",
        str(ROOT),
    ]
    console.print(
        f"Serving on http://{host}:{port} (OpenAPI docs: /docs). Try: curl -s "
        f'http://{host}:{port}/v1/models -H "Authorization: Bearer $SLIPWAY_KEY" '
        "(create a key with `slipway keys create --name me --scope admin`)"
    )
    from slipway.process import run_owned

    raise typer.Exit(code=run_owned(cmd, env, drain_seconds=drain_timeout))


def _serve_settings() -> ServeSettings:
    from pydantic import ValidationError

    from slipway.config import ServeSettings

    try:
        return ServeSettings()
    except ValidationError as exc:
        fail(f"Invalid SLIPWAY_* serving settings; fix the variable it names: {exc}")


def service_target(settings: ServeSettings) -> str:
    """The BentoML service to serve: the encoder in the API workers, or as its own service."""
    return (
        "bento.service:Slipway"
        if settings.encoder == "api"
        else "bento.service:SlipwayRemoteEncoder"
    )


def bentoml_options(settings: ServeSettings) -> str:
    """BentoML's service options from Slipway's settings (``BENTOML_CONFIG_OPTIONS``)."""
    return f"services.slipway.workers={settings.api_workers}"


def _registered_version(uri: str, version: str | None) -> str:
    """The registered version to use (``version``, else the champion's); a clear failure
    when there is none."""
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    from slipway.config import ModelSettings
    from slipway.registry import CHAMPION

    name = ModelSettings().registered_model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    try:
        if version:
            return str(client.get_model_version(name, version).version)
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        wanted = f"version {version}" if version else f"a '{CHAMPION}' alias"
        fail(
            f"Model '{name}' has no {wanted} at {uri}; run the model_build pipeline first "
            "(see README) or pass --bundle-dir."
        )


@app.command()
def models(
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI.")] = None,
) -> None:
    """List registered versions of the Slipway model and which one is champion."""
    from mlflow import MlflowClient
    from rich.table import Table

    from slipway.config import ModelSettings
    from slipway.registry import current_champion
    from slipway.registry.gate import gate_figures

    uri = tracking_uri_of(tracking_uri)
    name = ModelSettings().registered_model_name
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    champion = current_champion(client, name)
    table = Table("version", "champion", "created", "prompts", "gates", "promotion")
    for mv in client.search_model_versions(f"name='{name}'"):
        created = datetime.fromtimestamp(mv.creation_timestamp / 1000, tz=UTC)
        prompts = "\n".join(
            f"{k.removeprefix('prompt.')}: {v}"
            for k, v in sorted(mv.tags.items())
            if k.startswith("prompt.")
        )
        gates = "\n".join(
            f"{gate}: {mv.tags[f'gate.{gate}']} "
            + " ".join(f"{k}={v}" for k, v in sorted(gate_figures(mv.tags, gate).items()))
            for gate in ("parity", "retrieval", "answers")
            if f"gate.{gate}" in mv.tags
        )
        table.add_row(
            str(mv.version),
            "yes" if str(mv.version) == champion else "",
            f"{created:%Y-%m-%d %H:%M:%S}Z",
            prompts,
            gates,
            mv.tags.get("promotion", ""),
        )
    Console().print(table)


TrackingUri = Annotated[
    str | None,
    typer.Option(help="MLflow tracking URI; default: the active ZenML stack's tracker."),
]
prompts_app = typer.Typer(
    help="Versioned prompts: YAML sources in prompts/, versions and aliases in MLflow's "
    "prompt registry.",
    no_args_is_help=True,
)
app.add_typer(prompts_app, name="prompts")


def _register_experiments() -> None:
    from slipway.experiments.cli import register

    register(prompts_app)


_register_experiments()


@prompts_app.command("list")
def prompts_list(tracking_uri: TrackingUri = None) -> None:
    """Registered prompts, their latest version and aliases; and the sources in prompts/."""
    import mlflow
    from rich.table import Table

    from slipway.prompts import SOURCES_DIR, load_file, source_files

    uri = tracking_uri_of(tracking_uri)
    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    table = Table("name", "latest", "aliases", "source")
    sources = {p.name: path for path in source_files() for p in [load_file(path)]}
    registered = {p.name: p for p in mlflow.genai.search_prompts(max_results=1000)}
    for name in sorted(registered.keys() | sources.keys()):
        latest = mlflow.genai.load_prompt(f"prompts:/{name}@latest", allow_missing=True)
        aliases = ", ".join(sorted(getattr(latest, "aliases", []) or [])) if latest else ""
        source = sources.get(name)
        table.add_row(
            name,
            str(latest.version) if latest else "(not registered)",
            aliases,
            str(source.relative_to(SOURCES_DIR.parent)) if source else "",
        )
    Console().print(table)


@prompts_app.command("show")
def prompts_show(
    ref: Annotated[str, typer.Argument(help="name@alias, name/VERSION or a YAML path.")],
    tracking_uri: TrackingUri = None,
) -> None:
    """Print one prompt version's template."""
    from rich.markup import escape

    from slipway.prompts import PromptError, resolve

    try:
        prompt = resolve(
            ref, None if ref.endswith((".yaml", ".yml")) else tracking_uri_of(tracking_uri)
        )
    except PromptError as exc:
        fail(str(exc))
    console.print(f"[bold]{escape(prompt.ref)}[/bold] {escape(prompt.description)}")
    console.print(f"variables: {', '.join(sorted(prompt.variables)) or '(none)'}")
    print(prompt.template)


@prompts_app.command("register")
def prompts_register(
    paths: Annotated[
        list[Path] | None,
        typer.Argument(help="YAML sources; default: every file in prompts/."),
    ] = None,
    alias: Annotated[
        str | None, typer.Option(help="Move this alias (e.g. production) to the versions.")
    ] = None,
    tracking_uri: TrackingUri = None,
) -> None:
    """Register prompt sources: a new version only where a template or its tags changed."""
    from slipway.prompts import PromptError, load_file, register, source_files

    uri = tracking_uri_of(tracking_uri)
    try:
        for path in paths or source_files():
            prompt = register(load_file(path), uri, alias)
            console.print(f"{path}: {prompt.ref}" + (f" @{alias}" if alias else ""))
    except PromptError as exc:
        fail(str(exc))


feedback_app = typer.Typer(help="Feedback on served answers.", no_args_is_help=True)
app.add_typer(feedback_app, name="feedback")


@feedback_app.command("export")
def feedback_export(
    out: Annotated[Path, typer.Option(help="JSONL file to write ('-': stdout).")] = Path("-"),
    experiment: Annotated[
        str | None, typer.Option(help="MLflow experiment of the traces; default the server's.")
    ] = None,
    limit: Annotated[int | None, typer.Option(help="At most this many traces.")] = None,
    qa_set: Annotated[
        bool,
        typer.Option(
            "--qa-set",
            help="Write a QA set for `pipelines.evaluate` (evaluation.qa_path): positively "
            "rated answers as gold answers, with the documents expected or cited.",
        ),
    ] = False,
    tracking_uri: TrackingUri = None,
) -> None:
    """Rated answers as JSONL (question, answer, citations, prompt version, rating, comment,
    expected chunk ids), for evaluation sets and retraining."""
    import json

    from slipway.config import ServeSettings
    from slipway.rag.feedback import export_rows, qa_rows

    name = experiment or ServeSettings().trace_experiment
    try:
        rows = list(export_rows(tracking_uri_of(tracking_uri), name, limit))
    except ValueError as exc:
        fail(str(exc))
    if qa_set:
        rows = list(qa_rows(rows))
    lines = "".join(json.dumps(row) + "\n" for row in rows)
    if str(out) == "-":
        sys.stdout.write(lines)
    else:
        out.write_text(lines, encoding="utf-8")
    what = "QA-set rows" if qa_set else "rated answers"
    console.print(f"{len(rows)} {what} from experiment {name!r}")


bento_app = typer.Typer(help="Package the service as a bento.", no_args_is_help=True)
app.add_typer(bento_app, name="bento")


@bento_app.command("build")
def bento_build(
    model_version: Annotated[
        str | None, typer.Option(help="Registered version; default: the champion alias.")
    ] = None,
    gpu: Annotated[bool, typer.Option(help="CUDA base image with onnxruntime-gpu.")] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI; default: the active ZenML stack's.")
    ] = None,
) -> None:
    """Build the bento of this checkout's service for a registered version; prints its tag
    (for `bentoml containerize TAG`)."""
    from slipway.bentos import build_service_bento
    from slipway.config import ModelSettings

    uri = tracking_uri_of(tracking_uri)
    version = _registered_version(uri, model_version)
    name = ModelSettings().registered_model_name
    tag = build_service_bento(name, version, uri, gpu=gpu)
    console.print(
        f"Built {tag} ({'GPU' if gpu else 'CPU'} image) for {name} version {version}; "
        f"containerize it with `bentoml containerize {tag}`."
    )
    print(tag)


index_app = typer.Typer(help="Inspect and manage published index versions.", no_args_is_help=True)
app.add_typer(index_app, name="index")
IndexName = Annotated[str, typer.Option("--name", help="Index name.")]


@index_app.command("status")
def index_status(name: IndexName = "default") -> None:
    """The published version, the retained history, and every version on disk."""
    from rich.table import Table

    from slipway.retrieval.stores import index_dir

    index = index_dir(name)
    pointer = index.pointer()
    if pointer is None:
        fail(
            f"Index {name!r} at {index.root} has no published version; run the index_refresh "
            "pipeline first."
        )
    table = Table(
        "version",
        "state",
        "created",
        "documents",
        "chunks",
        "embedded",
        "hybrid nDCG@10",
        "graph",
    )
    for version in reversed(index.all_versions()):
        if not index.complete(version):
            table.add_row(version, "unfinished", "", "", "", "", "", "")
            continue
        m = index.manifest(version)
        state = (
            "published"
            if version == pointer.version
            else "retained"
            if version in pointer.history
            else "not published"
        )
        ndcg = m.metrics.get("hybrid", {}).get("ndcg@10")
        table.add_row(
            version,
            state,
            m.created,
            str(m.stats.documents),
            str(m.stats.chunks),
            str(m.stats.embedded),
            f"{ndcg:.4f}" if ndcg is not None else "",
            _graph_state(m.graph),
        )
    Console(width=None if sys.stdout.isatty() else 160).print(table)


def _graph_state(gate: Any) -> str:
    """A version's graph retrieval decision, in a few words."""
    if gate is None or gate.hybrid_graph is None:
        return "not evaluated"
    state = "on" if gate.enabled else "off"
    return f"{state} ({gate.hybrid_graph:.4f}, w{gate.weight:g} k{gate.rrf_k})"


@index_app.command("rollback")
def index_rollback(
    name: IndexName = "default",
    to: Annotated[
        str | None, typer.Option(help="Version to publish; default: the previous one.")
    ] = None,
    index_only: Annotated[
        bool,
        typer.Option(
            "--index-only",
            help="Move only the index pointer, not the registry's champion alias.",
        ),
    ] = False,
    tracking_uri: Annotated[
        str | None, typer.Option(help="MLflow tracking URI; default: the active stack's.")
    ] = None,
) -> None:
    """Publish a retained earlier version again (readers switch atomically) and restore its
    pair: the champion alias goes back to the model version whose embedder built it."""
    from slipway.retrieval.stores import index_dir, vector_store

    index = index_dir(name)
    pointer = index.pointer()
    if pointer is None or (to is None and len(pointer.history) < 2):
        fail(f"Index {name!r} has no earlier published version to roll back to.")
    target = to or pointer.history[1]
    if not index.complete(target):
        fail(f"Index {name!r} has no complete version {target!r}; see `slipway index status`.")
    manifest = index.manifest(target)
    vector_store(index).reader(manifest.handle)  # still readable?
    model = f"{manifest.model_name} v{manifest.model_version}"
    if not index_only and manifest.model_name and manifest.model_version.isdigit():
        from mlflow import MlflowClient

        from slipway.registry import CHAMPION, current_champion

        client = MlflowClient(tracking_uri_of(tracking_uri))
        if current_champion(client, manifest.model_name) != manifest.model_version:
            client.set_registered_model_alias(manifest.model_name, CHAMPION, manifest.model_version)
            console.print(
                f"{manifest.model_name}: {CHAMPION} is version {manifest.model_version} again "
                "(restart or roll out the service to serve it)."
            )
    elif not index_only:
        built_by = manifest.embedder_label or "a local bundle"
        console.print(
            f"{target} records no registered model ({built_by}); the champion alias is left alone."
        )
    index.publish(target)
    console.print(
        f"Index {name!r}: {target} is published"
        + (f" (built by {model})." if manifest.model_name else ".")
    )


@index_app.command("search")
def index_search(
    query: Annotated[list[str], typer.Argument(help="One or more queries.")],
    name: IndexName = "default",
    k: Annotated[int, typer.Option(min=1, max=1000, help="Results per query.")] = 5,
    where: Annotated[
        list[str] | None,
        typer.Option(
            "--filter", help="Metadata filter key=value (repeat; same key twice = either value)."
        ),
    ] = None,
    graph: Annotated[
        bool | None,
        typer.Option(
            "--graph/--no-graph",
            help="Fuse graph retrieval (PageRank from the query's entities over the version's "
            "entity graph); default: as the index gate decided for the version.",
        ),
    ] = None,
) -> None:
    """Hybrid search over the published version, with the embedder that built it."""
    from slipway.embedding import OnnxEmbedder, model_fingerprint
    from slipway.retrieval.hybrid import FusionConfig
    from slipway.retrieval.stores import index_dir, published_searcher

    index = index_dir(name)
    version = index.published()
    if version is None:
        fail(f"Index {name!r} has no published version; run the index_refresh pipeline first.")
    manifest = index.manifest(version)
    model_dir = Path(manifest.embedder_dir)
    if (
        not (model_dir / "model.onnx").is_file()
        or model_fingerprint(model_dir) != manifest.embedder
    ):
        fail(
            f"The embedder that built {name!r} {version} is not at {model_dir} any more; run the "
            "index_refresh pipeline again on this machine."
        )
    filters: dict[str, list[str]] = {}
    for item in where or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            fail(f"--filter {item!r}: use key=value.")
        filters.setdefault(key, []).append(value)
    retriever = None
    if graph or (graph is None and manifest.graph is not None and manifest.graph.enabled):
        from slipway.graph.extraction import load_nlp
        from slipway.graph.snapshot import GraphRetriever

        try:
            nlp = load_nlp(_graph_settings().ner_model)
            retriever = GraphRetriever.load(index.version_dir(version), nlp)
        except (RuntimeError, FileNotFoundError) as exc:
            fail(str(exc))
    opened, searcher = published_searcher(
        name,
        OnnxEmbedder(model_dir),
        fusion=(
            FusionConfig(graph_weight=manifest.graph.weight, rrf_k=manifest.graph.rrf_k)
            if manifest.graph and retriever
            else None
        ),
        expander=retriever.search_many if retriever else None,
    )
    for q, hits in zip(query, searcher.search(query, k, filters or None), strict=True):
        print(f"# {q}")
        for hit in opened.hydrate(hits):
            snippet = " ".join(hit.text.split())[:100]
            print(f"{hit.score:.4f}  {hit.id}  {hit.title[:40]!r}  {snippet}")


graph_app = typer.Typer(
    help="Start, stop and inspect the embedded graph server (ArcadeDB over Bolt).",
    no_args_is_help=True,
)
app.add_typer(graph_app, name="graph")
NOT_RUNNING = 3  # exit status of `slipway graph status` when no server runs


def _graph_settings() -> GraphSettings:
    """The graph settings from the environment, or a one-line reason they are invalid."""
    from pydantic import ValidationError

    from slipway.config import GraphSettings

    try:
        return GraphSettings()
    except ValidationError as exc:
        fail("; ".join(str(error["msg"]) for error in exc.errors()))
    raise AssertionError("unreachable")


@graph_app.command("start")
def graph_start() -> None:
    """Start the embedded graph server (or find the running one) and print its Bolt URI."""
    from slipway.graph.server import GraphServerError, start_server

    settings = _graph_settings()
    if settings.neo4j_uri:
        console.print(
            f"SLIPWAY_NEO4J_URI is set: Slipway uses the external server at "
            f"{settings.neo4j_uri}; there is no embedded server to start."
        )
        return
    try:
        info = start_server(settings)
    except GraphServerError as exc:
        fail(str(exc))
    print(info.uri)
    console.print(
        f"Graph server running: pid {info.pid}, database {info.database!r}, user "
        f"{info.user!r} (password in {info.directory / 'credentials.json'}), log "
        f"{info.log}. Stop it with `slipway graph stop`."
    )


@graph_app.command("status")
def graph_status() -> None:
    """Whether the graph server runs: exit 0 when it does, 3 when it does not."""
    from slipway.graph.server import graph_directory, running_server

    settings = _graph_settings()
    if settings.neo4j_uri:
        _external_graph_status(settings)
        return
    info = running_server(settings)
    if info is None:
        print(f"not running (directory {graph_directory(settings)})")
        raise typer.Exit(code=NOT_RUNNING)
    print(
        f"running: pid {info.pid}, {info.uri}, database {info.database!r}, "
        f"directory {info.directory}"
    )


def _external_graph_status(settings: GraphSettings) -> None:
    """Check that the server at SLIPWAY_NEO4J_URI answers a query; exit 3 when it does not."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import DriverError, Neo4jError

    uri = str(settings.neo4j_uri)
    password = settings.neo4j_password.get_secret_value() if settings.neo4j_password else ""
    try:
        with (
            GraphDatabase.driver(
                uri, auth=(settings.neo4j_user, password), connection_timeout=5.0
            ) as driver,
            driver.session(database=settings.neo4j_database) as session,
        ):
            session.run("RETURN 1 AS ok").consume()
    except (DriverError, Neo4jError, OSError) as exc:
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        print(f"not reachable: external server {uri} (SLIPWAY_NEO4J_URI): {reason}")
        raise typer.Exit(code=NOT_RUNNING) from None
    print(f"running: external server {uri} (SLIPWAY_NEO4J_URI) answers")


@graph_app.command("stop")
def graph_stop(
    timeout: Annotated[float, typer.Option(help="Seconds to wait before killing it.")] = 30.0,
) -> None:
    """Stop the embedded graph server (SIGTERM, then SIGKILL after --timeout)."""
    from slipway.graph.server import graph_directory, running_server, stop_server

    settings = _graph_settings()
    if settings.neo4j_uri:
        console.print(
            f"SLIPWAY_NEO4J_URI is set: Slipway uses the external server at "
            f"{settings.neo4j_uri}; there is no embedded server to stop."
        )
        return
    directory = graph_directory(settings)
    info = running_server(settings)
    if stop_server(settings, timeout=timeout):
        pid = f" (pid {info.pid})" if info is not None else ""
        console.print(f"Stopped the graph server{pid} at {directory}.")
    else:
        console.print(f"No graph server was running at {directory}.")


@graph_app.command("entity")
def graph_entity(
    name: Annotated[str, typer.Argument(help="An entity id (TYPE:name) or a name.")],
    neighbours: Annotated[int, typer.Option(help="Co-occurring entities to list.")] = 10,
) -> None:
    """Show an entity of the knowledge graph (aliases, mentions) and its strongest neighbours."""
    from slipway.graph import GraphQueries, connect

    try:
        graph = connect(_graph_settings())
    except (RuntimeError, ValueError) as exc:
        fail(str(exc))
    with graph:
        queries = GraphQueries(graph)
        found = queries.find(name)
        if not found:
            fail(f"No entity named {name!r} in the graph (ids look like PERSON:jeff skilling).")
        for entity in found:
            print(
                f"{entity.id}  ({entity.type}, {entity.mentions} mentions; "
                f"aliases: {', '.join(entity.aliases)})"
            )
            for n in queries.neighbours(entity.id, neighbours):
                print(f"  {n.weight:6d}  {n.entity.id}")


keys_app = typer.Typer(
    help="Create, list, revoke and rotate API keys (stored hashed).", no_args_is_help=True
)
app.add_typer(keys_app, name="keys")


def _key_store():  # type: ignore[no-untyped-def]
    from slipway.api.keys import key_store
    from slipway.config import ApiSettings, get_settings
    from slipway.secrets import REDIS, with_secret

    settings = ApiSettings()
    try:
        settings = with_secret(settings, settings.redis_secret, REDIS, zenml_secret)
        return key_store(
            settings.key_store,
            settings.api_keys_file or get_settings().home / "api_keys.json",
            settings.redis_url,
        )
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))


def _duration(text: str | None):  # type: ignore[no-untyped-def]
    from slipway.api.keys import parse_duration

    if text is None:
        return None
    try:
        return parse_duration(text)
    except ValueError as exc:
        fail(str(exc))


@keys_app.command("create")
def keys_create(
    name: Annotated[str, typer.Option(help="Who or what the key is for.")],
    scope: Annotated[
        list[str], typer.Option(help="embed | generate | search | admin (repeat for several).")
    ],
    expires_in: Annotated[str | None, typer.Option(help="Lifetime, e.g. 30d or 12h.")] = None,
    rpm: Annotated[int | None, typer.Option(min=1, help="Requests per minute.")] = None,
    tpm: Annotated[int | None, typer.Option(min=1, help="Tokens per minute.")] = None,
    principal: Annotated[
        list[str] | None,
        typer.Option(
            help="Whom the key reads documents as (a user or group named in documents' "
            "`acl`; repeat for several; '*' reads every document)."
        ),
    ] = None,
    model: Annotated[
        list[str] | None,
        typer.Option(help="A model id the key may call (repeat; default: every model)."),
    ] = None,
    tokens_per_day: Annotated[int | None, typer.Option(min=1, help="Budget: tokens a day.")] = None,
    tokens_per_month: Annotated[
        int | None, typer.Option(min=1, help="Budget: tokens a month.")
    ] = None,
    cost_per_day: Annotated[
        float | None, typer.Option(min=0.0, help="Budget: cost a day (the models' price unit).")
    ] = None,
    cost_per_month: Annotated[
        float | None, typer.Option(min=0.0, help="Budget: cost a month.")
    ] = None,
) -> None:
    """Create a key and print it once (only its SHA-256 digest is stored)."""
    from slipway.api.keys import Budget, Scope, create_key

    try:
        scopes = [Scope(s) for s in scope]
    except ValueError:
        fail(f"Unknown scope in {scope}: use embed, generate, search, feedback or admin.")
    try:
        budget = Budget(
            tokens_per_day=tokens_per_day,
            tokens_per_month=tokens_per_month,
            cost_per_day=cost_per_day or None,
            cost_per_month=cost_per_month or None,
        )
    except ValueError as exc:
        fail(f"Invalid budget: {exc}")
    token, record = create_key(
        _key_store(),
        name,
        scopes,
        _duration(expires_in),
        rpm,
        tpm,
        principals=principal or [],
        models=model or None,
        budget=budget,
    )
    console.print(
        f"Created key {record.id} ({', '.join(record.scopes)}); store it now, it is "
        "not shown again:"
    )
    print(token)


@keys_app.command("list")
def keys_list() -> None:
    """Every key: id, name, scopes, status and expiry (never the secret)."""
    from datetime import UTC, datetime

    now = datetime.now(UTC)
    for r in _key_store().all():
        expires = r.expires_at.isoformat(timespec="seconds") if r.expires_at else "never"
        print(
            f"{r.id}  {r.status(now):8s}  {r.name}  [{','.join(r.scopes)}]  expires {expires}"
            + (f"  as {','.join(r.principals)}" if r.principals else "")
            + (f"  models {','.join(r.models)}" if r.models is not None else "")
            + (f"  rotated to {r.rotated_to}" if r.rotated_to else "")
        )


@keys_app.command("revoke")
def keys_revoke(key_id: Annotated[str, typer.Argument(help="The key id (see `list`).")]) -> None:
    """Revoke a key at once."""
    from slipway.api.keys import revoke

    try:
        revoke(_key_store(), key_id)
    except KeyError as exc:
        fail(str(exc.args[0]))
    console.print(f"Revoked key {key_id}.")


@keys_app.command("rotate")
def keys_rotate(
    key_id: Annotated[str, typer.Argument(help="The key id (see `list`).")],
    overlap: Annotated[str, typer.Option(help="How long the old key keeps working.")] = "24h",
) -> None:
    """Replace a key: print the new one; the old one works for --overlap more, then expires."""
    from slipway.api.keys import rotate

    try:
        token, record = rotate(_key_store(), key_id, _duration(overlap))
    except (KeyError, ValueError) as exc:
        fail(str(exc.args[0]))
    console.print(
        f"New key {record.id} replaces {key_id} (which expires in {overlap}); store "
        "it now, it is not shown again:"
    )
    print(token)


@keys_app.command("usage")
def keys_usage(
    key: Annotated[str | None, typer.Option(help="Only this key id (and its rotations).")] = None,
    month: Annotated[
        bool, typer.Option(help="This calendar month instead of today (UTC).")
    ] = False,
) -> None:
    """Requests, tokens in and out, and cost per key and model, today or this month (UTC), and
    what each key's budget has left; from the configured usage store."""
    from slipway.config import ApiSettings, get_settings
    from slipway.routing.usage import budget_left, periods, usage_store
    from slipway.secrets import REDIS, with_secret

    settings = ApiSettings()
    try:
        settings = with_secret(settings, settings.redis_secret, REDIS, zenml_secret)
        redis_url = settings.redis_url

        def redis_client():  # type: ignore[no-untyped-def]
            import redis

            if not redis_url:
                raise ValueError("SLIPWAY_USAGE_STORE=redis needs SLIPWAY_REDIS_URL.")
            return redis.Redis.from_url(redis_url)

        store = usage_store(
            settings.usage_store,
            settings.usage_file or get_settings().home / "usage.db",
            redis_client,
        )
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    day, this_month = periods(datetime.now(UTC))
    period = this_month if month else day
    records = {r.id: r for r in _key_store().all()}
    account = None
    if key is not None:
        if key not in records:
            fail(f"No API key with id {key!r} (see `slipway keys list`).")
        account = f"key:{records[key].account or key}"
    rows = store.rows(period, account)
    print(f"usage {'this month' if month else 'today'} ({period[2:]}, UTC)")
    print(
        f"{'key':20s} {'model':32s} {'requests':>9s} {'tokens in':>10s} {'tokens out':>10s} "
        f"{'cost':>10s}"
    )
    for row in rows:
        print(
            f"{row.account:20s} {row.model:32s} {row.requests:9d} {row.tokens_in:10d} "
            f"{row.tokens_out:10d} {row.cost:10.6f}"
        )
    if not rows:
        print("(no usage)")
    accounts = sorted({row.account for row in rows} | ({account} if account else set()))
    for name in accounts:
        lineage = [r for r in records.values() if f"key:{r.account or r.id}" == name]
        budget = next((r.budget for r in reversed(lineage) if r.budget is not None), None)
        if budget is None:
            print(f"{name}: no budget")
            continue
        left = budget_left(store, name, budget, datetime.now(UTC))
        print(f"{name}: budget left " + ", ".join(f"{k} {v:g}" for k, v in left.items()))


SCHEDULABLE = {
    "index_refresh": "pipelines.index_refresh.index_refresh",
    "kg_update": "pipelines.kg_update.kg_update",
    "model_build": "pipelines.model_build.model_build",
    "retrain": "pipelines.retrain.retrain",
}


def cron_line(cron: str, config: Path, pipeline: str = "index_refresh") -> str:
    """A crontab entry that runs ``pipeline`` with ``config`` from this checkout."""
    if len(cron.split()) != 5:
        raise ValueError(f"{cron!r} is not a 5-field cron expression (e.g. '0 * * * *').")
    if pipeline not in SCHEDULABLE:
        raise ValueError(f"Unknown pipeline {pipeline!r}; choose one of {', '.join(SCHEDULABLE)}.")
    zenml = Path(sys.executable).parent / "zenml"
    log = ROOT / ".slipway" / "logs" / f"{pipeline}.log"
    return (
        f"{cron} cd {ROOT} && mkdir -p {log.parent} && {zenml} pipeline run "
        f"{SCHEDULABLE[pipeline]} -c {config} >> {log} 2>&1"
    )


@app.command()
def schedule(
    cron: Annotated[str, typer.Option(help="Cron expression, e.g. '0 * * * *' (hourly).")],
    pipeline: Annotated[
        str, typer.Option(help="index_refresh | kg_update | model_build | retrain.")
    ] = "index_refresh",
    config: Annotated[
        Path | None, typer.Option(help="Run configuration; default: configs/<pipeline>.yaml.")
    ] = None,
    install: Annotated[bool, typer.Option(help="Add the entry to this user's crontab.")] = False,
) -> None:
    """Schedule a pipeline on an orchestrator without schedules (the local one): print a
    crontab entry, or install it (replacing that pipeline's earlier entry). Kubernetes stacks
    use ZenML schedules instead (configs/*_schedule.yaml)."""
    config = config or Path("configs") / f"{pipeline}.yaml"
    if not (ROOT / config).is_file() and not config.is_file():
        fail(f"No run configuration at {config}.")
    try:
        line = cron_line(
            cron, (ROOT / config).resolve() if not config.is_absolute() else config, pipeline
        )
    except ValueError as exc:
        fail(str(exc))
    if not install:
        print(line)
        return
    if shutil.which("crontab") is None:
        fail(
            "No `crontab` on this machine (install cron, e.g. `apt-get install cron`), or add "
            "the printed line to your scheduler."
        )
    current = subprocess.run(["crontab", "-l"], capture_output=True, text=True, check=False).stdout
    kept = [entry for entry in current.splitlines() if SCHEDULABLE[pipeline] not in entry]
    subprocess.run(["crontab", "-"], input="\n".join([*kept, line]) + "\n", text=True, check=True)
    console.print("Installed: " + line)


@app.command()
def version() -> None:
    """Print Slipway's version."""
    from slipway import __version__

    print(__version__)


def main() -> None:
    """Entry point that turns unexpected errors into one-line reasons."""
    try:
        app()
    except Exception as exc:
        console.print(f"[red]error:[/red] {exc}")
        sys.exit(1)


if __name__ == "__main__":
    main()
