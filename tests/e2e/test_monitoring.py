"""Tier 3: the Grafana dashboard and the Prometheus rules query only what the running service
really exports: every metric named in a panel, an alert or a recording rule is on the service's
``/metrics`` after a few real requests, with the labels the queries use; and a real Prometheus
scraping the service evaluates every rule and answers every panel's query with data."""

from __future__ import annotations

import json
import os
import re
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from slipway.api.keys import FileKeyStore, Scope, create_key
from tests.e2e.conftest import ROOT, Server, post
from tests.servers import PROMETHEUS_RULES, prometheus_rules, running_prometheus, wait_until

DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "slipway.json"
PROMETHEUS_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
TARGET_LABELS = {"job", "instance"}  # added by Prometheus to every scraped series
KEYWORDS = {
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "and",
    "or",
    "unless",
    "offset",
    "inf",
    "nan",
}
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_SELECTOR = re.compile(r"(?<![\w:])([a-zA-Z_:][\w:]*)\s*\{([^}]*)\}")
_NAME = re.compile(r"(?<![\w:.$])([a-zA-Z_:][\w:]*)(?![\w:])(?!\s*\()")
_MATCHER_LABEL = re.compile(r"([a-zA-Z_]\w*)\s*(?:=~|!~|!=|=)")


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not its functions, keywords or labels)."""
    bare = _STRING.sub('""', expr)
    bare = _GROUPING.sub(" ", bare)
    bare = re.sub(r"\{[^}]*\}|\[[^\]]*\]|\$\{?\w+\}?", " ", bare)
    return {name for name in _NAME.findall(bare) if name.lower() not in KEYWORDS}


def matcher_labels(expr: str) -> dict[str, set[str]]:
    """Label names matched in each ``name{...}`` selector of an expression."""
    out: dict[str, set[str]] = {}
    for name, matchers in _SELECTOR.findall(_STRING.sub('""', expr)):
        out.setdefault(name, set()).update(_MATCHER_LABEL.findall(matchers))
    return out


def grouping_labels(expr: str) -> set[str]:
    """Label names in the ``by``/``without``/``on``/``ignoring`` clauses of an expression."""
    return {
        label.strip()
        for clause in _GROUPING.findall(_STRING.sub('""', expr))
        for label in clause.split(",")
        if label.strip()
    }


def dashboard() -> dict[str, Any]:
    """The Grafana dashboard."""
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """The dashboard's panels, rows left out (those nested in collapsed rows included)."""
    out: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        out += panel.get("panels", []) if panel["type"] == "row" else [panel]
    return out


def queries() -> dict[str, str]:
    """Every PromQL expression of the dashboard and the rules, by where it is."""
    out = {f"panel {p['title']!r} {t['refId']}": t["expr"] for p in panels() for t in p["targets"]}
    out |= {f"rule {r.get('record') or r.get('alert')}": r["expr"] for r in prometheus_rules()}
    return out


def scrape(server: Server) -> dict[str, set[str]]:
    """The service's exported series names (families and samples) with their label names."""
    text = httpx.get(f"{server.base}/metrics", timeout=30).text
    out: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        out.setdefault(family.name, set())
        for sample in family.samples:
            out.setdefault(sample.name, set()).update(sample.labels)
            out[family.name].update(k for k in sample.labels if k != "le")
    return out


@pytest.fixture(scope="module")
def exported(server: Server) -> Iterator[dict[str, set[str]]]:
    """What ``/metrics`` exports after an embedding, a search twice (a cache hit), a
    generation, an answer rated twice, a routed embedding, a 401 and a 429."""
    assert post(server, "/v1/embed", {"texts": ["monitoring"]}, "embed").status_code == 200
    search = {"query": "What do the monitoring tests search for?", "top_k": 2}
    assert post(server, "/v1/search", search, "search").status_code == 200
    assert post(server, "/v1/search", search, "search").status_code == 200
    assert (
        post(
            server,
            "/v1/generate",
            {"prompt": "hi", "max_new_tokens": 4, "temperature": 0},
            "generate",
        ).status_code
        == 200
    )
    # an answer rated twice: the answers and prompt A/B panels have data whatever ran before
    answer = post(
        server,
        "/v1/answer",
        {"question": search["query"], "top_k": 1, "max_new_tokens": 4, "min_relevance": -1.0},
    )
    assert answer.status_code == 200, answer.text
    for rating in ("positive", "negative"):
        rated = {"request_id": answer.headers["x-request-id"], "rating": rating}
        assert post(server, "/v1/feedback", rated).status_code == 200
    # a routed (OpenAI) call: the usage panels have data whatever ran before
    routed = post(server, "/v1/embeddings", {"model": "slipway-e2e", "input": ["usage"]}, "embed")
    assert routed.status_code == 200, routed.text
    assert post(server, "/v1/embed", {"texts": ["no key"]}, None).status_code == 401
    # a key of its own at 3 requests a minute: the shared "limited" key's budget belongs to
    # test_api_server.py, whichever module runs first
    limited, _ = create_key(
        FileKeyStore(Path(os.environ["SLIPWAY_HOME"]) / "api_keys.json"),
        "monitoring-limited",
        [Scope.EMBED],
        requests_per_minute=3,
    )
    statuses = [
        post(
            server,
            "/v1/embed",
            {"texts": ["limited"]},
            None,
            headers={"Authorization": f"Bearer {limited}"},
        ).status_code
        for _ in range(6)
    ]
    assert 429 in statuses
    wanted = {
        "slipway_rate_limited_total",
        "slipway_auth_failures_total",
        "slipway_cache_requests_total",
        "slipway_tokens_total",
        "slipway_ready",
        "slipway_index_published_timestamp_seconds",
        "slipway_index_version_info",
        "slipway_usage_tokens_total",  # recorded in a thread of their own, after the reply
        "slipway_usage_cost_total",
    }
    wait_until(lambda: wanted <= scrape(server).keys(), "the requests' metrics")
    yield scrape(server)


def recorded() -> set[str]:
    """Series names the recording rules define."""
    return {r["record"] for r in prometheus_rules() if "record" in r}


def test_every_queried_metric_is_exported(exported: dict[str, set[str]]) -> None:
    missing = {
        where: sorted(metric_names(expr) - exported.keys() - recorded())
        for where, expr in queries().items()
    }
    missing = {where: names for where, names in missing.items() if names}
    assert not missing, f"queried but not exported: {missing}"
    assert all(metric_names(expr) for expr in queries().values())


def test_queried_labels_exist_on_the_metrics(exported: dict[str, set[str]]) -> None:
    for where, expr in queries().items():
        names = metric_names(expr)
        if names & recorded():
            continue  # a recorded series has the labels its rule keeps
        labels = set().union(*(exported.get(n, set()) for n in names)) | TARGET_LABELS | {"le"}
        for name, matched in matcher_labels(expr).items():
            assert matched <= exported.get(name, set()) | TARGET_LABELS, (where, name, matched)
        assert grouping_labels(expr) <= labels, (where, grouping_labels(expr) - labels)


def test_every_slipway_metric_has_a_panel(exported: dict[str, set[str]]) -> None:
    shown = set().union(*(metric_names(t["expr"]) for p in panels() for t in p["targets"]))
    base = {re.sub(r"_(bucket|sum|count|total|created)$", "", name) for name in shown}
    slipway = {name for name in exported if name.startswith("slipway_")}
    assert {re.sub(r"_(bucket|sum|count|total|created)$", "", n) for n in slipway} <= base


def test_the_job_variable_reads_an_exported_metric(exported: dict[str, set[str]]) -> None:
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    query = variables["job"]["query"]
    found = re.fullmatch(r"label_values\((\w+),\s*(\w+)\)", query["query"])
    assert found and found.group(1) in exported and found.group(2) in TARGET_LABELS


def test_dashboard_structure() -> None:
    board = dashboard()
    assert board["schemaVersion"] >= 39 and board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [p["id"] for p in board["panels"]] + [
        c["id"] for p in board["panels"] for c in p.get("panels", [])
    ]
    assert len(ids) == len(set(ids))
    for panel in panels():
        source = {"type": "prometheus", "uid": "${datasource}"}
        assert panel["datasource"] == source, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(t["expr"].strip() and t["datasource"] == source for t in panel["targets"])
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["h"] > 0, panel["title"]
    titles = " ".join(p["title"].lower() for p in panels())
    for topic in (
        "request rate",
        "latency",
        "error rate",
        "tokens",
        "batch size",
        "cache hit",
        "rate-limit",
        "auth",
        "overload",
        "readiness",
        "index age",
    ):
        assert topic in titles, topic


def test_metric_name_extraction() -> None:
    expr = (
        "histogram_quantile(0.99, sum by (job, route, le) (rate(slipway_x_bucket"
        '{route!~"/v1/(a|b)", job=~"$job"}[$__rate_interval]))) > 1 and on (job) '
        "job:slipway_y:rate5m offset 1h > 3 * 86400 or vector(0) - time()"
    )
    assert metric_names(expr) == {"slipway_x_bucket", "job:slipway_y:rate5m"}
    assert matcher_labels(expr) == {"slipway_x_bucket": {"route", "job"}}
    assert grouping_labels(expr) == {"job", "route", "le"}


@pytest.fixture(scope="module")
def prometheus(
    exported: dict[str, set[str]], server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """A real Prometheus (Debian's package) scraping the service every second with the
    ``slipway`` job of deploy/prometheus/prometheus.yml and evaluating the rules; its URL."""
    deployed = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
    job = next(j for j in deployed["scrape_configs"] if j["job_name"] == "slipway")
    job["static_configs"] = [{"targets": [server.base.removeprefix("http://")]}]
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(path) for path in PROMETHEUS_RULES],
        "scrape_configs": [job],
    }
    with running_prometheus(config, tmp_path_factory.mktemp("prometheus")) as base:
        yield base


def query(base: str, expr: str) -> list[dict[str, Any]] | None:
    """An instant query's result; None while Prometheus is not up yet."""
    try:
        answer = httpx.get(f"{base}/api/v1/query", params={"query": expr}, timeout=10).json()
    except httpx.HTTPError:
        return None
    assert answer["status"] == "success", (expr, answer)
    return list(answer["data"]["result"])


def as_promql(expr: str) -> str:
    """A panel's query with Grafana's variables filled in (all jobs, a 1 minute window)."""
    return expr.replace("$__rate_interval", "1m").replace("$job", ".*")


def eventually(problems: Callable[[], list[str]], seconds: float = 60) -> list[str]:
    """``problems()`` once it finds none, else its last findings after ``seconds``."""
    deadline = time.monotonic() + seconds
    found = problems()
    while found and time.monotonic() < deadline:
        time.sleep(0.5)
        found = problems()
    return found


def test_prometheus_evaluates_every_rule_on_the_service(prometheus: str) -> None:
    assert not eventually(lambda: [] if query(prometheus, 'up{job="slipway"} == 1') else ["down"])
    missing = eventually(
        lambda: [name for name in sorted(recorded()) if not query(prometheus, name)]
    )
    assert not missing, f"recording rules without a series: {missing}"
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    evaluated = [r for g in groups for r in g["rules"]]
    assert len(evaluated) == len(prometheus_rules())
    failing = [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"]
    assert not failing
    ready = query(prometheus, 'slipway_ready{job="slipway"}')
    assert ready and ready[0]["value"][1] == "1"


def test_every_panel_query_answers_with_data(prometheus: str) -> None:
    targets = {
        f"{p['title']} {t['refId']}": as_promql(t["expr"]) for p in panels() for t in p["targets"]
    }
    assert not eventually(lambda: [] if query(prometheus, 'up{job="slipway"} == 1') else ["down"])
    empty = eventually(
        lambda: [where for where, expr in targets.items() if not query(prometheus, expr)]
    )
    assert not empty, f"panels without data: {empty}"
    values = httpx.get(
        f"{prometheus}/api/v1/label/job/values", params={"match[]": "slipway_ready"}, timeout=10
    ).json()["data"]
    assert values == ["slipway"]  # what the dashboard's job variable offers
