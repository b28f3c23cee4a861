"""The MLflow model registry: register bundle versions, move the ``champion`` alias, resolve."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from slipway.prompts import ServedPrompts
from slipway.registry.gate import Decision, GateResult, decide

logger = logging.getLogger(__name__)

CHAMPION = "champion"
CHALLENGER = "challenger"  # registered, waiting for the whole-bundle gate
BUNDLE_ARTIFACT_PATH = "bundle"
# (metric, higher_is_better): a new version must not be worse on any of them.
PROMOTION_METRICS: tuple[tuple[str, bool], ...] = (
    ("embedder_min_cosine", True),
    ("generator_token_agreement", True),
    ("generator_mean_kl", False),
)
TOLERANCE = 1e-6


class RegistryError(RuntimeError):
    """The registry cannot serve the requested model; the message says what to change."""


@dataclass(frozen=True)
class RegisteredVersion:
    """One registered bundle version and whether it became the champion."""

    name: str
    version: str
    source: str
    champion: bool


def _version_metrics(client: MlflowClient, name: str, version: str) -> dict[str, float]:
    tags = client.get_model_version(name, version).tags
    return {k.removeprefix("metric."): float(v) for k, v in tags.items() if k.startswith("metric.")}


def not_worse(candidate: dict[str, float], champion: dict[str, float]) -> tuple[bool, str]:
    """Whether ``candidate`` is at least as good as ``champion`` on the promotion metrics."""
    for metric, higher in PROMOTION_METRICS:
        if metric not in champion or metric not in candidate:
            continue
        new, old = candidate[metric], champion[metric]
        if (new < old - TOLERANCE) if higher else (new > old + TOLERANCE):
            return False, f"{metric} {new:.5f} is worse than the champion's {old:.5f}"
    return True, "not worse than the current champion"


def prompt_version_tags(served: ServedPrompts) -> dict[str, str]:
    """``prompt.<kind>``: the prompt versions a bundle serves (``name/3``, or
    ``name/3=0.5,name/4=0.5`` for an online A/B)."""
    return {
        f"prompt.{kind}": ",".join(
            v.prompt.ref if len(variants) == 1 else f"{v.prompt.ref}={v.weight:g}" for v in variants
        )
        for kind, variants in served.kinds.items()
    }


def register_bundle(
    client: MlflowClient,
    name: str,
    source_uri: str,
    run_id: str | None,
    metrics: dict[str, float],
    tags: dict[str, str],
    promote: bool = True,
) -> RegisteredVersion:
    """Register ``source_uri`` as a new version; make it champion unless its parity is worse
    than the champion's (``promote``), or else make it the ``challenger`` that the
    whole-bundle gate (:func:`settle`) promotes or holds back, with the parity verdict."""
    try:
        client.create_registered_model(
            name, description="Slipway ONNX bundle (embedder + generator)"
        )
    except MlflowException as exc:
        if "RESOURCE_ALREADY_EXISTS" not in str(exc.error_code):
            raise
    all_tags = {**tags, **{f"metric.{k}": f"{v:.6g}" for k, v in metrics.items()}}
    mv = client.create_model_version(name=name, source=source_uri, run_id=run_id, tags=all_tags)
    ok, reason = True, "first version"
    current = current_champion(client, name)
    if current is not None:
        ok, reason = not_worse(metrics, _version_metrics(client, name, current))
    if not promote:
        client.set_model_version_tag(name, mv.version, "gate.parity", "pass" if ok else "fail")
        client.set_model_version_tag(name, mv.version, "gate.parity.reason", reason)
        client.set_registered_model_alias(name, CHALLENGER, mv.version)
        client.set_model_version_tag(name, mv.version, "promotion", "challenger: awaiting gate")
        return RegisteredVersion(
            name=name, version=str(mv.version), source=source_uri, champion=False
        )
    if ok:
        client.set_registered_model_alias(name, CHAMPION, mv.version)
    client.set_model_version_tag(name, mv.version, "promotion", reason)
    logger.info(
        "Registered %s version %s (%s)",
        name,
        mv.version,
        f"now {CHAMPION}" if ok else f"not promoted: {reason}",
    )
    return RegisteredVersion(name=name, version=str(mv.version), source=source_uri, champion=ok)


def settle(
    client: MlflowClient,
    name: str,
    version: str,
    retrieval: dict[str, float],
    answers: dict[str, float],
    retrieval_margin: float,
    answer_margin: float,
) -> Decision:
    """The whole-bundle gate for ``version`` (registered as challenger): parity (its verdict at
    registration), retrieval and answers against the champion's recorded figures; the
    champion alias moves only when all pass. Every verdict and figure becomes a tag."""
    tags = client.get_model_version(name, version).tags
    parity_ok = tags.get("gate.parity") == "pass"
    parity = GateResult(
        "parity",
        parity_ok,
        tags.get("gate.parity.reason", "no parity verdict was recorded"),
        {k: v for k, v in _version_metrics(client, name, version).items() if k in _PARITY},
    )
    champion = current_champion(client, name)
    champion_tags = client.get_model_version(name, champion).tags if champion else None
    decision = decide(parity, retrieval, answers, champion_tags, retrieval_margin, answer_margin)
    for key, value in decision.tags().items():
        client.set_model_version_tag(name, version, key, value)
    client.set_model_version_tag(name, version, "promotion", decision.reason[:4000])
    if decision.promote:
        client.set_registered_model_alias(name, CHAMPION, version)
    logger.info("%s version %s: %s", name, version, decision.reason)
    return decision


_PARITY = {metric for metric, _ in PROMOTION_METRICS}


def current_champion(client: MlflowClient, name: str) -> str | None:
    """The version the ``champion`` alias points to, if any."""
    try:
        return str(client.get_model_version_by_alias(name, CHAMPION).version)
    except MlflowException:
        return None


def download_bundle(
    tracking_uri: str, name: str, version: str | None, dst: Path
) -> tuple[str, Path]:
    """Fetch a registered bundle (``version`` or the champion) into ``dst``."""
    import mlflow

    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    try:
        if version is None:
            mv = client.get_model_version_by_alias(name, CHAMPION)
        elif version.isdigit():
            mv = client.get_model_version(name, version)
        else:  # an alias: champion, challenger...
            mv = client.get_model_version_by_alias(name, version)
    except MlflowException as exc:
        wanted = f"version {version}" if version else f"the '{CHAMPION}' alias"
        raise RegistryError(
            f"No registered model '{name}' with {wanted} at {tracking_uri}; run the model_build "
            "pipeline first, or pass --model-version / --bundle-dir."
        ) from exc
    dst.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(tracking_uri)
    local = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=str(dst))
    return str(mv.version), Path(local)
