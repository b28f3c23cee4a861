"""Tier 1: the Pinecone store through the real ``pinecone`` SDK, against a local stand-in."""

from __future__ import annotations

import socket
from collections.abc import Iterator, Mapping, Sequence

import numpy as np
import pytest

pytest.importorskip("pinecone")

from pinecone._internal import http_client
from pinecone.errors import ApiError

from slipway.retrieval.dense import matches
from slipway.retrieval.pinecone import PineconeStore, pinecone_filter
from tests.pinecone_standin import PineconeStandIn, pinecone_standin

KEY = "test-key"
DIM = 8
QUOTED = 'O\'Brien "the" \\ one'


@pytest.fixture(scope="module")
def standin() -> Iterator[PineconeStandIn]:
    """The stand-in, served for this module."""
    with pinecone_standin(api_key=KEY, dimension=DIM) as served:
        yield served


@pytest.fixture(autouse=True)
def no_sdk_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """The SDK's own retry backoff, made instant (its documented test seam)."""
    monkeypatch.setattr(http_client, "_retry_sleep", lambda _: None)


@pytest.fixture
def store(standin: PineconeStandIn) -> Iterator[PineconeStore]:
    """A store on an empty stand-in; instant retries."""
    standin.state.reset()
    made = PineconeStore(KEY, host=standin.host, batch_size=50)
    made.index.wait = 0
    yield made
    made.close()


def corpus(n: int, seed: int = 0) -> tuple[list[str], np.ndarray, list[dict[str, str]]]:
    """``n`` chunks of ``n // 3`` documents, with random vectors and a little metadata."""
    rng = np.random.default_rng(seed)
    ids = [f"doc{j // 3}#{j % 3}" for j in range(n)]
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    langs = ["en", "fr", QUOTED]
    metadata = [
        {"doc_id": i.split("#")[0], "lang": langs[j % 3], "year": str(2000 + j % 5)}
        for j, i in enumerate(ids)
    ]
    return ids, vectors, metadata


def brute_force(
    ids: Sequence[str],
    vectors: np.ndarray,
    metadata: Sequence[Mapping[str, str]],
    query: np.ndarray,
    k: int,
    filters: Mapping | None = None,
) -> list[str]:
    """The exact cosine top ``k`` over the rows matching ``filters``."""
    keep = [j for j, m in enumerate(metadata) if matches(m, filters)]
    m = vectors[keep]
    scores = (m @ query) / (np.linalg.norm(m, axis=1) * np.linalg.norm(query))
    return [ids[keep[j]] for j in np.argsort(-scores)[:k]]


def requests(standin: PineconeStandIn, method: str, path: str) -> int:
    return sum(1 for r in standin.state.requests if r == (method, path))


def write(store: PineconeStore, version: str, n: int, seed: int = 0) -> tuple:
    ids, vectors, metadata = corpus(n, seed)
    store.stage(version, None, DIM)
    store.add(version, ids, vectors, metadata)
    return ids, vectors, metadata


def test_search_is_exact_cosine_ranking(store: PineconeStore, standin: PineconeStandIn) -> None:
    ids, vectors, metadata = corpus(240)
    store.stage("v1", None, DIM)
    store.add("v1", ids[:130], vectors[:130], metadata[:130])
    store.add("v1", ids[130:], vectors[130:], metadata[130:])
    assert requests(standin, "POST", "/vectors/upsert") == 3 + 3  # batches of 50
    handle = store.commit("v1")
    assert handle == "slipway-v1"
    reader = store.reader(handle)
    queries = np.random.default_rng(1).standard_normal((5, DIM)).astype(np.float32)
    results = reader.search(queries, k=10)
    assert len(results) == 5
    for query, hits in zip(queries, results, strict=True):
        assert [i for i, _ in hits] == brute_force(ids, vectors, metadata, query, 10)
        best = vectors[ids.index(hits[0][0])]
        cosine = best @ query / (np.linalg.norm(best) * np.linalg.norm(query))
        assert hits[0][1] == pytest.approx(float(cosine), abs=1e-5)
        assert [s for _, s in hits] == sorted((s for _, s in hits), reverse=True)
    assert requests(standin, "POST", "/query") == 5  # one query per vector
    assert reader.search(queries[:0]) == []
    assert reader.count() == 240
    assert reader.ids() == set(ids)
    assert requests(standin, "GET", "/vectors/list") == 3  # paginated
    stored = standin.state.namespaces["slipway-v1"]["doc5#1"]
    assert stored.metadata == metadata[16]
    assert stored.values.dtype == np.float32


def test_stored_vectors_are_fetched_by_id(
    store: PineconeStore, standin: PineconeStandIn, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("slipway.retrieval.pinecone.FETCH_MAX", 100)
    ids, vectors, _ = write(store, "v1", 240)
    reader = store.reader(store.commit("v1"))
    got = reader.vectors([*ids, "not-there#0", ids[0]])
    assert set(got) == set(ids)
    assert all(np.allclose(got[i], vectors[j]) for j, i in enumerate(ids))
    assert requests(standin, "GET", "/vectors/fetch") == 3  # 240 ids, 100 a fetch
    assert reader.vectors([]) == {}


def test_filters(store: PineconeStore) -> None:
    ids, vectors, metadata = write(store, "v1", 90)
    reader = store.reader(store.commit("v1"))
    query = np.random.default_rng(2).standard_normal((1, DIM)).astype(np.float32)
    for filters in (
        {"lang": "fr"},
        {"lang": QUOTED},
        {"lang": ["en", QUOTED]},
        {"lang": "en", "year": ["2001", "2003"]},
        {"doc_id": "doc7"},
    ):
        hits = reader.search(query, k=7, filters=filters)[0]
        assert [i for i, _ in hits] == brute_force(ids, vectors, metadata, query[0], 7, filters)
        assert hits and all(matches(metadata[ids.index(i)], filters) for i, _ in hits)
    assert reader.search(query, k=5, filters={"lang": "de"}) == [[]]
    assert pinecone_filter(None) is None
    assert pinecone_filter({"a": "x"}) == {"a": {"$in": ["x"]}}
    assert pinecone_filter({"a": "x", "b": ["y", "z"]}) == {
        "$and": [{"a": {"$in": ["x"]}}, {"b": {"$in": ["y", "z"]}}]
    }
    with pytest.raises(ValueError, match="string"):
        reader.search(query, filters={"lang": []})


def test_delete(store: PineconeStore, standin: PineconeStandIn) -> None:
    ids, vectors, metadata = corpus(60)
    store.stage("v1", None, DIM)
    store.delete("v1", ["doc0#0"])  # the namespace does not exist yet: nothing to do
    store.add("v1", ids, vectors, metadata)
    gone = ids[:10]
    store.delete("v1", [*gone, *(f"unknown{j}" for j in range(2100))])
    assert requests(standin, "POST", "/vectors/delete") == 1 + 3  # 1000 ids per request
    reader = store.reader(store.commit("v1"))
    assert reader.count() == 50
    assert reader.ids() == set(ids[10:])
    hits = reader.search(vectors[:10], k=60)
    assert all(len(h) == 50 and not set(gone) & {i for i, _ in h} for h in hits)


def test_non_ascii_ids_round_trip(store: PineconeStore, standin: PineconeStandIn) -> None:
    ids = ["résumé.pdf#0", "résumé.pdf#1", "100% done#0", "日本語#0", "plain#0"]
    vectors = np.eye(len(ids), DIM, dtype=np.float32) + 0.01
    store.stage("v1", None, DIM)
    store.add("v1", ids, vectors, [{"doc_id": i.split("#")[0]} for i in ids])
    store.delete("v1", ["résumé.pdf#1"])
    reader = store.reader(store.commit("v1"))
    kept = [i for i in ids if i != "résumé.pdf#1"]
    assert reader.ids() == set(kept)
    assert reader.search(vectors[[0, 3]], k=1) == [
        [(ids[0], pytest.approx(1.0, abs=1e-3))],
        [(ids[3], pytest.approx(1.0, abs=1e-3))],
    ]
    assert reader.search(vectors[:1], k=5, filters={"doc_id": "日本語"})[0][0][0] == "日本語#0"
    stored = set(standin.state.namespaces["slipway-v1"])
    assert all(i.isascii() for i in stored) and "plain#0" in stored
    fetched = reader.vectors(["日本語#0", "résumé.pdf#1"])  # the second was deleted
    assert list(fetched) == ["日本語#0"] and np.allclose(fetched["日本語#0"], vectors[3])


def test_restage_discards_an_unfinished_attempt(
    store: PineconeStore, standin: PineconeStandIn
) -> None:
    write(store, "v2", 45, seed=3)  # crashed before commit
    again = PineconeStore(KEY, host=standin.host, batch_size=50)  # the next run
    try:
        ids, vectors, metadata = corpus(30, seed=4)
        ids = [f"new-{i}" for i in ids]
        again.stage("v2", "v1", DIM)
        again.add("v2", ids, vectors, metadata)
        again.add("v2", ids[:5], vectors[:5], metadata[:5])  # a retried batch: upserts again
        reader = again.reader(again.commit("v2"))
        assert reader.count() == 30
        assert reader.ids() == set(ids)
        assert len(standin.state.namespaces["slipway-v2"]) == 30
    finally:
        again.close()


def test_commit_waits_for_eventual_consistency(
    store: PineconeStore, standin: PineconeStandIn
) -> None:
    ids, vectors, metadata = corpus(20)
    store.stage("v1", None, DIM)
    standin.state.stale_stats(3)  # the next three stats calls still see an empty namespace
    store.add("v1", ids, vectors, metadata)
    before = requests(standin, "POST", "/describe_index_stats")
    assert store.commit("v1") == "slipway-v1"
    assert requests(standin, "POST", "/describe_index_stats") - before == 4
    store.stage("v2", None, DIM)
    standin.state.stale_stats(10_000)
    store.add("v2", ids, vectors, metadata)
    store.consistency_timeout = 0.3
    with pytest.raises(RuntimeError, match="reports 0 vectors, expected 20"):
        store.commit("v2")
    with pytest.raises(RuntimeError, match="stage"):
        store.add("v9", ["a"], np.ones((1, DIM), np.float32), [{}])


def test_gc_keeps_only_keep(store: PineconeStore, standin: PineconeStandIn) -> None:
    handles = []
    for n, version in enumerate(["v1", "v2", "v3", "v4"]):
        write(store, version, 6 + n)
        handles.append(store.commit(version))
    other = PineconeStore(KEY, host=standin.host, namespace_prefix="other-")
    try:
        write(other, "v1", 6)
        other.commit("v1")
    finally:
        other.close()
    standin.state.page_size = 1  # namespaces come back one per page
    store.gc([handles[1], handles[3], "slipway-never-written"])
    assert set(standin.state.namespaces) == {"slipway-v2", "slipway-v4", "other-v1"}
    assert store.reader(handles[1]).count() == 7
    store.gc([])
    assert set(standin.state.namespaces) == {"other-v1"}
    with pytest.raises(LookupError):
        store.reader("other-v1")
    with pytest.raises(ValueError, match="namespace_prefix"):
        PineconeStore(KEY, host=standin.host, namespace_prefix="")


def test_wrong_api_key_is_a_clear_error(standin: PineconeStandIn) -> None:
    standin.state.reset()
    bad = PineconeStore("not-the-key", host=standin.host)
    try:
        with pytest.raises(
            RuntimeError,
            match=r"rejected the API key \(HTTP 401.*"
            "SLIPWAY_PINECONE_API_KEY",
        ):
            bad.stage("v1", None, DIM)
        with pytest.raises(RuntimeError, match="SLIPWAY_PINECONE_API_KEY"):
            bad.reader("slipway-v1").count()
    finally:
        bad.close()
    with pytest.raises(RuntimeError, match="SLIPWAY_PINECONE_API_KEY"):
        PineconeStore("", host=standin.host)


def test_index_by_name(standin: PineconeStandIn, monkeypatch: pytest.MonkeyPatch) -> None:
    standin.state.reset()
    monkeypatch.setenv("PINECONE_CONTROLLER_HOST", standin.host)
    named = PineconeStore(KEY, index_name="slipway-test")
    try:
        assert named.index.host == standin.host
        write(named, "v1", 9)
        assert named.reader(named.commit("v1")).count() == 9
    finally:
        named.close()
    with pytest.raises(RuntimeError, match="no index named 'nope'.*SLIPWAY_PINECONE_INDEX"):
        PineconeStore(KEY, index_name="nope")
    with pytest.raises(RuntimeError, match="SLIPWAY_PINECONE_API_KEY"):
        PineconeStore("not-the-key", index_name="slipway-test")
    with pytest.raises(RuntimeError, match="SLIPWAY_PINECONE_INDEX.*SLIPWAY_PINECONE_HOST"):
        PineconeStore(KEY)


def test_dimension_mismatch_is_a_clear_error(store: PineconeStore) -> None:
    with pytest.raises(RuntimeError, match="dimension 8, the embedder 16"):
        store.stage("v1", None, 16)


def test_retries_server_errors_but_not_client_errors(
    store: PineconeStore, standin: PineconeStandIn
) -> None:
    write(store, "v1", 12)
    reader = store.reader(store.commit("v1"))
    before = requests(standin, "POST", "/describe_index_stats")
    standin.state.fail_next(6, 503)  # more than the SDK's own 3 retries
    assert reader.count() == 12
    assert requests(standin, "POST", "/describe_index_stats") - before == 7
    standin.state.fail_next(1, 400)
    before = len(standin.state.requests)
    with pytest.raises(ApiError) as raised:
        reader.search(np.ones((1, DIM), np.float32))
    assert raised.value.status_code == 400
    assert len(standin.state.requests) - before == 1


def test_unreachable_host_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again: nothing listens there
    dead = PineconeStore(KEY, host=f"http://127.0.0.1:{port}")
    dead.index.wait = 0
    try:
        with pytest.raises(
            RuntimeError, match="Cannot reach the Pinecone index.*SLIPWAY_PINECONE_HOST"
        ):
            dead.reader("slipway-v1").count()
    finally:
        dead.close()
    with pytest.raises(RuntimeError, match="SLIPWAY_PINECONE_HOST"):
        PineconeStore(KEY, host="not a host")
