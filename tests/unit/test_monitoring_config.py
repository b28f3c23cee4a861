"""Tier 1: the monitoring set-up under ``deploy/prometheus``: the configuration and the rules
checked by ``promtool``, the rules' unit tests run by it, the Kubernetes pod job's relabeling
applied by a real Prometheus; and the gauges of readiness and of the served index."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from prometheus_client import REGISTRY

from slipway.api import metrics
from slipway.retrieval.index import MANIFEST, POINTER, IndexDir, Pointer
from tests.servers import PROMETHEUS_RULES, prometheus_rules, prometheus_tool, running_prometheus

ROOT = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = ROOT / "deploy" / "prometheus"
CONFIG = PROMETHEUS_DIR / "prometheus.yml"
RULE_TESTS = sorted((PROMETHEUS_DIR / "tests").glob("*.test.yml"))
NO_KUBERNETES_SD = "field kubernetes_sd_configs not found"  # Debian's build lacks it


def run(*args: str) -> subprocess.CompletedProcess[str]:
    """A command's result, its output as text."""
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=120)


def file_discovery(pods: Path) -> dict[str, Any]:
    """The configuration with each ``kubernetes_sd_configs`` replaced by a file discovery of
    ``pods`` (the relabeling unchanged) and absolute rule paths, for Prometheus builds without
    Kubernetes discovery (Debian's)."""
    config = yaml.safe_load(CONFIG.read_text())
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            # re-read every second too: a write racing Prometheus's start-up is not lost
            job["file_sd_configs"] = [{"files": [str(pods)], "refresh_interval": "1s"}]
    config["rule_files"] = [str(PROMETHEUS_DIR / pattern) for pattern in config["rule_files"]]
    return config


def test_prometheus_config_is_valid_and_loads_the_rules(tmp_path: Path) -> None:
    promtool = prometheus_tool("promtool")
    checked = run(promtool, "check", "config", str(CONFIG))
    if checked.returncode != 0 and NO_KUBERNETES_SD in checked.stdout + checked.stderr:
        k8s = [
            job["kubernetes_sd_configs"]
            for job in yaml.safe_load(CONFIG.read_text())["scrape_configs"]
            if "kubernetes_sd_configs" in job
        ]
        assert k8s == [[{"role": "pod"}]]
        copy = tmp_path / "prometheus.yml"
        copy.write_text(yaml.safe_dump(file_discovery(tmp_path / "pods.json")))
        checked = run(promtool, "check", "config", str(copy))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    found = re.search(r"SUCCESS: (\d+) rule files found", checked.stdout)
    assert found and int(found.group(1)) == len(PROMETHEUS_RULES) >= 1, checked.stdout


def test_rules_are_valid() -> None:
    checked = run(prometheus_tool("promtool"), "check", "rules", *map(str, PROMETHEUS_RULES))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    counted = sum(int(n) for n in re.findall(r"SUCCESS: (\d+) rules found", checked.stdout))
    assert counted == len(prometheus_rules()) and counted > 0


def test_rule_unit_tests_pass() -> None:
    assert RULE_TESTS
    tested = run(prometheus_tool("promtool"), "test", "rules", *map(str, RULE_TESTS))
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "SUCCESS" in tested.stdout


def test_every_alert_is_tested_firing_and_silent() -> None:
    cases = [
        case
        for path in RULE_TESTS
        for test in yaml.safe_load(path.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    ]
    for alert in [r["alert"] for r in prometheus_rules() if "alert" in r]:
        mine = [case for case in cases if case["alertname"] == alert]
        assert any(case.get("exp_alerts") for case in mine), f"{alert} is never expected to fire"
        assert any(not case.get("exp_alerts") for case in mine), f"{alert} is never expected silent"


@pytest.fixture
def prometheus(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real Prometheus on the configuration (pods discovered from a file), its URL and the
    file it reads the pods from."""
    pods = tmp_path / "pods.json"
    pods.write_text("[]")
    with running_prometheus(file_discovery(pods), tmp_path) as base:
        yield base, pods


def pod(address: str, phase: str = "Running", **annotations: str) -> dict[str, Any]:
    """A file-discovery target group with the labels Kubernetes pod discovery gives a pod."""
    labels = {
        "__meta_kubernetes_pod_phase": phase,
        "__meta_kubernetes_namespace": "slipway",
        "__meta_kubernetes_pod_name": f"pod-{address.replace('.', '-').replace(':', '-')}",
        "__meta_kubernetes_pod_label_app": "slipway",
    }
    labels |= {
        f"__meta_kubernetes_pod_annotation_prometheus_io_{k}": v for k, v in annotations.items()
    }
    return {"targets": [address], "labels": labels}


def pod_targets(base: str, count: int) -> dict[str, Any]:
    """The targets API's answer once ``count`` pods were discovered."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            data = httpx.get(f"{base}/api/v1/targets", params={"state": "any"}, timeout=5).json()
        except httpx.HTTPError:
            data = None
        if data is not None:
            found = [
                t for t in data["data"]["activeTargets"] if t["scrapePool"] == "kubernetes-pods"
            ]
            dropped = [
                t
                for t in data["data"]["droppedTargets"]
                if t["discoveredLabels"].get("job") == "kubernetes-pods"
            ]
            if len(found) + len(dropped) == count:
                return data["data"]
        time.sleep(0.5)
    pytest.fail(f"Prometheus did not discover {count} pods")


def test_kubernetes_pods_are_scraped_as_annotated(prometheus: tuple[str, Path]) -> None:
    base, pods = prometheus
    pods.write_text(
        json.dumps(
            [
                pod("127.0.0.11:8080", scrape="true", port="3000", path="/metrics"),
                pod("127.0.0.12:3000", scrape="true", path="/custom/metrics"),
                pod("127.0.0.13:3000"),  # not annotated
                pod("127.0.0.14:3000", scrape="false"),
                pod("127.0.0.15:3000", phase="Pending", scrape="true"),
                pod("127.0.0.16:3000", phase="Succeeded", scrape="true"),
            ]
        )
    )
    targets = pod_targets(base, 6)
    active = {
        t["scrapeUrl"]: t["labels"]
        for t in targets["activeTargets"]
        if t["scrapePool"] == "kubernetes-pods"
    }
    assert set(active) == {
        "http://127.0.0.11:3000/metrics",
        "http://127.0.0.12:3000/custom/metrics",
    }
    labels = active["http://127.0.0.11:3000/metrics"]
    assert labels == {
        "job": "kubernetes-pods",
        "instance": "127.0.0.11:3000",
        "app": "slipway",
        "namespace": "slipway",
        "pod": "pod-127-0-0-11-8080",
    }
    rule_groups = httpx.get(f"{base}/api/v1/rules", timeout=5).json()["data"]["groups"]
    assert sum(len(g["rules"]) for g in rule_groups) == len(prometheus_rules())


def two_versions(root: Path, name: str) -> IndexDir:
    """An index with versions v000001 and v000002 whose manifests were written at unix times
    1_700_000_000 and 1_700_000_100."""
    directory = IndexDir(root, name)
    for version, mtime in (("v000001", 1_700_000_000), ("v000002", 1_700_000_100)):
        manifest = directory.version_dir(version) / MANIFEST
        manifest.parent.mkdir(parents=True)
        manifest.write_text("{}")
        os.utime(manifest, (mtime, mtime))
    return directory


def test_published_at_is_the_pointer_time_else_the_manifest_time(tmp_path: Path) -> None:
    directory = two_versions(tmp_path, "docs")
    assert metrics.published_at(directory, "v000001") == 1_700_000_000  # nothing published
    (directory.path / POINTER).write_text(
        Pointer(
            version="v000001",
            history=["v000001"],
            updated="2026-01-02T03:04:05+00:00",
        ).model_dump_json()
    )
    published = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC).timestamp()
    assert metrics.published_at(directory, "v000001") == published
    assert metrics.published_at(directory, "v000002") == 1_700_000_100


def test_readiness_and_served_index_gauges(tmp_path: Path) -> None:
    directory = two_versions(tmp_path, "gauged")
    metrics.readiness(True)
    assert REGISTRY.get_sample_value("slipway_ready") == 1
    metrics.readiness(False)
    assert REGISTRY.get_sample_value("slipway_ready") == 0
    metrics.index_served(directory, "v000001")
    info = {"index": "gauged"}
    assert (
        REGISTRY.get_sample_value("slipway_index_version_info", {**info, "version": "v000001"}) == 1
    )
    metrics.index_served(directory, "v000002", previous="v000001")
    assert (
        REGISTRY.get_sample_value("slipway_index_version_info", {**info, "version": "v000001"}) == 0
    )
    assert (
        REGISTRY.get_sample_value("slipway_index_version_info", {**info, "version": "v000002"}) == 1
    )
    assert (
        REGISTRY.get_sample_value("slipway_index_published_timestamp_seconds", info)
        == 1_700_000_100
    )
