"""Tier 3: the real service over HTTP (``slipway serve``: the API, encoder and generator
BentoML services) on the model and index the main job registered and published, with rate
limits and the cache in a real Valkey and traces in MLflow."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from slipway.graph.vectors import EntityVectors
from tests.e2e.conftest import DEPRECATED, ROOT, XQUAD, Server, post, serving

# The scopes each route needs; a new route must be added here (the sweep checks the spec).
ROUTE_SCOPES: dict[str, set[str]] = {
    "/v1/embed": {"embed"},
    "/v1/embeddings": {"embed"},
    "/v1/generate": {"generate"},
    "/v1/completions": {"generate"},
    "/v1/chat/completions": {"generate"},
    "/v1/summarize": {"generate"},
    "/v1/search": {"search"},
    "/v1/answer": {"search", "generate"},
    "/v1/feedback": {"feedback"},
    "/v1/graph/entities/{name}": {"search"},
    "/v1/graph/entities/{id}/similar": {"search"},
    "/v1/rerank": {"search"},
    "/v1/tokenize": set(),  # any valid key
    "/v1/models": set(),  # any valid key
    "/v1/models/{model}": set(),
}
OPEN_ROUTES = ("/livez", "/readyz", "/metrics")


def metric(server: Server, name: str, **labels: str) -> float:
    """Sum of a metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in httpx.get(f"{server.base}/metrics", timeout=30).text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        match = re.match(r"^(\w+)(?:\{(.*)\})? (\S+)$", line)
        if match is None or match.group(1) != name:
            continue
        found = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or ""))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(3))
    return total


def sse(response: httpx.Response) -> list[Any]:
    """The ``data:`` payloads of a server-sent-event stream."""
    out: list[Any] = []
    for line in response.iter_lines():
        if line.startswith("data: "):
            data = line[len("data: ") :]
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def xquad_question(i: int = 0) -> str:
    """A question of the shared XQuAD set."""
    return json.loads((XQUAD / "queries.jsonl").read_text().splitlines()[i])["text"]


def test_health_and_metrics_are_open(server: Server) -> None:
    for path in OPEN_ROUTES:
        assert httpx.get(f"{server.base}{path}", timeout=30).status_code == 200, path


def test_not_ready_without_a_published_index(server: Server, tmp_path: Path) -> None:
    with serving(
        server.tracking_uri, tmp_path / "serve.log", ready=False, index_name="never-published"
    ) as base:
        assert httpx.get(f"{base}/livez", timeout=30).status_code == 200
        assert httpx.get(f"{base}/readyz", timeout=30).status_code == 503
        r = httpx.post(
            f"{base}/v1/search", json={"query": "x"}, headers=server.headers(), timeout=30
        )
        assert r.status_code == 503 and r.json()["error"]["code"] == "index_unavailable"
        assert "never-published" in r.json()["error"]["message"]


def test_embed(server: Server) -> None:
    r = post(server, "/v1/embed", {"texts": ["hello world", "paris is a city"]}, role="embed")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["dimension"] == 64 and len(body["embeddings"]) == 2
    assert body["usage"]["prompt_tokens"] > 4
    norms = [sum(x * x for x in v) ** 0.5 for v in body["embeddings"]]
    assert all(abs(n - 1.0) < 1e-3 for n in norms)


def test_concurrent_embeds_are_batched_correctly(server: Server) -> None:
    import concurrent.futures as cf

    texts = [f"concurrent text number {i}" for i in range(12)]
    single = {
        t: post(server, "/v1/embed", {"texts": [t]}).json()["embeddings"][0] for t in texts[:3]
    }
    calls_before = metric(server, "slipway_embed_batch_size_count")
    with cf.ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda t: post(server, "/v1/embed", {"texts": [t]}), texts))
    assert all(r.status_code == 200 for r in results)
    for t, r in zip(texts[:3], results[:3], strict=True):
        got = r.json()["embeddings"][0]  # cached now: the same vector, whatever the batch
        assert max(abs(a - b) for a, b in zip(got, single[t], strict=True)) < 1e-4
    assert metric(server, "slipway_embed_batch_size_count") > calls_before
    assert metric(server, "slipway_embed_batch_size_sum") >= 12


def test_generate_greedy_is_deterministic_and_cached(server: Server) -> None:
    req = {"prompt": "what is the capital of france", "max_new_tokens": 8, "temperature": 0}
    hits = metric(server, "slipway_cache_requests_total", kind="generate", result="hit")
    a, b = post(server, "/v1/generate", req, role="generate"), post(server, "/v1/generate", req)
    assert a.status_code == 200, a.text
    assert a.json()["text"] == b.json()["text"]
    usage = a.json()["usage"]
    assert 0 < usage["completion_tokens"] <= 8 and usage["prompt_tokens"] > 0
    assert metric(server, "slipway_cache_requests_total", kind="generate", result="hit") > hits


def test_generate_streams_server_sent_events(server: Server) -> None:
    req = {"prompt": "tell me about rivers", "max_new_tokens": 12, "temperature": 0}
    whole = post(server, "/v1/generate", req).json()
    with httpx.stream(
        "POST",
        f"{server.base}/v1/generate",
        json={**req, "stream": True},
        headers=server.headers(),
        timeout=60,
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse(r)
    assert events[-1] == "[DONE]"
    final = events[-2]
    assert final["usage"] == whole["usage"] and final["finish_reason"] == whole["finish_reason"]
    assert "".join(e["text"] for e in events[:-2]) == whole["text"]


def test_models_reports_versions_index_and_providers(
    server: Server, registered: dict[str, str]
) -> None:
    body = httpx.get(
        f"{server.base}/v1/models", headers=server.headers("search"), timeout=30
    ).json()
    assert body["version"] == registered["version"] and body["api_version"] == "v1"
    assert body["models"]["embedder"]["provider"] == "CPUExecutionProvider"
    assert body["models"]["generator"]["precision"] == "int8"
    assert body["index"]["name"] == "e2e" and body["index"]["version"].startswith("v")
    assert f"slipway-e2e:{registered['version']}" in [m["id"] for m in body["data"]]


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/v1/embed", {"texts": []}, "texts"),
        ("/v1/embed", {"texts": [""]}, "texts"),
        ("/v1/embed", {"texts": ["   "]}, "texts"),
        ("/v1/embed", {"texts": ["x" * 501]}, "texts"),
        ("/v1/embed", {"texts": ["a"] * 9}, "texts"),
        ("/v1/embed", {"texts": "not a list"}, "texts"),
        ("/v1/embed", {}, "texts"),
        ("/v1/embed", {"texts": ["a"], "txt": 1}, "txt"),
        ("/v1/generate", {"prompt": " \n "}, "prompt"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": 129}, "max_new_tokens"),
        ("/v1/generate", {"prompt": "hi", "max_new_tokens": "many"}, "max_new_tokens"),
        ("/v1/generate", {"prompt": "hi", "temperature": -1}, "temperature"),
        ("/v1/generate", {"prompt": ""}, "prompt"),
        ("/v1/generate", {"prompt": "xq7" * 160}, "prompt"),  # past the tiny model's context
        ("/v1/search", {"query": "x", "top_k": 0}, "top_k"),
        ("/v1/search", {"query": "x", "filters": {"a": []}}, "filters"),
        ("/v1/summarize", {"text": "x", "document_ids": ["d"]}, "document_ids"),
        ("/v1/summarize", {"document_ids": ["no such document"]}, "document_ids"),
        ("/v1/answer", {"question": "x", "top_k": 21}, "top_k"),
        ("/v1/embeddings", {"input": "x", "dimensions": 3}, "dimensions"),
        ("/v1/embeddings", {"input": [[1, 2]]}, "input"),
        ("/v1/chat/completions", {"messages": []}, "messages"),
        ("/v1/chat/completions", {"messages": [{"role": "wizard", "content": "hi"}]}, "role"),
        ("/v1/completions", {"prompt": "hi", "n": 2}, "n"),
    ],
)
def test_bad_input_gets_a_4xx_naming_the_field(
    server: Server, path: str, payload: dict, field: str
) -> None:
    r = post(server, path, payload)
    assert 400 <= r.status_code < 500, (r.status_code, r.text)
    error = r.json()["error"]
    assert field in error["message"] or field in (error["param"] or ""), error


def test_malformed_bodies_never_500(server: Server) -> None:
    url, auth = f"{server.base}/v1/embed", server.headers()
    json_type = {**auth, "content-type": "application/json"}
    cases = {
        "bad json": (httpx.post(url, content=b"{not json", headers=json_type), 400),
        "not utf-8": (httpx.post(url, content=b'{"texts": ["\xff\xfe"]}', headers=json_type), 400),
        "wrong type": (
            httpx.post(
                url,
                content=b"texts=a",
                headers={**auth, "content-type": "application/x-www-form-urlencoded"},
            ),
            415,
        ),
        "too big": (httpx.post(url, json={"texts": ["a" * 9000]}, headers=auth), 413),
        "too big, chunked": (
            httpx.post(
                url, content=iter([b'{"texts": ["', b"a" * 9000, b'"]}']), headers=json_type
            ),
            413,
        ),
        "wrong method": (httpx.get(url, headers=auth), 405),
        "no route": (httpx.get(f"{server.base}/v1/nothing", headers=auth), 404),
    }
    for name, (r, status) in cases.items():
        assert r.status_code == status, (name, r.status_code, r.text)
        assert r.json()["error"]["message"], name


def test_search_filters_and_caches_per_index_version(server: Server) -> None:
    query = xquad_question(0)
    r = post(server, "/v1/search", {"query": query, "top_k": 5}, role="search")
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["results"]) == 5 and body["index_version"].startswith("v")
    top = body["results"][0]
    assert top["id"].startswith(top["doc_id"]) and top["text"]
    hits = metric(server, "slipway_cache_requests_total", kind="search", result="hit")
    assert post(server, "/v1/search", {"query": query, "top_k": 5}).json() == body
    assert metric(server, "slipway_cache_requests_total", kind="search", result="hit") > hits
    assert top["metadata"] == {}  # XQuAD passages carry none: any filter excludes them all
    filtered = post(
        server, "/v1/search", {"query": query, "top_k": 5, "filters": {"lang": ["en", "de"]}}
    )
    assert filtered.status_code == 200 and filtered.json()["results"] == []


def test_graph_retrieval_follows_the_index_gate_unless_asked(server: Server) -> None:
    listed = httpx.get(f"{server.base}/v1/models", headers=server.headers(), timeout=30).json()
    index = listed["index"]
    # the main job wrote the version's graph snapshot and the gate decided on the eval set
    assert index["graph_snapshot"] is True, index
    gate = index["graph_gate"]
    assert gate is not None and gate["hybrid"] is not None and gate["hybrid_graph"] is not None
    assert (
        index["graph_retrieval"]
        == gate["enabled"]
        == (gate["hybrid_graph"] >= gate["hybrid"] + 0.005)
    )
    query = {"query": "Where is Warsaw?", "top_k": 3}
    default = post(server, "/v1/search", query)
    assert default.status_code == 200 and default.json()["graph_expanded"] is gate["enabled"]
    for asked in (True, False):
        r = post(server, "/v1/search", {**query, "graph": asked})
        assert r.status_code == 200, r.text
        assert r.json()["graph_expanded"] is asked and len(r.json()["results"]) == 3
    answer = post(
        server, "/v1/answer", {"question": "Where is Warsaw?", "graph": True, "max_new_tokens": 8}
    )
    assert answer.status_code == 200, answer.text


def test_answer_cites_the_chunks_it_used_and_is_traced(server: Server) -> None:
    import mlflow

    question = xquad_question(1)
    always = {"top_k": 3, "max_new_tokens": 16, "min_relevance": -1.0}  # never abstain
    r = post(server, "/v1/answer", {"question": question, **always})
    assert r.status_code == 200, r.text
    body = r.json()
    request_id = r.headers["x-request-id"]
    # every [n] marker of the answer names a citation marked cited, and every cited one is there
    marked = {int(n) for n in re.findall(r"\[(\d+)\]", body["answer"])}
    assert marked == {c["n"] for c in body["citations"] if c["cited"]}, body
    assert all(-1.0 <= c["relevance"] <= 1.0 for c in body["citations"])
    found = post(server, "/v1/search", {"query": question, "top_k": 3}).json()["results"]
    assert body["citations"], body
    assert [c["id"] for c in body["citations"]] == [h["id"] for h in found][
        : len(body["citations"])
    ]
    assert [c["n"] for c in body["citations"]] == list(range(1, len(body["citations"]) + 1))
    assert 0 < body["usage"]["completion_tokens"] <= 16
    # a question that leaves no room for sources in the small model's context: 400, not 500
    crowded = post(server, "/v1/answer", {"question": "9 " * 250, "max_new_tokens": 16})
    assert crowded.status_code == 400, crowded.text
    assert crowded.json()["error"]["param"] == "question"
    # no relevant source: an abstention, not a free generation (nothing generated, no charge)
    before = metric(server, "slipway_answers_total", outcome="no_context")
    for payload in (
        {"question": question, "filters": {"doc_id": ["no such document"]}},
        {"question": question, "min_relevance": 1.0},
    ):
        abstained = post(server, "/v1/answer", {**payload, "max_new_tokens": 16})
        assert abstained.status_code == 200, abstained.text
        reply = abstained.json()
        assert reply["finish_reason"] == "no_context", reply
        assert reply["citations"] == [] and reply["usage"]["completion_tokens"] == 0
    assert metric(server, "slipway_answers_total", outcome="no_context") == before + 2

    mlflow.set_tracking_uri(server.tracking_uri)
    deadline = time.monotonic() + 60
    spans: dict[str, Any] = {}
    while time.monotonic() < deadline and not spans:
        experiment = mlflow.get_experiment_by_name("slipway-traces")
        traces = (
            mlflow.search_traces(experiment_ids=[experiment.experiment_id], return_type="list")
            if experiment
            else []
        )
        for trace in traces:
            names = {s.name: s for s in trace.data.spans}
            if trace.info.tags.get("request_id") == request_id:
                spans = names
        time.sleep(1)
    assert {"answer", "retrieve", "rerank", "prompt", "relevance", "generate"} <= set(spans)
    generate = spans["generate"].attributes
    assert generate["completion_tokens"] == body["usage"]["completion_tokens"]
    assert spans["prompt"].attributes["sources"] == len(body["citations"])


def test_summarize_maps_and_reduces_long_text(server: Server) -> None:
    passages = [json.loads(line)["text"] for line in (XQUAD / "corpus.jsonl").open()][:6]
    text = " ".join(passages)[:3900]
    r = post(server, "/v1/summarize", {"text": text, "max_words": 10}, role="generate")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["pieces"] > 1 and body["usage"]["completion_tokens"] > 0
    doc = post(server, "/v1/search", {"query": xquad_question(2), "top_k": 1}).json()
    doc_id = doc["results"][0]["doc_id"]
    r = post(server, "/v1/summarize", {"document_ids": [doc_id], "max_words": 10})
    assert r.status_code == 200 and r.json()["document_ids"] == [doc_id]


def test_graph_entity_with_neighbours(server: Server) -> None:
    from slipway.graph import connect

    with connect() as graph:
        rows = graph.read(
            "MATCH (e:Entity)-[:CO_OCCURS]-() RETURN e.name AS name, "
            "e.id AS id ORDER BY e.mentions DESC, e.id LIMIT 1"
        )
    name, entity_id = rows[0]["name"], rows[0]["id"]
    r = httpx.get(
        f"{server.base}/v1/graph/entities/{name}",
        params={"limit": 3},
        headers=server.headers("search"),
        timeout=60,
    )
    assert r.status_code == 200, r.text
    entity = next(e for e in r.json()["entities"] if e["id"] == entity_id)
    assert 0 < len(entity["neighbours"]) <= 3 and entity["mentions"] > 0
    missing = httpx.get(f"{server.base}/v1/graph/entities/Nobody Atall", headers=server.headers())
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "entity_not_found"

    # nearest entities by GNN embedding: the same order the entity vector table gives
    similar = httpx.get(
        f"{server.base}/v1/graph/entities/{quote(entity_id, safe='')}/similar",
        params={"limit": 5},
        headers=server.headers("search"),
        timeout=60,
    )
    assert similar.status_code == 200, similar.text
    near = similar.json()["similar"]
    expected = EntityVectors(Path(os.environ["SLIPWAY_HOME"]) / "entity_vectors").similar(
        entity_id, 5
    )
    assert [(e["id"], e["name"]) for e in near] == [(i, n) for i, n, _ in expected]
    assert entity_id not in {e["id"] for e in near}
    assert all(-1.0 <= e["similarity"] <= 1.0 for e in near)
    assert [e["similarity"] for e in near] == sorted((e["similarity"] for e in near), reverse=True)
    # a control character in the path: a JSON 400 from the server, not its router's text 404
    raw = httpx.get(f"{server.base}/v1/graph/entities/a%0Ab/similar", headers=server.headers())
    assert raw.status_code == 400 and raw.json()["error"]["code"] == "invalid_path"
    for bad, status in (("PERSON:nobody atall", 404), ("lowercase:x", 400)):
        r = httpx.get(
            f"{server.base}/v1/graph/entities/{quote(bad, safe='')}/similar",
            headers=server.headers("search"),
            timeout=60,
        )
        assert r.status_code == status, r.text


def test_openai_sdk_works_unchanged(server: Server) -> None:
    import openai

    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=server.keys["admin"])
    embedded = client.embeddings.create(model="slipway-e2e", input=["hello", "world"])
    assert len(embedded.data) == 2 and len(embedded.data[0].embedding) == 64
    floats = client.embeddings.create(model="slipway-e2e", input="hello", encoding_format="float")
    assert floats.data[0].embedding == pytest.approx(embedded.data[0].embedding, abs=1e-6)
    chat = client.chat.completions.create(
        model="slipway-e2e",
        max_tokens=8,
        temperature=0,
        messages=[{"role": "user", "content": "Say hi"}],
    )
    assert chat.choices[0].message.role == "assistant" and chat.usage.completion_tokens > 0
    stream = client.chat.completions.create(
        model="slipway-e2e",
        max_tokens=8,
        temperature=0,
        stream=True,
        messages=[{"role": "user", "content": "Say hi"}],
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(pieces) == chat.choices[0].message.content
    completion = client.completions.create(model="slipway-e2e", prompt="Once upon", max_tokens=4)
    assert completion.choices[0].finish_reason in ("stop", "length")
    assert any(m.id.startswith("slipway-e2e") for m in client.models.list())
    with pytest.raises(openai.BadRequestError) as bad:
        client.chat.completions.create(
            model="slipway-e2e", max_tokens=999, messages=[{"role": "user", "content": "hi"}]
        )
    assert bad.value.body["param"] == "max_tokens"
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=f"{server.base}/v1", api_key="sk-wrong").models.list()
    embed_only = openai.OpenAI(base_url=f"{server.base}/v1", api_key=server.keys["embed"])
    with pytest.raises(openai.PermissionDeniedError):
        embed_only.completions.create(model="slipway-e2e", prompt="hi", max_tokens=2)


def test_openai_structured_output_tools_and_refused_parameters(server: Server) -> None:
    """response_format and tools constrain the decoder (the tiny random model still writes
    valid JSON and valid calls); what is not implemented is a 400 naming the field."""
    import jsonschema
    import openai

    client = openai.OpenAI(base_url=f"{server.base}/v1", api_key=server.keys["admin"])
    ask = [{"role": "user", "content": "Is 'You won a cruise!' spam?"}]
    schema = {
        "type": "object",
        "properties": {"spam": {"type": "boolean"}, "reason": {"type": "string", "maxLength": 8}},
        "required": ["spam", "reason"],
        "additionalProperties": False,
    }
    verdict = client.chat.completions.create(
        model="slipway-e2e",
        messages=ask,
        max_tokens=64,
        response_format={"type": "json_schema", "json_schema": {"name": "v", "schema": schema}},
    )
    jsonschema.validate(json.loads(verdict.choices[0].message.content or ""), schema)
    weather = {
        "type": "object",
        "properties": {"city": {"type": "string", "maxLength": 12}},
        "required": ["city"],
        "additionalProperties": False,
    }
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
    called = client.chat.completions.create(
        model="slipway-e2e",
        messages=[{"role": "user", "content": "Weather in Paris?"}],
        max_tokens=64,
        tools=tools,
        tool_choice="required",
    )
    choice = called.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), weather)
    # the call goes back with its result, and the model answers
    follow = client.chat.completions.create(
        model="slipway-e2e",
        max_tokens=4,  # the tiny model's context is 256 tokens
        messages=[
            {"role": "user", "content": "Weather in Paris?"},
            choice.message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "sunny, 21 C"},
        ],
    )
    assert follow.choices[0].finish_reason in ("stop", "length")
    streamed = client.chat.completions.create(
        model="slipway-e2e",
        messages=[{"role": "user", "content": "Weather in Rome?"}],
        max_tokens=64,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        stream=True,
    )
    deltas = [c.choices[0].delta.tool_calls for c in streamed if c.choices]
    assert [d[0].function.name for d in deltas if d] == ["get_weather"]

    assert client.models.retrieve("slipway-e2e").id == "slipway-e2e"
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-4o")
    assert missing.value.body["code"] == "model_not_found"
    refused = [
        ({"model": "gpt-4o"}, openai.NotFoundError, "model", "model_not_found"),
        ({"presence_penalty": 5.0}, openai.BadRequestError, "presence_penalty", "less_than_equal"),
        (
            {"presence_penalty": 0.5},
            openai.BadRequestError,
            "presence_penalty",
            "unsupported_parameter",
        ),
        ({"logprobs": True}, openai.BadRequestError, "logprobs", "unsupported_parameter"),
        ({"logit_bias": {"42": 3}}, openai.BadRequestError, "logit_bias", "unsupported_parameter"),
        (
            {
                "response_format": {
                    "type": "json_schema",
                    "json_schema": {"name": "x", "schema": {"type": 7}},
                }
            },
            openai.BadRequestError,
            "response_format.json_schema.schema",
            "invalid_json_schema",
        ),
    ]
    for extra, error, param, code in refused:
        with pytest.raises(error) as caught:
            client.chat.completions.create(
                **{"model": "slipway-e2e", "messages": ask, "max_tokens": 4, **extra}
            )
        assert (caught.value.body["param"], caught.value.body["code"]) == (param, code), extra
    for extra in ({"echo": True}, {"best_of": 2}, {"suffix": "!"}, {"logprobs": 2}):
        with pytest.raises(openai.BadRequestError) as caught:
            client.completions.create(model="slipway-e2e", prompt="hi", max_tokens=4, **extra)
        assert caught.value.body["code"] == "unsupported_parameter"
    # defaults are no-ops, as OpenAI's SDKs and LangChain send them
    fine = client.chat.completions.create(
        model="slipway-e2e", messages=ask, max_tokens=2, presence_penalty=0, logprobs=False
    )
    assert fine.choices[0].finish_reason in ("stop", "length")


def test_langchain_structured_output(server: Server) -> None:
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class Verdict(BaseModel):
        spam: bool = Field(description="Whether the e-mail is spam.")

    llm = ChatOpenAI(
        base_url=f"{server.base}/v1",
        api_key=server.keys["admin"],
        model="slipway-e2e",
        temperature=0,
        max_tokens=48,  # the tiny model's context is 256 tokens
    )
    for method in ("function_calling", "json_schema"):
        out = llm.with_structured_output(
            Verdict, method=method, include_raw=True, strict=True
        ).invoke("Is 'Win a cruise' spam?")
        raw = out["raw"]
        assert isinstance(out["parsed"], Verdict), (method, raw)


def test_langchain_chain_end_to_end(server: Server) -> None:
    from langchain_core.output_parsers import StrOutputParser
    from langchain_core.prompts import ChatPromptTemplate
    from langchain_core.runnables import RunnablePassthrough
    from langchain_openai import ChatOpenAI, OpenAIEmbeddings

    from slipway.integrations.langchain import SlipwayEmbeddings, SlipwayRetriever

    retriever = SlipwayRetriever(base_url=server.base, api_key=server.keys["admin"], k=2)
    llm = ChatOpenAI(
        base_url=f"{server.base}/v1",
        api_key=server.keys["admin"],
        model="slipway-e2e",
        temperature=0,
        max_tokens=8,
    )
    prompt = ChatPromptTemplate.from_template("Context:\n{context}\n\nQuestion: {question}")
    seen: list[str] = []

    def context(docs: list[Any]) -> str:
        seen.extend(d.metadata["id"] for d in docs)
        return "\n".join(d.page_content for d in docs)

    chain = (
        {"context": retriever | context, "question": RunnablePassthrough()}
        | prompt
        | llm
        | StrOutputParser()
    )
    answer = chain.invoke(xquad_question(3))
    assert isinstance(answer, str) and len(seen) == 2

    ours = SlipwayEmbeddings(base_url=server.base, api_key=server.keys["embed"])
    theirs = OpenAIEmbeddings(
        base_url=f"{server.base}/v1",
        api_key=server.keys["embed"],
        model="slipway-e2e",
        check_embedding_ctx_length=False,
    )
    a, b = ours.embed_query("a river in Poland"), theirs.embed_query("a river in Poland")
    assert a == pytest.approx(b, abs=1e-5)


def test_authorization_sweep(server: Server) -> None:
    spec = httpx.get(f"{server.base}/openapi.json", timeout=30).json()
    assert set(spec["paths"]) == set(ROUTE_SCOPES), "add new routes to ROUTE_SCOPES"
    roles = ("embed", "generate", "search")
    for path, operations in spec["paths"].items():
        url = server.base + path.replace("{name}", "Warsaw").replace("{model}", "slipway-e2e")
        url = url.replace("{id}", "PLACE:warsaw")
        for method in operations:
            anonymous = httpx.request(method, url, json={}, timeout=60)
            assert anonymous.status_code == 401, (method, path, anonymous.text)
            wrong = httpx.request(
                method,
                url,
                json={},
                timeout=60,
                headers={"X-API-Key": "sk-slipway-000000000000." + "A" * 43},
            )
            assert wrong.status_code == 401, (method, path)
            for role in roles:
                r = httpx.request(method, url, json={}, headers=server.headers(role), timeout=60)
                needed = ROUTE_SCOPES[path]
                if needed and not needed <= {role}:
                    assert r.status_code == 403, (method, path, role, r.text)
                    assert r.json()["error"]["code"] == "insufficient_scope"
                else:
                    assert r.status_code not in (401, 403), (method, path, role, r.text)


def test_rate_limits_answer_429_with_headers_in_valkey(
    server: Server, valkey_server_url: str
) -> None:
    import redis

    responses = [post(server, "/v1/embed", {"texts": ["x"]}, role="limited") for _ in range(5)]
    codes = [r.status_code for r in responses]
    assert codes[:3] == [200, 200, 200] and 429 in codes[3:], codes
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert (
        refused.headers["ratelimit-limit"] == "3" and refused.headers["ratelimit-remaining"] == "0"
    )
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert responses[0].headers["ratelimit-limit"] == "3"
    # 40 tokens a minute: one long request cannot pass, a short one can
    big = post(server, "/v1/embed", {"texts": ["many words in this text"] * 8}, role="tokens")
    assert big.status_code == 429 and "Token rate limit" in big.json()["error"]["message"]
    assert post(server, "/v1/embed", {"texts": ["short"]}, role="tokens").status_code == 200
    assert redis.Redis.from_url(valkey_server_url).keys("slipway:rl:key:*")
    assert metric(server, "slipway_rate_limited_total", bucket="requests") >= 1
    assert metric(server, "slipway_rate_limited_total", bucket="tokens") >= 1


def test_request_ids_versions_deprecation_and_json_logs(server: Server) -> None:
    r = post(server, "/v1/embed", {"texts": ["id"]}, headers={"X-Request-ID": "trace-me-42"})
    assert r.headers["x-request-id"] == "trace-me-42"
    assert r.headers["x-api-version"] == "v1" and r.headers["x-slipway-version"]
    generated = post(server, "/v1/embed", {"texts": ["id"]}).headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    legacy = post(server, "/v1/completions", {"prompt": "hi", "max_tokens": 2})
    info = DEPRECATED["/v1/completions"]
    assert legacy.headers["deprecation"].startswith("@")
    assert legacy.headers["sunset"].startswith("Wed, 30 Jun 2027")
    assert info["successor"] in legacy.headers["link"]
    assert "deprecation" not in r.headers
    spec = httpx.get(f"{server.base}/openapi.json").json()
    assert spec["info"]["version"] == "v1" and spec["info"]["x-slipway-version"]
    assert spec["paths"]["/v1/completions"]["post"]["deprecated"] is True
    records = [
        json.loads(line) for line in server.log.read_text().splitlines() if line.startswith("{")
    ]
    access = [rec for rec in records if rec.get("request_id") == "trace-me-42"]
    assert access and access[-1]["route"] == "/v1/embed" and access[-1]["status"] == 200


def test_metrics_cover_routes_tokens_batches_cache_and_auth(server: Server) -> None:
    httpx.post(f"{server.base}/v1/embed", json={"texts": ["x"]})  # 401
    post(server, "/v1/embed", {"texts": ["metrics"]})
    assert metric(server, "slipway_requests_total", route="/v1/embed", status="200") >= 1
    assert metric(server, "slipway_request_duration_seconds_count", route="/v1/embed") >= 1
    assert metric(server, "slipway_tokens_total", route="/v1/embed", direction="in") > 0
    assert metric(server, "slipway_tokens_total", route="/v1/generate", direction="out") > 0
    assert metric(server, "slipway_embed_batch_size_count") > 0
    assert metric(server, "slipway_cache_requests_total", kind="embed", result="miss") > 0
    assert metric(server, "slipway_auth_failures_total", status="401") >= 1


def test_schemathesis_finds_no_5xx_and_no_schema_violation(server: Server, tmp_path: Path) -> None:
    before = metric(server, "slipway_requests_total")
    checks = (
        "not_a_server_error,status_code_conformance,content_type_conformance,"
        "response_headers_conformance,response_schema_conformance,negative_data_rejection"
    )
    run = subprocess.run(
        [
            str(Path(sys.executable).parent / "st"),
            "--config-file",
            str(Path(__file__).with_name("schemathesis.toml")),
            "run",
            f"{server.base}/openapi.json",
            "-H",
            f"Authorization: Bearer {server.keys['fuzz']}",
            "--checks",
            checks,
            "--max-examples",
            "60",
            "--seed",
            "1",
            "--generation-database",
            "none",
            "--report",
            "junit",
            "--report-dir",
            str(tmp_path),
            "--request-timeout",
            "120",
        ],
        check=False,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    made = metric(server, "slipway_requests_total") - before
    failures = [
        line[:400]
        for line in run.stdout.splitlines()
        if line.startswith(("- ST", "    Invalid component", "[", "    Expected"))
    ]
    assert run.returncode == 0, "\n".join(failures[:60]) + run.stdout[-3000:] + run.stderr[-2000:]
    assert made >= 1000, f"only {made} requests: {run.stdout[-2000:]}"


def test_answers_name_their_registered_prompt_and_take_feedback(server: Server) -> None:
    listed = httpx.get(f"{server.base}/v1/models", headers=server.headers(), timeout=30).json()
    assert listed["prompts"]["answer"] == [
        {"name": "slipway-answer", "version": "1", "weight": 1.0}
    ], listed["prompts"]
    question = xquad_question(3)
    r = post(
        server,
        "/v1/answer",
        {"question": question, "top_k": 2, "max_new_tokens": 8, "min_relevance": -1.0},
    )
    assert r.status_code == 200, r.text
    assert r.json()["prompt_version"] == "slipway-answer/1"
    request_id = r.headers["x-request-id"]
    rating = {
        "request_id": request_id,
        "rating": "negative",
        "comment": "cited the wrong passage",
        "expected_chunk_ids": ["some-doc#0"],
    }
    before = metric(
        server, "slipway_feedback_total", rating="negative", prompt_version="slipway-answer/1"
    )
    # another key cannot rate this answer (404, as if it did not exist); a key without the
    # feedback scope is refused; an unknown id and a bad rating name the field
    assert post(server, "/v1/feedback", rating, role="fuzz").status_code == 404
    assert post(server, "/v1/feedback", rating, role="generate").status_code == 403
    missing = post(server, "/v1/feedback", {**rating, "request_id": "nope"})
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "answer_not_found"
    bad = post(server, "/v1/feedback", {**rating, "rating": 5})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "rating", bad.text
    stored = post(server, "/v1/feedback", rating)
    assert stored.status_code == 200, stored.text
    assert stored.json()["prompt_version"] == "slipway-answer/1"
    assert len(stored.json()["assessments"]) == 2
    after = metric(
        server, "slipway_feedback_total", rating="negative", prompt_version="slipway-answer/1"
    )
    assert after == before + 1
    # read back the way a user exports it for evaluation and retraining
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "slipway.cli",
            "feedback",
            "export",
            "--tracking-uri",
            server.tracking_uri,
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
        check=True,
    )
    rows = [json.loads(line) for line in out.stdout.splitlines()]
    row = next(r for r in rows if r["request_id"] == request_id)
    assert row["question"] == question and row["rating"] == "negative"
    assert row["comment"] == "cited the wrong passage"
    assert row["expected_chunk_ids"] == ["some-doc#0"]
    assert row["prompt_version"] == "slipway-answer/1"
