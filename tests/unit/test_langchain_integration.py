"""Tier 1: the LangChain retriever and embeddings over a real (tiny) index, in-process and
over a real HTTP server that serves the same searcher and embedder."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import uvicorn
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from langchain_core.documents import Document as LCDocument
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnableLambda, RunnablePassthrough
from pydantic import ValidationError

from slipway.config import IndexSettings
from slipway.documents import Document, content_hash
from slipway.documents.chunking import chunk_documents, load_tokenizer
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.embedding.cache import EmbeddingCache
from slipway.integrations.langchain import SlipwayAPIError, SlipwayEmbeddings, SlipwayRetriever
from slipway.retrieval.dense import LanceDBStore
from slipway.retrieval.hybrid import HybridSearcher
from slipway.retrieval.index import (
    IndexDir,
    OpenIndex,
    document_hashes,
    open_published,
    refresh_index,
)

KEY = "sk-test-langchain"
NAME = "lc"
TEXTS = {
    "d0": ("Zebras", "the zebra grazes on the savanna near the river", "en"),
    "d1": ("Music", "a xylophone is played with small mallets", "en"),
    "d2": ("Paris", "paris is the capital of france and a large city", "fr"),
    "d3": ("Fox", "the quick brown fox jumps over the lazy dog", "en"),
    "d4": ("Zoo", "un zebra vit au zoo de vincennes", "fr"),
}


@dataclass
class Built:
    root: Path
    embedder: OnnxEmbedder
    opened: OpenIndex
    searcher: HybridSearcher


@pytest.fixture(scope="module")
def built(tiny_onnx_embedder: Path, tmp_path_factory: pytest.TempPathFactory) -> Built:
    """Five one-chunk documents indexed, published and opened, with a hybrid searcher."""
    root = tmp_path_factory.mktemp("lc-index")
    docs = [
        Document(id=i, title=t, text=x, content_hash=content_hash(t, x), metadata={"lang": lang})
        for i, (t, x, lang) in TEXTS.items()
    ]
    chunks = chunk_documents(
        docs, load_tokenizer(tiny_onnx_embedder), chunk_tokens=64, overlap_tokens=4
    ).chunks
    assert len(chunks) == len(docs)
    embedder = OnnxEmbedder(tiny_onnx_embedder, threads=1)
    index, store = IndexDir(root, NAME), LanceDBStore(IndexDir(root, NAME).lance_dir)
    version = refresh_index(
        index,
        store,
        chunks,
        document_hashes(docs),
        embedder,
        model_fingerprint(tiny_onnx_embedder),
        EmbeddingCache(root / "c.sqlite"),
    )
    index.publish(version.version)
    opened = open_published(index, store)
    searcher = HybridSearcher(embedder, opened.dense, opened.sparse, text_of=opened.text_of)
    return Built(root, embedder, opened, searcher)


@dataclass
class Served:
    url: str
    embed_batches: list[int] = field(default_factory=list)
    bodies: list[dict[str, Any]] = field(default_factory=list)


def _error(status: int, message: str, type_: str, code: str) -> JSONResponse:
    return JSONResponse(
        {"error": {"message": message, "type": type_, "param": None, "code": code}},
        status_code=status,
    )


def _app(built: Built, served: Served) -> FastAPI:
    """/v1/search and /v1/embed as Slipway serves them, over the same searcher and embedder."""
    app = FastAPI()

    @app.middleware("http")
    async def auth(request: Request, call_next: Any) -> Any:
        if request.headers.get("authorization") != f"Bearer {KEY}":
            return _error(401, "Invalid API key.", "authentication_error", "invalid_api_key")
        return await call_next(request)

    @app.post("/v1/search")
    async def search(request: Request) -> Any:
        body = await request.json()
        served.bodies.append(body)
        hits = (await built.searcher.search_async([body["query"]], body["top_k"], body["filters"]))[
            0
        ]
        return {
            "index_version": built.opened.version,
            "model": "tiny",
            "reranked": False,
            "graph_expanded": bool(body["graph"]),
            "results": [h.model_dump() for h in built.opened.hydrate(hits)],
        }

    @app.post("/v1/embed")
    async def embed(request: Request) -> Any:
        texts = (await request.json())["texts"]
        served.embed_batches.append(len(texts))
        if len(texts) > 64:
            return _error(
                400, "At most 64 texts per request.", "invalid_request_error", "too_many_texts"
            )
        vectors = built.embedder.embed(texts)
        return {
            "object": "list",
            "model": "tiny",
            "dimension": vectors.shape[1],
            "embeddings": vectors.tolist(),
            "usage": {},
        }

    return app


@pytest.fixture(scope="module")
def served(built: Built) -> Iterator[Served]:
    """The test server on a free 127.0.0.1 port, in a background thread."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    out = Served(url=f"http://127.0.0.1:{sock.getsockname()[1]}")
    server = uvicorn.Server(
        uvicorn.Config(_app(built, out), log_level="warning", access_log=False, lifespan="off")
    )
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "test server did not start"
        time.sleep(0.01)
    yield out
    server.should_exit = True
    thread.join(timeout=10)


def local(built: Built, **kwargs: Any) -> SlipwayRetriever:
    return SlipwayRetriever(searcher=built.searcher, index=built.opened, **kwargs)


def test_in_process_retriever_finds_the_chunk(built: Built) -> None:
    docs = local(built, k=3).invoke("xylophone")
    assert 1 <= len(docs) <= 3
    top = docs[0]
    assert isinstance(top, LCDocument)
    assert top.page_content == TEXTS["d1"][1]
    assert top.metadata["doc_id"] == "d1" and top.metadata["title"] == "Music"
    assert top.metadata["lang"] == "en" and top.metadata["position"] == 0
    assert top.id == top.metadata["id"] and top.id.startswith("d1")
    assert top.metadata["index_version"] == built.opened.version
    assert top.metadata["score"] > docs[-1].metadata["score"] or len(docs) == 1
    assert [d.id for d in asyncio.run(local(built, k=3).ainvoke("xylophone"))] == [
        d.id for d in docs
    ]


def test_filters_apply(built: Built) -> None:
    both = {d.metadata["doc_id"] for d in local(built, k=2).invoke("zebra")}
    assert both == {"d0", "d4"}
    french = local(built, k=5, filters={"lang": "fr"}).invoke("zebra")
    assert {d.metadata["lang"] for d in french} == {"fr"}
    assert french[0].metadata["doc_id"] == "d4"
    assert {d.metadata["doc_id"] for d in french} == {"d2", "d4"}
    listed = local(built, k=5, filters={"lang": ["en", "fr"]}).invoke("zebra")
    assert len(listed) == 5


def test_retriever_in_a_langchain_chain(built: Built) -> None:
    prompt = ChatPromptTemplate.from_messages(
        [("system", "Answer from the context.\n\n{context}"), ("human", "{question}")]
    )

    def format_docs(docs: list[LCDocument]) -> str:
        return "\n\n".join(f"[{d.metadata['title']}] {d.page_content}" for d in docs)

    chain = {
        "context": local(built, k=1) | RunnableLambda(format_docs),
        "question": RunnablePassthrough(),
    } | prompt
    value = chain.invoke("which instrument uses mallets? xylophone")
    system, human = value.to_messages()
    assert system.content == f"Answer from the context.\n\n[Music] {TEXTS['d1'][1]}"
    assert human.content == "which instrument uses mallets? xylophone"
    again = asyncio.run(chain.ainvoke("which instrument uses mallets? xylophone"))
    assert again.to_messages() == value.to_messages()


def test_from_published(built: Built) -> None:
    retriever = SlipwayRetriever.from_published(
        NAME, built.embedder, settings=IndexSettings(index_root=built.root), k=2
    )
    assert retriever.k == 2 and retriever.graph is False
    assert retriever.invoke("xylophone")[0].metadata["doc_id"] == "d1"


def test_graph_flag_controls_the_expander(built: Built) -> None:
    calls: list[list[str]] = []

    def expander(queries: Any, k: int) -> list[list[tuple[str, float]]]:
        calls.append(list(queries))
        return [[(built.opened.dense.ids().pop(), 1.0)] for _ in queries]

    with_graph = HybridSearcher(
        built.embedder, built.opened.dense, built.opened.sparse, expander=expander
    )
    SlipwayRetriever(searcher=with_graph, index=built.opened, graph=False).invoke("zebra")
    assert calls == []  # graph=False: the graph ranking is left out
    SlipwayRetriever(searcher=with_graph, index=built.opened, graph=True).invoke("zebra")
    assert calls == [["zebra"]]
    SlipwayRetriever(searcher=with_graph, index=built.opened).invoke("otter")
    assert calls == [["zebra"], ["otter"]]  # unset: the searcher's graph retriever is used
    with pytest.raises(ValidationError, match="graph expander"):
        local(built, graph=True)


def test_exactly_one_mode() -> None:
    with pytest.raises(ValidationError, match="got neither"):
        SlipwayRetriever()
    with pytest.raises(ValidationError, match="got both"):
        SlipwayRetriever(searcher=object(), index=object(), base_url="http://127.0.0.1:1")
    with pytest.raises(ValidationError, match="needs the index"):
        SlipwayRetriever(searcher=object())
    with pytest.raises(ValidationError, match="got neither"):
        SlipwayEmbeddings()
    with pytest.raises(ValidationError, match="got both"):
        SlipwayEmbeddings(embedder=object(), base_url="http://127.0.0.1:1")


def test_http_retriever_matches_in_process(built: Built, served: Served) -> None:
    remote = SlipwayRetriever(base_url=served.url + "/", api_key=KEY, k=3, filters={"lang": ["en"]})
    expected = local(built, k=3, filters={"lang": ["en"]}).invoke("zebra savanna")
    got = remote.invoke("zebra savanna")
    assert got == expected and got[0].metadata["doc_id"] == "d0"
    assert served.bodies[-1] == {
        "query": "zebra savanna",
        "top_k": 3,
        "filters": {"lang": ["en"]},
        "graph": None,  # unset: the server's index gate decides
    }
    assert asyncio.run(remote.ainvoke("zebra savanna")) == expected


def test_http_errors_carry_status_and_message(served: Served) -> None:
    for key in ("wrong-key", None):
        retriever = SlipwayRetriever(base_url=served.url, api_key=key)
        with pytest.raises(SlipwayAPIError, match="401.*Invalid API key") as caught:
            retriever.invoke("zebra")
        assert caught.value.status == 401 and caught.value.code == "invalid_api_key"
    with pytest.raises(SlipwayAPIError, match="401"):
        asyncio.run(SlipwayRetriever(base_url=served.url, api_key="no").ainvoke("zebra"))
    with pytest.raises(SlipwayAPIError, match="401.*Invalid API key"):
        SlipwayEmbeddings(base_url=served.url, api_key="no").embed_query("zebra")
    with pytest.raises(SlipwayAPIError, match="400.*At most 64 texts"):
        SlipwayEmbeddings(base_url=served.url, api_key=KEY, batch_size=100).embed_documents(
            ["zebra"] * 100
        )


def test_embeddings_http_and_in_process_agree_and_batch(built: Built, served: Served) -> None:
    texts = [f"{TEXTS[f'd{i % 5}'][1]} {i}" for i in range(150)]
    here = SlipwayEmbeddings(embedder=built.embedder)
    expected = here.embed_documents(texts)
    assert len(expected) == 150 and all(isinstance(x, float) for x in expected[0])
    np.testing.assert_array_equal(np.asarray(expected), built.embedder.embed(texts))
    remote = SlipwayEmbeddings(base_url=served.url, api_key=KEY)
    served.embed_batches.clear()
    assert remote.embed_documents(texts) == expected
    assert served.embed_batches == [64, 64, 22]
    served.embed_batches.clear()
    assert asyncio.run(remote.aembed_documents(texts)) == expected
    assert served.embed_batches == [64, 64, 22]
    assert remote.embed_query(texts[3]) == expected[3]
    assert asyncio.run(remote.aembed_query(texts[4])) == expected[4]
    assert asyncio.run(here.aembed_query(texts[5])) == expected[5]
    assert remote.embed_documents([]) == [] and served.embed_batches[-1] == 1
