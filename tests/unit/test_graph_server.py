"""The embedded graph server: start, query, idempotence, crash recovery, errors, the CLI.

Every server runs in a temporary directory and is stopped in a fixture's teardown; the last
check kills (and reports) any launcher left behind, so no JVM outlives the session.
"""

from __future__ import annotations

import json
import os
import signal
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from neo4j import GraphDatabase
from typer.testing import CliRunner

from slipway.cli import app
from slipway.config import GraphSettings
from slipway.graph.server import (
    GraphServerError,
    ServerInfo,
    running_server,
    start_server,
    stop_server,
)

pytestmark = pytest.mark.timeout(300)


def launchers(under: Path) -> list[int]:
    """Pids of live launchers whose directory is inside ``under``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            args = (entry / "cmdline").read_bytes().decode(errors="replace").split("\0")
        except OSError:
            continue
        launcher = any(a.endswith("slipway/graph/launcher.py") for a in args)
        if launcher and any(a.startswith(str(under)) for a in args):
            found.append(int(entry.name))
    return found


def wait_gone(pid: int, timeout: float = 10.0) -> None:
    """Wait until ``pid`` and all its threads have exited (a zombie leader alone is gone)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            threads = len(os.listdir(f"/proc/{pid}/task"))
        except (OSError, IndexError):
            return
        if state == "Z" and threads <= 1:
            return
        time.sleep(0.05)
    raise AssertionError(f"pid {pid} still runs")


def query(info: ServerInfo, cypher: str, **params: object) -> list[dict[str, object]]:
    """Run ``cypher`` on the server's database and return the records as dicts."""
    with GraphDatabase.driver(info.uri, auth=info.auth) as driver:
        records, _, _ = driver.execute_query(cypher, params, database_=info.database)
    return [record.data() for record in records]


@pytest.fixture(scope="module", autouse=True)
def no_launcher_survives(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """After the module: kill any launcher under the test tree, and fail if there was one."""
    yield
    base = tmp_path_factory.getbasetemp()
    left = launchers(base)
    for pid in left:
        os.kill(pid, signal.SIGKILL)
    assert not left, f"launchers left running: {left}"


@pytest.fixture(autouse=True)
def no_external_uri(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests start the embedded server unless they set SLIPWAY_NEO4J_URI themselves."""
    for name in ("SLIPWAY_NEO4J_URI", "SLIPWAY_GRAPH_BOLT_PORT", "SLIPWAY_GRAPH_HTTP_PORT"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[GraphSettings, list]]:
    """One server for the module, started by two threads at once; the results of both."""
    settings = GraphSettings(graph_dir=tmp_path_factory.mktemp("graph-shared"))
    results: list[ServerInfo | BaseException] = []

    def start() -> None:
        try:
            results.append(start_server(settings))
        except BaseException as exc:
            results.append(exc)

    threads = [threading.Thread(target=start) for _ in range(2)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        yield settings, results
    finally:
        stop_server(settings)


@pytest.fixture
def server(shared: tuple[GraphSettings, list]) -> ServerInfo:
    """The module's running server."""
    info = shared[1][0]
    if not isinstance(info, ServerInfo):
        raise info
    return info


def test_concurrent_starts_make_one_server(shared: tuple[GraphSettings, list]) -> None:
    settings, results = shared
    assert all(isinstance(result, ServerInfo) for result in results), results
    assert results[0] == results[1]
    assert settings.graph_dir is not None
    assert launchers(settings.graph_dir) == [results[0].pid]


def test_the_server_answers_cypher_and_keeps_its_secrets(server: ServerInfo) -> None:
    query(server, "CREATE (:Probe {name: $name})", name="first")
    assert query(server, "MATCH (p:Probe) RETURN p.name AS name") == [{"name": "first"}]
    assert server.uri == f"bolt://127.0.0.1:{server.bolt_port}" and server.user == "root"
    credentials = server.directory / "credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    assert json.loads(credentials.read_text())["password"] == server.password
    assert server.password not in repr(server)
    assert server.password.encode() not in Path(f"/proc/{server.pid}/cmdline").read_bytes()
    state = json.loads((server.directory / "server.json").read_text())
    assert state["pid"] == server.pid and state["bolt_port"] == server.bolt_port
    assert "started_at" in state


def test_start_is_idempotent(shared: tuple[GraphSettings, list], server: ServerInfo) -> None:
    settings, _ = shared
    assert start_server(settings) == server
    assert running_server(settings) == server


def test_a_launcher_without_state_is_adopted(
    shared: tuple[GraphSettings, list], server: ServerInfo
) -> None:
    settings, _ = shared
    (server.directory / "server.json").unlink()  # as when its starter was killed mid-wait
    assert running_server(settings) is None
    assert start_server(settings) == server
    assert (server.directory / "server.json").is_file()


def test_a_taken_bolt_port_names_the_setting(server: ServerInfo, tmp_path: Path) -> None:
    settings = GraphSettings(graph_dir=tmp_path / "graph", graph_bolt_port=server.bolt_port)
    with pytest.raises(GraphServerError, match="SLIPWAY_GRAPH_BOLT_PORT=0"):
        start_server(settings)
    assert not launchers(tmp_path)


def test_an_unusable_directory_names_the_setting(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with pytest.raises(GraphServerError, match="SLIPWAY_GRAPH_DIR"):
        start_server(GraphSettings(graph_dir=blocker / "graph"))


def test_a_launcher_that_dies_reports_its_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ARCADEDB_JVM_ARGS", "-XX:+NoSuchJvmOption")
    with pytest.raises(GraphServerError, match="exited with status 1") as caught:
        start_server(GraphSettings(graph_dir=tmp_path / "graph"))
    assert "Failed to start JVM" in str(caught.value)
    assert not (tmp_path / "graph" / "server.json").exists()


def test_a_start_that_times_out_kills_the_launcher(tmp_path: Path) -> None:
    settings = GraphSettings(graph_dir=tmp_path / "graph", graph_start_timeout=0.3)
    with pytest.raises(GraphServerError, match="SLIPWAY_GRAPH_START_TIMEOUT"):
        start_server(settings)
    assert not launchers(tmp_path)
    assert running_server(settings) is None


def test_stop_without_a_server_says_so(tmp_path: Path) -> None:
    assert stop_server(GraphSettings(graph_dir=tmp_path / "graph")) is False
    assert not (tmp_path / "graph").exists()


def test_a_killed_server_restarts_with_its_data(tmp_path: Path) -> None:
    settings = GraphSettings(graph_dir=tmp_path / "graph")
    try:
        first = start_server(settings)
        query(first, "CREATE (:Survivor {n: 42})")
        os.kill(first.pid, signal.SIGKILL)
        wait_gone(first.pid)
        assert running_server(settings) is None
        assert not (tmp_path / "graph" / "server.json").exists()
        assert (tmp_path / "graph" / "databases" / "kg" / "database.lck").exists()
        second = start_server(settings)
        assert second.pid != first.pid and second.password == first.password
        assert query(second, "MATCH (s:Survivor) RETURN s.n AS n") == [{"n": 42}]
        assert stop_server(settings) is True
        wait_gone(second.pid)
        assert running_server(settings) is None
    finally:
        stop_server(settings)


def test_cli_start_status_stop(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLIPWAY_GRAPH_DIR", str(tmp_path / "graph"))
    runner = CliRunner()
    try:
        assert runner.invoke(app, ["graph", "status"]).exit_code == 3
        started = runner.invoke(app, ["graph", "start"])
        assert started.exit_code == 0, started.output
        assert started.stdout.startswith("bolt://127.0.0.1:")
        assert "slipway graph stop" in started.output
        status = runner.invoke(app, ["graph", "status"])
        assert status.exit_code == 0 and status.stdout.startswith("running: pid ")
        assert started.stdout.strip() in status.stdout
        stopped = runner.invoke(app, ["graph", "stop"])
        assert stopped.exit_code == 0 and "Stopped the graph server" in stopped.output
        assert runner.invoke(app, ["graph", "status"]).exit_code == 3
        again = runner.invoke(app, ["graph", "stop"])
        assert again.exit_code == 0 and "No graph server was running" in again.output
    finally:
        stop_server(GraphSettings(graph_dir=tmp_path / "graph"))


def test_cli_start_failure_is_one_line(
    server: ServerInfo, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIPWAY_GRAPH_DIR", str(tmp_path / "graph"))
    monkeypatch.setenv("SLIPWAY_GRAPH_BOLT_PORT", str(server.bolt_port))
    result = CliRunner().invoke(app, ["graph", "start"])
    assert result.exit_code == 1
    assert "SLIPWAY_GRAPH_BOLT_PORT" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_cli_with_an_external_server(
    server: ServerInfo, shared: tuple[GraphSettings, list], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SLIPWAY_NEO4J_URI", server.uri)
    monkeypatch.setenv("SLIPWAY_NEO4J_USER", server.user)
    monkeypatch.setenv("SLIPWAY_NEO4J_PASSWORD", server.password)
    runner = CliRunner()
    status = runner.invoke(app, ["graph", "status"])
    assert status.exit_code == 0 and "answers" in status.stdout
    for command in ("start", "stop"):
        result = runner.invoke(app, ["graph", command])
        assert result.exit_code == 0 and "external server" in result.output
    assert running_server(shared[0]) == server  # `stop` left it alone
    monkeypatch.setenv("SLIPWAY_NEO4J_PASSWORD", "not-the-password")
    refused = runner.invoke(app, ["graph", "status"])
    assert refused.exit_code == 3 and "not reachable" in refused.stdout
