"""The stack definitions and run configurations, checked with ZenML's own API (component
schemas, stack validation, pipeline compilation) in throw-away stores: ``python -m
stacks.check``, as a user runs it, and ``python -m stacks.register``'s refusals."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from stacks.register import expand, load_spec, variables

ROOT = Path(__file__).resolve().parents[2]
SCHEDULES = sorted(str(p.relative_to(ROOT)) for p in (ROOT / "configs").glob("*_schedule.yaml"))
K8S_ENV = {
    "SLIPWAY_K8S_CONTEXT": "slipway-prod",
    "SLIPWAY_ARTIFACT_STORE": "s3://slipway/zenml",
    "SLIPWAY_REGISTRY": "registry.example.com/slipway",
    "SLIPWAY_MLFLOW_TRACKING_URI": "https://mlflow.example.com",
}
KUBECONFIG = """apiVersion: v1
kind: Config
clusters: [{name: prod, cluster: {server: "https://127.0.0.1:6443"}}]
users: [{name: ci, user: {token: not-a-token}}]
contexts: [{name: slipway-prod, context: {cluster: prod, user: ci, namespace: slipway}}]
current-context: slipway-prod
"""


def run_module(module: str, *args: str, tmp: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m module args`` in the project, with its own ZenML store under ``tmp``."""
    base = {k: v for k, v in os.environ.items() if not k.startswith(("ZENML_", "SLIPWAY_"))}
    base.update(
        {
            "ZENML_CONFIG_PATH": str(tmp / "zenml"),
            "ZENML_REPOSITORY_PATH": str(tmp),
            "ZENML_ANALYTICS_OPT_IN": "false",
            "KUBECONFIG": str(tmp / "kubeconfig"),
        }
    )
    (tmp / "kubeconfig").write_text(KUBECONFIG)
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        env={**base, **env},
        check=False,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_variables_expand_with_defaults_and_empty_settings_left_out() -> None:
    spec = {"a": "${X}", "b": {"endpoint": "${Y:-}", "keep": {}}, "c": ["${Z:-z}-1"]}
    assert variables(spec) == {"X"}
    assert expand(spec, {"X": "x"}) == {"a": "x", "b": {"keep": {}}, "c": ["z-1"]}


def test_load_spec_names_every_missing_variable() -> None:
    with pytest.raises(
        SystemExit,
        match="SLIPWAY_ARTIFACT_STORE, SLIPWAY_K8S_CONTEXT, "
        "SLIPWAY_MLFLOW_TRACKING_URI, SLIPWAY_REGISTRY",
    ):
        load_spec(ROOT / "stacks" / "kubernetes.yaml", env={})
    spec = load_spec(ROOT / "stacks" / "kubernetes.yaml", env=K8S_ENV)
    orchestrator = spec["components"]["orchestrator"][0]["configuration"]
    assert orchestrator["kubernetes_namespace"] == "slipway"  # the default
    assert "client_kwargs" not in spec["components"]["artifact_store"][0]["configuration"]


def test_kubernetes_stack_and_schedules_pass_zenml_validation(tmp_path: Path) -> None:
    assert len(SCHEDULES) == 4, SCHEDULES
    done = run_module("stacks.check", "stacks/kubernetes.yaml", *SCHEDULES, tmp=tmp_path, **K8S_ENV)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert "ZenML stack validation passed" in done.stdout
    for pipeline, cron in (
        ("model_build", "'0 2 * * 0'"),
        ("index_refresh", "'0 * * * *'"),
        ("kg_update", "'30 3 * * *'"),
        ("retrain", "'0 3 * * 0'"),
    ):
        line = next(x for x in done.stdout.splitlines() if x.startswith(f"configs/{pipeline}_"))
        assert f"{pipeline} compiles on slipway-kubernetes" in line and cron in line, line


def test_local_stack_and_run_configurations_pass_zenml_validation(tmp_path: Path) -> None:
    configs = [
        "configs/model_build.yaml",
        "configs/model_build_gpu.yaml",
        "pipelines.model_build.model_build=configs/embedder_only.yaml",
        "configs/index_refresh.yaml",
        "configs/kg_update.yaml",
        "configs/retrain.yaml",
        "pipelines.llmops.llmops_pipeline=zenml.yaml",
    ]
    done = run_module("stacks.check", "stacks/local.yaml", *configs, tmp=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr[-4000:]
    assert done.stdout.count(" compiles on slipway-local ") == len(configs), done.stdout


def _edited(tmp: Path, source: str, old: str, new: str) -> str:
    text = (ROOT / source).read_text()
    assert old in text
    target = tmp / "edited" / Path(source).name
    target.parent.mkdir(exist_ok=True)
    target.write_text(text.replace(old, new))
    return str(target)


@pytest.mark.parametrize(
    ("source", "old", "new", "error"),
    [
        (
            "stacks/kubernetes.yaml",
            "kubernetes_namespace:",
            "kubernetes_namspace:",
            "Invalid configuration keys ['kubernetes_namspace']",
        ),
        (
            "configs/kg_update_schedule.yaml",
            "    pod_settings:",
            "    pod_setings:",
            "Ignoring invalid setting attributes `['pod_setings']`",
        ),
        (
            "configs/index_refresh_schedule.yaml",
            "  corpus: /data",
            "  corpuz: /data",
            "corpuz\n  Unexpected keyword argument",
        ),
        (
            "configs/model_build_schedule.yaml",
            '"0 2 * * 0"',
            '"0 25 * * 0"',
            "'0 25 * * 0' is not a 5-field cron expression",
        ),
        (
            "stacks/kubernetes.yaml",
            "kubernetes_context: ${SLIPWAY_K8S_CONTEXT}\n        kubernetes_namespace",
            "kubernetes_context: elsewhere\n        kubernetes_namespace",
            "'elsewhere'",
        ),
    ],
)
def test_check_refuses_mistakes(
    tmp_path: Path, source: str, old: str, new: str, error: str
) -> None:
    edited = _edited(tmp_path, source, old, new)
    stack = edited if source.startswith("stacks/") else "stacks/kubernetes.yaml"
    configs = [] if source.startswith("stacks/") else [edited]
    done = run_module("stacks.check", stack, *configs, tmp=tmp_path, **K8S_ENV)
    assert done.returncode != 0
    assert error in done.stdout + done.stderr, (done.stdout + done.stderr)[-3000:]


def test_register_refuses_until_the_declared_secrets_exist(tmp_path: Path) -> None:
    done = run_module("stacks.register", "stacks/kubernetes.yaml", tmp=tmp_path, **K8S_ENV)
    assert done.returncode != 0
    message = done.stdout + done.stderr
    assert "needs these ZenML secrets first" in message, message[-3000:]
    for name in (
        "slipway-s3",
        "slipway-mlflow",
        "slipway-neo4j",
        "slipway-pinecone",
        "slipway-redis",
    ):
        assert f"zenml secret create {name} " in message
    assert "--aws_access_key_id=..." in message
