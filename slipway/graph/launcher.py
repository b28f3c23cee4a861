"""Run the embedded ArcadeDB Bolt server in this process: ``python -m slipway.graph.launcher``.

Started detached by :func:`slipway.graph.server.start_server` as ``python -P <this file>``
(``-m`` would import ``slipway.graph`` and all it imports first); stops cleanly on SIGTERM or
SIGINT. The root password comes from the environment (never argv, which ``ps`` shows).
Imports nothing from Slipway, so the server process stays small and starts fast.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

PASSWORD_ENV = "SLIPWAY_GRAPH_ROOT_PASSWORD"
HOLDER_FILE = "launcher.lock"
READY = "SLIPWAY-GRAPH-READY"
EXIT_USAGE = 2
EXIT_HELD = 3


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The launcher's command line: where, which ports, which database, how much heap."""
    parser = argparse.ArgumentParser(
        prog="python -m slipway.graph.launcher",
        description="Run the embedded ArcadeDB Bolt server.",
    )
    parser.add_argument("root", type=Path, help="Server directory (config/, databases/, log/).")
    parser.add_argument("--http-port", type=int, required=True, help="HTTP port.")
    parser.add_argument("--bolt-port", type=int, required=True, help="Bolt port.")
    parser.add_argument("--database", default="kg", help="Database to create or open.")
    parser.add_argument("--heap", default="1g", help="Java heap (-Xmx), e.g. 1g or 512m.")
    return parser.parse_args(argv)


def hold_directory(root: Path, record: dict[str, Any]) -> int | None:
    """Take the directory's launcher lock for this process's life; None when another holds it."""
    fd = os.open(root / HOLDER_FILE, os.O_RDWR | os.O_CREAT, 0o600)
    deadline = time.monotonic() + 2.0  # a status probe may hold it for an instant
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if time.monotonic() > deadline:
                os.close(fd)
                return None
            time.sleep(0.05)
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(record).encode(), 0)
    return fd


def holder_pid(root: Path) -> str:
    """The pid recorded in the directory's launcher lock, or '?'."""
    try:
        return str(json.loads((root / HOLDER_FILE).read_text()).get("pid", "?"))
    except (OSError, ValueError):
        return "?"


def stop_event() -> threading.Event:
    """An event set by SIGTERM or SIGINT."""
    event = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: event.set())
    return event


def serve(args: argparse.Namespace, password: str, stop: threading.Event) -> None:
    """Start the server with the Bolt plugin, open the database, run until ``stop`` is set."""
    started = time.monotonic()
    from arcadedb_embedded import create_server
    from arcadedb_embedded.jvm import start_jvm

    start_jvm(heap_size=args.heap)
    server = create_server(
        root_path=str(args.root),
        root_password=password,
        config={
            "host": "127.0.0.1",
            "http_port": args.http_port,
            "server_plugins": "Bolt:com.arcadedb.bolt.BoltProtocolPlugin",
            "bolt_port": args.bolt_port,
            "bolt_defaultDatabase": args.database,
        },
    )
    server.start()
    try:
        server.create_database(args.database)  # opens it when it exists
        print(
            f"\n{READY} pid={os.getpid()} bolt={args.bolt_port} http={args.http_port} "
            f"in {time.monotonic() - started:.2f}s",
            flush=True,
        )
        while not stop.wait(0.5):
            pass
    finally:
        server.stop()
    print(f"\nSLIPWAY-GRAPH-STOPPED pid={os.getpid()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    """Run the server until SIGTERM or SIGINT; the exit status says why it ended."""
    args = parse_args(argv)
    password = os.environ.pop(PASSWORD_ENV, "")
    if len(password) < 8:
        print(
            f"error: set {PASSWORD_ENV} to the root password (8 characters or more)",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_USAGE
    stop = stop_event()
    args.root = args.root.resolve()
    args.root.mkdir(parents=True, exist_ok=True)
    os.chdir(args.root)  # ArcadeDB writes ./log/ and JVM crash files into the working directory
    record = {
        "pid": os.getpid(),
        "bolt_port": args.bolt_port,
        "http_port": args.http_port,
        "database": args.database,
    }
    if hold_directory(args.root, record) is None:
        print(
            f"error: {args.root} is held by another graph server (pid {holder_pid(args.root)})",
            file=sys.stderr,
            flush=True,
        )
        return EXIT_HELD
    serve(args, password, stop)
    return 0


if __name__ == "__main__":
    sys.exit(main())
