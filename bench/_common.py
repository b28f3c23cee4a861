"""Shared set-up of the benchmarks: machine description and the bundle under test."""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import platform
import signal
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

import onnxruntime as ort
import psutil

from slipway.config import get_settings
from slipway.documents import Document
from slipway.documents.chunking import Chunk
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.models import embedder_source, generator_source
from slipway.onnx import stages
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.cpu import read_cpu_info
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.index import (
    IndexDir,
    OpenIndex,
    document_hashes,
    open_published,
    refresh_index,
)

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def print_machine(threads: int) -> None:
    """CPU model, flags, threads and onnxruntime providers."""
    print(f"machine: {platform.platform()} | python {platform.python_version()}")
    print(f"cpu: {read_cpu_info().summary()}")
    print(
        f"threads: {threads} | onnxruntime {ort.__version__} "
        f"providers: {ort.get_available_providers()}"
    )


def parser(description: str) -> argparse.ArgumentParser:
    """Arguments every benchmark takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--bundle", type=Path, help="A built bundle (default: build one with defaults).")
    p.add_argument("--threads", type=int, default=len(os.sched_getaffinity(0)))
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument(
        "--quantization",
        help="Build with this quantization (int8, int4, off) "
        "instead of the default; ignored with --bundle.",
    )
    return p


def bundle_for(role: str, given: Path | None, quantization: str | None = None) -> OnnxBundle:
    """The bundle to measure: the one given, or ``role`` built (default config or
    ``quantization``)."""
    if given is not None:
        return OnnxBundle.load(given)
    cache = get_settings().cache_dir
    source = embedder_source() if role == "embedder" else generator_source(None, cache)
    configs = stages.configs_from({role: {"quantization": quantization}} if quantization else None)
    bundle = stages.export_stage({role: source}, configs)
    bundle = stages.optimize_stage(bundle, configs)
    return stages.quantize_stage(bundle, configs)


def published_index(
    root: Path,
    name: str,
    chunks: Sequence[Chunk],
    documents: Sequence[Document],
    embedder: OnnxEmbedder,
    model_dir: Path,
    cache: EmbeddingCache,
) -> tuple[OpenIndex, float]:
    """A first version of index ``name`` under ``root`` built by the real refresh (LanceDB,
    BM25), published and opened; with the seconds the build took."""
    index = IndexDir(root, name)
    store = LanceDBStore(index.lance_dir)
    started = time.perf_counter()
    version = refresh_index(
        index,
        store,
        chunks,
        document_hashes(documents),
        embedder,
        model_fingerprint(model_dir),
        cache,
        progress=False,
    )
    index.publish(version.version)
    seconds = time.perf_counter() - started
    return open_published(index, store), seconds


# --- processes a benchmark started -------------------------------------------------------

PR_SET_CHILD_SUBREAPER = 36


def become_subreaper() -> bool:
    """Make this process the reaper of its orphaned descendants (Linux ``prctl``), so that a
    server's workers stay in our process tree even when their parent dies first."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def process_tree(pid: int) -> list[psutil.Process]:
    """``pid`` and all its descendants now (empty when it is gone)."""
    try:
        top = psutil.Process(pid)
        return [top, *top.children(recursive=True)]
    except psutil.Error:
        return []


def session_members(sids: int | Iterable[int]) -> list[psutil.Process]:
    """Processes in the sessions ``sids``: sessions a benchmark's server created (its own,
    made with ``start_new_session``, and any a process of its tree leads): everything in them
    was started by that server, even once re-parented."""
    wanted = {sids} if isinstance(sids, int) else set(sids)
    out = []
    for proc in psutil.process_iter():
        try:
            if os.getsid(proc.pid) in wanted:
                out.append(proc)
        except (OSError, psutil.Error):
            continue
    return out


def running(procs: Iterable[psutil.Process]) -> list[psutil.Process]:
    """Those of ``procs`` that still run: the same process (psutil checks the start time, so a
    re-used pid does not count) and not a zombie."""
    out = []
    for proc in procs:
        try:
            if proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE:
                out.append(proc)
        except psutil.Error:
            continue
    return out


def signal_all(procs: Iterable[psutil.Process], sig: int) -> None:
    """Send ``sig`` to each of ``procs`` by pid (psutil refuses a pid that was re-used)."""
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)


def end_processes(
    procs: Iterable[psutil.Process], grace: float = 3.0, term_timeout: float = 5.0
) -> str:
    """End every one of ``procs`` (a snapshot of a tree, taken before its top was signalled)
    that still runs: ``grace`` seconds to finish on its own, then SIGTERM, then SIGKILL, each
    by pid. Returns what it took, in words."""
    procs = list(procs)
    deadline = time.monotonic() + grace
    while running(procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = running(procs)
    notes = []
    if left:
        notes.append(
            f"{len(left)} still running {grace:g} s later, SIGTERM to "
            + " ".join(str(p.pid) for p in left)
        )
        signal_all(left, signal.SIGTERM)
        psutil.wait_procs(left, timeout=term_timeout)
        left = running(left)
        if left:
            notes.append("SIGKILL to " + " ".join(str(p.pid) for p in left))
            signal_all(left, signal.SIGKILL)
            psutil.wait_procs(left, timeout=term_timeout)
    return "; ".join(notes) or "none outlived it"
