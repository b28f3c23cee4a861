"""Nothing half-written is served: a refresh killed mid-write (SIGKILL) leaves the published
version intact, and the re-run finishes with every chunk exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slipway.embedding import OnnxEmbedder
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.index import IndexDir, open_published
from tests.index_worker import corpus_chunks

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def worker(
    root: Path, model: Path, corpus: Path, first: int, last: int, edit: int
) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.index_worker",
            str(root),
            str(model),
            str(corpus),
            str(first),
            str(last),
            str(edit),
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )


def expected_ids(model: Path, corpus: Path, first: int, last: int, edit: int) -> set[str]:
    return {c.id for c in corpus_chunks(model, corpus, first, last, edit)[1]}


def test_killed_refresh_leaves_the_published_version_and_rerun_converges(
    shared_data: Path, packaged_embedder: Path, tmp_path: Path
) -> None:
    corpus = shared_data / "cranfield"
    first = worker(tmp_path, packaged_embedder, corpus, 0, 150, 0)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0, err[-2000:]
    v1 = json.loads(out)
    ids_v1 = expected_ids(packaged_embedder, corpus, 0, 150, 0)

    # the second refresh edits 60 documents, drops 50 and adds 150: kill it mid-write
    second = worker(tmp_path, packaged_embedder, corpus, 50, 300, 60)
    assert second.stderr is not None
    seen = []
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        line = second.stderr.readline()
        seen.append(line)
        if "wrote" in line and "/" in line and not line.split("wrote ")[1].startswith("0/"):
            done, total = line.split("wrote ")[1].split(" ")[0].split("/")
            assert int(done) < int(total), "the refresh finished before it could be killed"
            second.send_signal(signal.SIGKILL)
            break
        assert line, "".join(seen)[-2000:]
    second.wait(timeout=60)
    assert second.returncode == -signal.SIGKILL

    index = IndexDir(tmp_path, "killtest")
    store = LanceDBStore(index.lance_dir)
    assert index.published() == v1["version"]
    opened = open_published(index, store)
    assert opened.dense.count() == len(ids_v1) and opened.dense.ids() == ids_v1
    assert set(opened.sparse.ids) == ids_v1
    hits = HybridSearcher(OnnxEmbedder(packaged_embedder), opened.dense, opened.sparse).search(
        ["boundary layer flow"], 5
    )
    assert hits[0] and all(h[0] in ids_v1 for h in hits[0])

    third = worker(tmp_path, packaged_embedder, corpus, 50, 300, 60)
    out, err = third.communicate(timeout=600)
    assert third.returncode == 0, err[-2000:]
    v2 = json.loads(out)
    assert v2["version"] != v1["version"] and index.published() == v2["version"]
    assert v2["stats"]["cache_hits"] > 0  # what the killed run embedded was not lost
    ids_v2 = expected_ids(packaged_embedder, corpus, 50, 300, 60)
    opened = open_published(index, store)
    assert opened.dense.count() == len(ids_v2) and opened.dense.ids() == ids_v2
    assert set(opened.sparse.ids) == ids_v2
