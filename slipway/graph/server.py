"""The embedded graph server's lifecycle: an ArcadeDB Bolt server on 127.0.0.1, one per directory.

Files in the graph directory (ArcadeDB's own ``config/``, ``databases/`` and ``log/`` sit
beside them):

- ``server.lock``: held (``flock``) while a process starts or stops the server, so concurrent
  callers start one server;
- ``launcher.lock``: held by the launcher for its whole life, with its pid and ports;
- ``server.json``: the server that answered (pid, ports, started_at), written once ready;
- ``credentials.json`` (mode 0600): the root password, made on the first start;
- ``server.log``: the launcher's output, appended.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from slipway.config import GraphSettings, get_settings
from slipway.graph.launcher import EXIT_HELD, HOLDER_FILE, PASSWORD_ENV

USER = "root"
DATABASE = "kg"
LAUNCHER_MODULE = "slipway.graph.launcher"
# Run by path with -P: ``-m`` would import the package's __init__ (and all it imports) first.
LAUNCHER_SCRIPT = Path(__file__).resolve().with_name("launcher.py")
STATE_FILE = "server.json"
LOCK_FILE = "server.lock"
LOG_FILE = "server.log"
CREDENTIALS_FILE = "credentials.json"
USERS_FILE = Path("config") / "server-users.jsonl"  # ArcadeDB's users, made on the first start
LOG_ROTATE_BYTES = 10 * 1024 * 1024
TAIL_LINES = 20
AUTH_FAILURES = 20  # consecutive refusals that mean a wrong password, not a slow start
BOLT_PORT_VAR = "SLIPWAY_GRAPH_BOLT_PORT"
HTTP_PORT_VAR = "SLIPWAY_GRAPH_HTTP_PORT"

# Launchers started by this process, so they are reaped (no zombies) and polled exactly.
_children: dict[int, subprocess.Popen[bytes]] = {}


class GraphServerError(RuntimeError):
    """The embedded graph server could not be started or reached; the message says what to do."""


class _PortTaken(GraphServerError):
    """A port the launcher could not listen on."""


@dataclass(frozen=True)
class ServerInfo:
    """Where a running embedded graph server listens and how to log in."""

    uri: str
    user: str
    password: str = field(repr=False)
    database: str
    pid: int
    bolt_port: int
    http_port: int
    directory: Path
    log: Path

    @property
    def auth(self) -> tuple[str, str]:
        """The ``(user, password)`` pair the neo4j driver takes."""
        return (self.user, self.password)


def graph_directory(settings: GraphSettings | None = None) -> Path:
    """The embedded server's directory: ``SLIPWAY_GRAPH_DIR``, else ``<home>/graph``."""
    chosen = (settings or GraphSettings()).graph_dir or get_settings().home / "graph"
    return chosen.expanduser().resolve()


def running_server(settings: GraphSettings | None = None) -> ServerInfo | None:
    """The server recorded in ``server.json`` when its launcher lives; forgets a dead one."""
    directory = graph_directory(settings)
    record = _read_json(directory / STATE_FILE)
    if record is None:
        return None
    info = _info(directory, record)
    if info is None or not _is_launcher(info.pid, directory):
        _forget(directory, record)
        return None
    return info


def start_server(settings: GraphSettings | None = None) -> ServerInfo:
    """Start the server on ``settings`` (or return the running one) and wait until it answers."""
    settings = settings or GraphSettings()
    directory = graph_directory(settings)
    _prepare(directory)
    with _locked(directory):
        info = running_server(settings)
        if info is not None:
            return _answering(info, settings)
        adopted = _adopt(directory, settings)
        if adopted is not None:
            return adopted
        password = _password(directory)
        explicit = bool(settings.graph_bolt_port and settings.graph_http_port)
        for attempt in range(3):
            bolt_port, http_port = _ports(settings)
            try:
                info = _launch(directory, settings, bolt_port, http_port, password)
            except _PortTaken:
                if explicit or attempt == 2:
                    raise
                continue  # another process took a free port between our probe and its bind
            _write_state(directory, info)
            return info
    raise AssertionError("unreachable")


ensure_server = start_server


def stop_server(settings: GraphSettings | None = None, timeout: float = 30.0) -> bool:
    """Stop the server (SIGTERM, then SIGKILL after ``timeout``); False when none was running."""
    directory = graph_directory(settings)
    if not directory.is_dir():
        return False
    with _locked(directory):
        pids = set()
        record = _read_json(directory / STATE_FILE)
        for candidate in (record, _holder(directory)):
            pid = _pid_of(candidate or {})
            if _is_launcher(pid, directory):
                pids.add(pid)
        (directory / STATE_FILE).unlink(missing_ok=True)
        for pid in pids:
            _terminate(pid, timeout)
        return bool(pids)


# --- start -------------------------------------------------------------------------------


def _prepare(directory: Path) -> None:
    """Create the directory, or say why it cannot be used."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=directory):  # unique per caller, even per thread
            pass
    except OSError as exc:
        raise GraphServerError(
            f"The graph directory {directory} is not writable ({exc.strerror or exc}); set "
            "SLIPWAY_GRAPH_DIR to a writable directory."
        ) from exc


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Hold the directory's start/stop lock (across processes) for the block."""
    fd = os.open(directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; a crashed holder's lock is released by the kernel


def _answering(info: ServerInfo, settings: GraphSettings) -> ServerInfo:
    """``info`` once its server answers a query; an error naming the fix when it does not."""
    try:
        _wait_ready(info, None, time.monotonic() + min(settings.graph_start_timeout, 15.0))
    except GraphServerError as exc:
        raise GraphServerError(
            f"The graph server (pid {info.pid}) at {info.directory} runs but does not answer on "
            f"{info.uri} ({exc}); run `slipway graph stop` and start it again."
        ) from exc
    return info


def _adopt(directory: Path, settings: GraphSettings) -> ServerInfo | None:
    """A launcher that holds the directory without ``server.json`` (its starter died), ready."""
    holder = _holder(directory)
    deadline = time.monotonic() + 10.0
    while holder is not None and not _is_launcher(_pid_of(holder), directory):
        if time.monotonic() > deadline:  # a dying launcher's threads release it in milliseconds
            break
        time.sleep(0.05)
        holder = _holder(directory)
    if holder is None:
        return None
    info = _info(directory, holder)
    if info is None or not _is_launcher(info.pid, directory):
        raise GraphServerError(
            f"The graph directory {directory} is held by another process (pid "
            f"{holder.get('pid', '?')}); run `slipway graph stop`, or set SLIPWAY_GRAPH_DIR to "
            "another directory."
        )
    _wait_ready(info, None, time.monotonic() + settings.graph_start_timeout)
    _write_state(directory, info)
    return info


def _password(directory: Path) -> str:
    """The root password from ``credentials.json``; a new random one on the first start."""
    path = directory / CREDENTIALS_FILE
    record = _read_json(path)
    if record is not None and isinstance(record.get("password"), str):
        return record["password"]
    if path.exists() or (directory / USERS_FILE).exists():
        raise GraphServerError(
            f"The graph directory {directory} has users but no readable {CREDENTIALS_FILE}; "
            f"restore it, or delete {directory / USERS_FILE} to set a new root password."
        )
    password = secrets.token_urlsafe(24)
    _write_json(path, {"user": USER, "password": password}, mode=0o600)
    return password


def _ports(settings: GraphSettings) -> tuple[int, int]:
    """The Bolt and HTTP ports: the configured ones when free, else free ones."""
    wanted = ((settings.graph_bolt_port, BOLT_PORT_VAR), (settings.graph_http_port, HTTP_PORT_VAR))
    for port, variable in wanted:
        if port and _port_taken(port):
            raise _PortTaken(
                f"Port {port} on 127.0.0.1 is taken; set {variable}=0 (a free "
                "port) or another port."
            )
    if settings.graph_bolt_port and settings.graph_bolt_port == settings.graph_http_port:
        raise GraphServerError(
            f"{BOLT_PORT_VAR} and {HTTP_PORT_VAR} are both "
            f"{settings.graph_bolt_port}; give them different ports (or 0)."
        )
    bolt_port = settings.graph_bolt_port or _free_port({settings.graph_http_port})
    http_port = settings.graph_http_port or _free_port({bolt_port})
    return bolt_port, http_port


def _port_taken(port: int) -> bool:
    """Whether a listener could not bind ``port`` on 127.0.0.1 (as Java binds: SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


def _free_port(avoid: set[int]) -> int:
    """A port the kernel reports free on 127.0.0.1, not one of ``avoid``."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port not in avoid:
            return port


def _launch(
    directory: Path, settings: GraphSettings, bolt_port: int, http_port: int, password: str
) -> ServerInfo:
    """Spawn a detached launcher and wait until it answers; kill it when it does not."""
    log = directory / LOG_FILE
    offset = _rotate(log)
    proc = _spawn(directory, bolt_port, http_port, settings.graph_heap, password)
    info = ServerInfo(
        uri=f"bolt://127.0.0.1:{bolt_port}",
        user=USER,
        password=password,
        database=DATABASE,
        pid=proc.pid,
        bolt_port=bolt_port,
        http_port=http_port,
        directory=directory,
        log=log,
    )
    try:
        _wait_ready(
            info,
            proc,
            time.monotonic() + settings.graph_start_timeout,
            timeout=settings.graph_start_timeout,
            log_offset=offset,
        )
    except BaseException:
        _terminate(proc.pid, 5.0)
        raise
    return info


def _rotate(log: Path) -> int:
    """Keep one older log once ``server.log`` grows large; the offset this start begins at."""
    with contextlib.suppress(FileNotFoundError):
        if log.stat().st_size > LOG_ROTATE_BYTES:
            log.replace(log.with_name(LOG_FILE + ".1"))
    try:
        return log.stat().st_size
    except FileNotFoundError:
        return 0


def _spawn(
    directory: Path, bolt_port: int, http_port: int, heap: str, password: str
) -> subprocess.Popen[bytes]:
    """Start the launcher script in its own session, its output appended to the log."""
    env = {**os.environ, PASSWORD_ENV: password}
    command = [
        sys.executable,
        "-P",
        str(LAUNCHER_SCRIPT),
        str(directory),
        "--bolt-port",
        str(bolt_port),
        "--http-port",
        str(http_port),
        "--database",
        DATABASE,
        "--heap",
        heap,
    ]
    with open(directory / LOG_FILE, "ab") as log:
        log.write(f"\n--- {_now()} starting: bolt {bolt_port}, http {http_port}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=directory,
            env=env,
            start_new_session=True,
            close_fds=True,
        )
    _children[proc.pid] = proc
    return proc


def _wait_ready(
    info: ServerInfo,
    proc: subprocess.Popen[bytes] | None,
    deadline: float,
    timeout: float | None = None,
    log_offset: int = 0,
) -> None:
    """Poll ``RETURN 1`` on the database until it answers (the Bolt port opens before it)."""
    from neo4j import GraphDatabase
    from neo4j.exceptions import AuthError, DriverError, Neo4jError

    refusals = 0
    with GraphDatabase.driver(info.uri, auth=info.auth, connection_timeout=2.0) as driver:
        while True:
            _check_alive(info, proc, log_offset)
            try:
                with driver.session(database=info.database) as session:
                    session.run("RETURN 1 AS ok").consume()
                return
            except AuthError as exc:
                refusals += 1
                if refusals >= AUTH_FAILURES:
                    raise GraphServerError(
                        f"The graph server at {info.uri} refuses the root password in "
                        f"{info.directory / CREDENTIALS_FILE}; restore the matching file, or "
                        f"delete {info.directory / USERS_FILE} to set a new one."
                    ) from exc
            except (Neo4jError, DriverError, OSError):
                refusals = 0
            if time.monotonic() > deadline:
                waited = f" within {timeout:.0f}s" if timeout is not None else ""
                raise GraphServerError(
                    f"The graph server did not answer on {info.uri}{waited}; see the log at "
                    f"{info.log}, or raise SLIPWAY_GRAPH_START_TIMEOUT."
                )
            time.sleep(0.1)


def _check_alive(info: ServerInfo, proc: subprocess.Popen[bytes] | None, log_offset: int) -> None:
    """Raise with the log's tail when the launcher has exited."""
    if proc is not None:
        code = proc.poll()
        if code is None:
            return
    elif _is_launcher(info.pid, info.directory):
        return
    else:
        code = None
    raise _died(info, code, _tail(info.log, log_offset))


def _died(info: ServerInfo, code: int | None, tail: str) -> GraphServerError:
    """The error for a launcher that exited before it answered, from its exit code and log."""
    if code == EXIT_HELD or "LockException" in tail or "is held by another" in tail:
        return GraphServerError(
            f"The graph directory {info.directory} is in use by another graph server; run "
            "`slipway graph stop`, or set SLIPWAY_GRAPH_DIR to another directory."
        )
    if "Unable to listen for BOLT connections" in tail:
        return _PortTaken(
            f"Bolt port {info.bolt_port} on 127.0.0.1 is taken; set "
            f"{BOLT_PORT_VAR}=0 (a free port) or another port."
        )
    if "Unable to listen to a HTTP port" in tail:
        return _PortTaken(
            f"HTTP port {info.http_port} on 127.0.0.1 is taken; set "
            f"{HTTP_PORT_VAR}=0 (a free port) or another port."
        )
    status = f" with status {code}" if code is not None else ""
    return GraphServerError(
        f"The graph server launcher (pid {info.pid}) exited{status} before it was ready; "
        f"the last lines of {info.log}:\n{tail}"
    )


def _tail(log: Path, offset: int, lines: int = TAIL_LINES) -> str:
    """The last ``lines`` lines written to ``log`` after ``offset``."""
    try:
        with open(log, "rb") as handle:
            handle.seek(offset)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    kept = [line for line in text.splitlines() if line.strip()]
    return "\n".join(kept[-lines:])


def _write_state(directory: Path, info: ServerInfo) -> None:
    """Record the ready server in ``server.json`` (atomically)."""
    _write_json(
        directory / STATE_FILE,
        {
            "pid": info.pid,
            "bolt_port": info.bolt_port,
            "http_port": info.http_port,
            "database": info.database,
            "started_at": _now(),
        },
        mode=0o644,
    )


# --- stop and state -----------------------------------------------------------------------


def _terminate(pid: int, timeout: float) -> None:
    """SIGTERM ``pid``, wait up to ``timeout`` seconds, then SIGKILL it."""
    for signum, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10.0)):
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            break
        if _gone(pid, wait):
            break
    _children.pop(pid, None)


def _gone(pid: int, timeout: float) -> bool:
    """Whether ``pid`` has exited (and, when it is our child, been reaped) within ``timeout``."""
    deadline = time.monotonic() + timeout
    while _alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs: a zombie does not, unless its other threads still exit."""
    if pid <= 0:
        return False
    child = _children.get(pid)
    if child is not None:
        return child.poll() is None  # not reapable before its last thread exits
    process = Path(f"/proc/{pid}")
    if process.parent.joinpath("self").exists():
        try:
            state = (process / "stat").read_text().rsplit(")", 1)[1].split()[0]
            return state != "Z" or len(os.listdir(process / "task")) > 1
        except (OSError, IndexError):
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _is_launcher(pid: int, directory: Path) -> bool:
    """Whether ``pid`` is a live launcher serving ``directory`` (not a reused pid)."""
    if not _alive(pid):
        return False
    try:
        args = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except FileNotFoundError:
        return not Path("/proc/self").exists()  # no /proc: trust the live pid
    except OSError:
        return False
    launcher = any(
        arg == LAUNCHER_MODULE.encode() or arg.endswith(b"slipway/graph/launcher.py")
        for arg in args
    )
    return launcher and str(directory).encode() in args


def _holder(directory: Path) -> dict[str, Any] | None:
    """The record of the launcher that holds ``launcher.lock``, or None when none does."""
    path = directory / HOLDER_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(20):  # the launcher writes its record just after it locks
                record = _read_json(path)
                if record is not None:
                    return record
                time.sleep(0.05)
            return {}
        return None
    finally:
        os.close(fd)


def _info(directory: Path, record: dict[str, Any]) -> ServerInfo | None:
    """A ServerInfo from a state or holder record; None when the record is incomplete."""
    try:
        pid, bolt_port, http_port = (int(record[k]) for k in ("pid", "bolt_port", "http_port"))
    except (KeyError, TypeError, ValueError):
        return None
    credentials = _read_json(directory / CREDENTIALS_FILE) or {}
    return ServerInfo(
        uri=f"bolt://127.0.0.1:{bolt_port}",
        user=USER,
        password=str(credentials.get("password", "")),
        database=str(record.get("database", DATABASE)),
        pid=pid,
        bolt_port=bolt_port,
        http_port=http_port,
        directory=directory,
        log=directory / LOG_FILE,
    )


def _pid_of(record: dict[str, Any]) -> int:
    """The pid in a state or holder record; 0 (no process) when it has none."""
    pid = record.get("pid")
    return pid if isinstance(pid, int) and pid > 0 else 0


def _forget(directory: Path, record: dict[str, Any]) -> None:
    """Delete ``server.json`` when it still holds ``record`` (a dead server's)."""
    path = directory / STATE_FILE
    if _read_json(path) == record:
        with contextlib.suppress(OSError):
            path.unlink()


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``; None when missing, unreadable or not an object."""
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _write_json(path: Path, value: dict[str, Any], mode: int) -> None:
    """Write ``value`` to ``path`` atomically (temp file, fsync, rename) with ``mode``."""
    temp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, json.dumps(value, indent=2).encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(temp, path)


def _now() -> str:
    """The current UTC time, ISO 8601."""
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "GraphServerError",
    "ServerInfo",
    "ensure_server",
    "graph_directory",
    "running_server",
    "start_server",
    "stop_server",
]
