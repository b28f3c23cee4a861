"""Tier 3: the nginx gateway (``deploy/nginx/slipway.conf.template``) on the real nginx in front
of the real service: routing, request ids, streaming, its own per-IP rate limit, body size, and
the service's authentication through it."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import ROOT, Server, free_port, stop_group
from tests.servers import wait_until

TEMPLATE = ROOT / "deploy" / "nginx" / "slipway.conf.template"
NGINX = Path("/usr/sbin/nginx")
BURST = 30  # requests from 127.0.0.1 this module may make through the gateway's /v1 (1r/m after)
OTHER_CLIENT = "127.0.0.2"  # a second client address on the loopback: its own rate-limit bucket


@dataclass(frozen=True)
class Gateway:
    """nginx in front of the service: its URL and its (JSON lines) access log."""

    base: str
    access_log: Path


def render(template: str, values: dict[str, str]) -> str:
    """``${VAR}`` replaced as the nginx image's envsubst does; every variable must be given."""
    used = set(re.findall(r"\$\{(\w+)\}", template))
    missing = used - values.keys()
    assert not missing, f"the template uses variables the test does not set: {sorted(missing)}"
    return re.sub(r"\$\{(\w+)\}", lambda m: values[m.group(1)], template)


def main_config(workdir: Path, include: Path) -> str:
    """A minimal nginx.conf that keeps every file under ``workdir`` and includes ``include``
    in ``http {}`` (as the nginx image includes conf.d)."""
    user = "user root;\n" if os.geteuid() == 0 else ""  # workers may write to the temp dirs
    temp = "".join(
        f"    {kind}_temp_path {workdir / kind};\n"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    return (
        f"{user}worker_processes 1;\ndaemon off;\npid {workdir / 'nginx.pid'};\n"
        f"error_log {workdir / 'error.log'} info;\nevents {{ worker_connections 256; }}\n"
        f"http {{\n{temp}    include {include};\n}}\n"
    )


def accepting(port: int) -> bool:
    """Whether something accepts TCP connections on 127.0.0.1:``port``."""
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="session")
def nginx() -> Path:
    """The nginx binary (Debian's package; scripts/setup.sh installs it)."""
    if not NGINX.is_file():
        pytest.fail(
            f"{NGINX} is missing: install Debian's nginx (`apt-get install -y nginx`, "
            "as scripts/setup.sh does)"
        )
    return NGINX


@pytest.fixture(scope="module")
def gateway(
    nginx: Path, server: Server, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Gateway]:
    """The rendered template on the real nginx, on a free loopback port, before ``server``;
    a rate of 1 request a minute after a burst of ``BURST``."""
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    conf = workdir / "slipway.conf"
    conf.write_text(
        render(
            TEMPLATE.read_text(),
            {
                "SLIPWAY_UPSTREAM": server.base.removeprefix("http://"),
                "SLIPWAY_GATEWAY_LISTEN": f"127.0.0.1:{port}",
                "SLIPWAY_GATEWAY_RATE": "1r/m",
                "SLIPWAY_GATEWAY_BURST": str(BURST),
            },
        )
    )
    main = workdir / "nginx.conf"
    main.write_text(main_config(workdir, conf))
    args = [str(nginx), "-p", str(workdir), "-c", str(main), "-e", str(workdir / "error.log")]
    check = subprocess.run([*args, "-t"], check=False, capture_output=True, text=True)
    assert check.returncode == 0, f"nginx rejects the rendered template:\n{check.stderr}"
    access_log = workdir / "access.log"
    with open(access_log, "w") as out:  # the template logs to /dev/stdout
        proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_until(lambda: accepting(port) or proc.poll() is not None, "nginx to listen")
        if proc.poll() is not None:
            pytest.fail(
                f"nginx exited with {proc.returncode}: "
                f"{(workdir / 'error.log').read_text()[-3000:]}"
            )
        yield Gateway(f"http://127.0.0.1:{port}", access_log)
    finally:
        stop_group(proc)


def appears(path: Path, text: str) -> Callable[[], bool]:
    """A check that ``text`` is in the file at ``path``."""
    return lambda: text in path.read_text()


def logged(log: Path, request_id: str) -> list[dict[str, Any]]:
    """The JSON access lines of a log that carry ``request_id``."""
    lines = [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("request_id") == request_id]


def sse_pieces(response: httpx.Response) -> list[list[str]]:
    """The ``data:`` payloads of a server-sent-event stream, grouped by the network read that
    delivered them."""
    pieces, buffer = [], b""
    for raw in response.iter_raw():
        buffer += raw
        *events, buffer = buffer.split(b"\n\n")
        pieces.append([e.decode()[len("data: ") :] for e in events if e.startswith(b"data: ")])
    return pieces


def test_routes_reach_the_service_with_the_same_answers(gateway: Gateway, server: Server) -> None:
    body = {"texts": ["A gateway in front of the service."]}
    via = httpx.post(
        f"{gateway.base}/v1/embed", json=body, headers=server.headers("embed"), timeout=60
    )
    direct = httpx.post(
        f"{server.base}/v1/embed", json=body, headers=server.headers("embed"), timeout=60
    )
    assert via.status_code == direct.status_code == 200, via.text
    assert via.json()["embeddings"] == direct.json()["embeddings"]
    models = httpx.get(f"{gateway.base}/v1/models", headers=server.headers("search"), timeout=30)
    assert (
        models.json()
        == httpx.get(
            f"{server.base}/v1/models", headers=server.headers("search"), timeout=30
        ).json()
    )
    for path in ("/livez", "/readyz", "/metrics", "/docs", "/openapi.json"):
        assert httpx.get(f"{gateway.base}{path}", timeout=30).status_code == 200, path
    assert "slipway_requests_total" in httpx.get(f"{gateway.base}/metrics", timeout=30).text


def test_unknown_paths_are_a_json_404_of_the_gateway(gateway: Gateway, server: Server) -> None:
    for path in ("/", "/admin", "/v2/embed", "/livez/extra", "/metrics.json"):
        r = httpx.get(f"{gateway.base}{path}", timeout=30)
        assert r.status_code == 404 and r.headers["content-type"] == "application/json", path
        assert r.json()["error"]["code"] == "not_found", path
        assert "x-slipway-version" not in r.headers, path  # answered by nginx, not the service
        assert r.headers["x-request-id"]
    # under /v1 the service itself answers, in the same shape: to a caller with a key, 404;
    # without one, 401 (credentials are checked before routing: no route is revealed)
    r = httpx.get(f"{gateway.base}/v1/no-such-route", timeout=30, headers=server.headers())
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert r.headers["x-slipway-version"]
    anonymous = httpx.get(f"{gateway.base}/v1/no-such-route", timeout=30)
    assert anonymous.status_code == 401 and anonymous.headers["x-slipway-version"]


def test_request_ids_are_passed_on_or_generated(gateway: Gateway, server: Server) -> None:
    headers = server.headers("search")
    given = httpx.get(
        f"{gateway.base}/v1/models",
        timeout=30,
        headers={**headers, "X-Request-ID": "gateway-test.given-1"},
    )
    assert given.headers["x-request-id"] == "gateway-test.given-1"
    made = httpx.get(f"{gateway.base}/v1/models", headers=headers, timeout=30)
    bad = httpx.get(
        f"{gateway.base}/v1/models",
        timeout=30,
        headers={**headers, "X-Request-ID": "not a valid id"},
    )
    for response in (made, bad):
        request_id = response.headers["x-request-id"]
        assert re.fullmatch(r"[0-9a-f]{32}", request_id)
        # the id nginx logged is the one the service echoed: the gateway made it and sent it on
        wait_until(appears(gateway.access_log, f'"request_id":"{request_id}"'), "nginx's log")
        wait_until(appears(server.log, request_id), "the service's log")
    assert made.headers["x-request-id"] != bad.headers["x-request-id"]
    wait_until(appears(gateway.access_log, '"request_id":"gateway-test.given-1"'), "nginx's log")
    line = logged(gateway.access_log, "gateway-test.given-1")
    assert line and line[0]["uri"] == "/v1/models" and line[0]["status"] == 200


def test_server_sent_events_stream_through_unbuffered(gateway: Gateway, server: Server) -> None:
    body = {
        "prompt": "tell me about rivers",
        "max_new_tokens": 32,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream(
        "POST",
        f"{gateway.base}/v1/generate",
        json=body,
        timeout=60,
        headers=server.headers("generate"),
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-accel-buffering"] == "no"
        pieces = sse_pieces(r)
    events = [e for piece in pieces for e in piece]
    assert events[-1] == "[DONE]" and len(events) >= 3
    first = next(i for i, piece in enumerate(pieces) if piece)
    assert "[DONE]" not in pieces[first], "the whole stream arrived at once"
    with httpx.stream(
        "POST",
        f"{server.base}/v1/generate",
        json=body,
        timeout=60,
        headers=server.headers("generate"),
    ) as r:
        direct = [e for piece in sse_pieces(r) for e in piece]
    text = ["".join(json.loads(e).get("text", "") for e in run[:-1]) for run in (events, direct)]
    assert text[0] == text[1]


def test_the_service_still_authenticates(gateway: Gateway, server: Server) -> None:
    body = {"query": "When was the University of Warsaw founded?", "top_k": 2}
    missing = httpx.post(f"{gateway.base}/v1/search", json=body, timeout=30)
    assert missing.status_code == 401 and missing.json()["error"]["code"] == "invalid_api_key"
    scope = httpx.post(
        f"{gateway.base}/v1/search", json=body, headers=server.headers("embed"), timeout=30
    )
    assert scope.status_code == 403 and scope.json()["error"]["code"] == "insufficient_scope"
    api_key = httpx.post(
        f"{gateway.base}/v1/search",
        json=body,
        timeout=60,
        headers={"X-API-Key": server.keys["search"]},
    )
    assert api_key.status_code == 200 and api_key.json()["results"]


def test_bodies_over_one_mebibyte_are_refused_by_the_gateway(
    gateway: Gateway, server: Server
) -> None:
    r = httpx.post(
        f"{gateway.base}/v1/embed",
        content=b'{"texts": ["' + b"a" * (1 << 20) + b'"]}',
        headers={**server.headers("embed"), "Content-Type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"
    assert "x-slipway-version" not in r.headers


def test_the_gateway_limits_each_client_address(gateway: Gateway, server: Server) -> None:
    client = httpx.Client(transport=httpx.HTTPTransport(local_address=OTHER_CLIENT), timeout=30)
    with client:
        statuses = []
        for _ in range(BURST + 10):
            r = client.get(f"{gateway.base}/v1/models", headers=server.headers("search"))
            statuses.append(r.status_code)
            if r.status_code == 429:
                break
    assert statuses[0] == 200 and statuses[-1] == 429, statuses
    assert r.headers["content-type"] == "application/json" and r.headers["retry-after"] == "1"
    assert r.json()["error"]["code"] == "gateway_rate_limited" and r.headers["x-request-id"]
    assert "ratelimit-limit" not in r.headers  # nginx's refusal, not the key's budget
    # another address keeps its own budget
    assert (
        httpx.get(
            f"{gateway.base}/v1/models", headers=server.headers("search"), timeout=30
        ).status_code
        == 200
    )
