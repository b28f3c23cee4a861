"""Steps of the retraining loop: training data, fine-tuning, the re-ranker, the judgement of the
candidates on frozen validation queries, and the blue/green publication of the new index."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path
from typing import Annotated, Any

import mlflow
from zenml import log_metadata, step

from slipway.config import get_settings
from slipway.documents import DocumentSet
from slipway.documents.chunking import ChunkSet
from slipway.embedding import OnnxEmbedder, model_fingerprint
from slipway.evaluation.judge import JudgeConfig, OpenAIChat, endpoint_judge
from slipway.models import embedder_source
from slipway.prompts import load_file
from slipway.retrieval.index import IndexVersion
from slipway.retrieval.stores import index_dir, published_searcher, vector_store
from slipway.training.data import (
    SYNTHETIC_PROMPT_FILE,
    FeedbackStats,
    Pair,
    SyntheticStats,
    chat_ask,
    data_stats,
    feedback_pairs,
    labelled_pairs,
    merge,
    mine_hard_negatives,
    read_feedback,
    split,
    synthetic_pairs,
)
from slipway.training.loop import (
    CandidateReport,
    ChunkSearch,
    TrainingSet,
    candidate_plot_png,
    doc_retrieve,
    document_texts,
    judge_candidates,
    sentence_embed,
)
from slipway.training.train import TrainConfig, finetune_embedder, run_key, train_reranker
from steps.common import in_pipeline, index_settings, zenml_secret

logger = logging.getLogger(__name__)


def _log(metrics: dict[str, float], metadata: dict[str, Any] | None = None) -> None:
    if mlflow.active_run() is not None:
        mlflow.log_metrics(metrics)
    if metadata is not None and in_pipeline():
        log_metadata(metadata=metadata)


def _training_dir() -> Path:
    path = get_settings().cache_dir / "training"
    path.mkdir(parents=True, exist_ok=True)
    return path


def _published_retrieve(index_name: str, depth: int) -> Any:
    """Document rankings from the published index's hybrid search, with its own embedder."""
    index = index_dir(index_name, index_settings())
    version = index.published()
    if version is None:
        raise RuntimeError(
            f"Index {index_name!r} has no published version: the retraining loop mines "
            "negatives and checks synthetic queries against it; run the main job or "
            "index_refresh first."
        )
    manifest = index.manifest(version)
    model_dir = Path(manifest.embedder_dir)
    if (
        not (model_dir / "model.onnx").is_file()
        or model_fingerprint(model_dir) != manifest.embedder
    ):
        raise RuntimeError(
            f"The embedder that built {index_name!r} {version} is not at {model_dir} any more; "
            "run the index_refresh pipeline again on this machine."
        )
    opened, searcher = published_searcher(
        index_name, OnnxEmbedder(model_dir, threads=get_settings().threads)
    )
    return doc_retrieve(lambda queries: searcher.search(list(queries), depth), opened.doc_of)


def _synthetic_chat(config: JudgeConfig, model_name: str, index_name: str) -> Any:
    """The model that writes synthetic queries: an OpenAI-compatible endpoint when one is
    configured, else the champion's generator in this process."""
    if config.base_url or config.secret:
        chat = endpoint_judge(config, zenml_secret).model
        assert isinstance(chat, OpenAIChat)
        return chat
    from slipway.config import ServeSettings
    from slipway.evaluation.bundle import served_judge
    from slipway.evaluation.inprocess import in_process_service
    from slipway.serving import resolve_bundle

    served = resolve_bundle(ServeSettings(), uri=mlflow.get_tracking_uri(), name=model_name)
    service = in_process_service(served, ServeSettings(index_name=index_name), index_settings())
    return served_judge(service).model


@step(enable_cache=False, experiment_tracker=True)
def build_training_set(
    documents: DocumentSet,
    labelled: str | None = None,
    labelled_split: str = "train",
    feedback: str | None = None,
    synthetic: dict[str, Any] | None = None,
    model_name: str = "slipway",
    index_name: str = "default",
    validation_fraction: float = 0.2,
    seed: int = 0,
    frozen: str | None = None,
    negatives: int = 4,
    mining_depth: int = 30,
) -> Annotated[TrainingSet, "training_set"]:
    """Training pairs from labelled judgements (a BEIR folder or a JSONL of query and
    doc_ids), exported feedback (``slipway feedback export``'s JSONL) and synthetic queries
    (``synthetic``: enabled, max_passages, per_passage, k, and the endpoint as for the judge:
    base_url, model, api_key_env, secret; default the champion's generator), merged and
    de-duplicated, split by query with a frozen validation set (``frozen``; default one per
    index), and hard negatives mined from the published index."""
    texts = document_texts(documents.documents)
    retrieve = _published_retrieve(index_name, max(mining_depth, 10))
    groups: list[list[Pair]] = []
    if labelled:
        groups.append(labelled_pairs(Path(labelled), labelled_split))
    rated: FeedbackStats | None = None
    if feedback:
        pairs, rated = feedback_pairs(read_feedback(Path(feedback)))
        groups.append(pairs)
    made: SyntheticStats | None = None
    options = dict(synthetic or {})
    if options.pop("enabled", False):
        generation = {
            k: options.pop(k) for k in ("max_passages", "per_passage", "k") if k in options
        }
        chat = _synthetic_chat(JudgeConfig.model_validate(options), model_name, index_name)
        pairs, made = synthetic_pairs(
            texts,
            chat_ask(chat),
            retrieve,
            load_file(Path(__file__).resolve().parents[1] / SYNTHETIC_PROMPT_FILE),
            seed=seed,
            workers=getattr(chat, "concurrency", 1),
            **generation,
        )
        groups.append(pairs)
    if not groups:
        raise ValueError(
            "No training data: set labelled (a BEIR folder or JSONL), feedback (an exported "
            "JSONL) or synthetic: {enabled: true}."
        )
    merged, merge_stats = merge(*groups)
    known = [p for p in merged if any(d in texts for d in p.positives)]
    if len(known) < len(merged):
        logger.warning(
            "%d training queries have no positive document in the corpus; left out.",
            len(merged) - len(known),
        )
    frozen_path = Path(frozen) if frozen else _training_dir() / f"validation-{index_name}.json"
    train, validation = split(known, validation_fraction, seed, frozen_path)
    negative_ids = mine_hard_negatives(
        train, retrieve, texts, per_query=negatives, depth=mining_depth
    )
    stats = data_stats(merge_stats, train, validation, made, rated, negative_ids)
    _log({f"data.{k}": float(v) for k, v in stats.items()}, {"training_data": stats})
    logger.info("Training data: %s", stats)
    return TrainingSet(train=train, validation=validation, negatives=negative_ids, stats=stats)


def _trained(
    kind: str, base: Path, rows: Any, config: dict[str, Any] | None
) -> tuple[Path, TrainConfig]:
    """Where a training run keeps its model (its checkpoints beside it), keyed by the base, the
    data and the settings: a killed run, started again, resumes from its last checkpoint."""
    parsed = TrainConfig.model_validate(config or {})
    return _training_dir() / f"{kind}-{run_key(kind, base, rows, parsed)}", parsed


@step(enable_cache=False, experiment_tracker=True)
def finetune_retriever(
    training_set: TrainingSet,
    documents: DocumentSet,
    base_path: str | None = None,
    config: dict[str, Any] | None = None,
) -> Annotated[str, "tuned_embedder"]:
    """Fine-tune the embedder (the packaged MiniLM, or ``base_path``) on the training queries
    and their hard negatives; checkpoints under the cache make a killed run resume."""
    base = embedder_source(Path(base_path) if base_path else None).path
    examples = training_set.examples(document_texts(documents.documents))
    if not examples:
        raise ValueError("The training set has no (query, positive) example to train on.")
    out_dir, train_config = _trained("embedder", base, examples, config)
    result = finetune_embedder(base, examples, out_dir, train_config)
    _log(
        {
            "embedder_train_s": result.seconds,
            "embedder_examples_per_s": result.examples_per_s,
            "embedder_steps": float(result.steps),
            **({"embedder_loss": result.loss} if result.loss is not None else {}),
        },
        {"embedder_training": {"examples": result.examples, "steps": result.steps}},
    )
    return str(result.out_dir)


@step(enable_cache=False, experiment_tracker=True)
def train_reranker_model(
    training_set: TrainingSet,
    documents: DocumentSet,
    base_path: str | None = None,
    config: dict[str, Any] | None = None,
    enabled: bool = True,
) -> Annotated[str | None, "trained_reranker"]:
    """Train a cross-encoder re-ranker from the MiniLM backbone on the same positives and hard
    negatives (``enabled: false`` skips it)."""
    if not enabled:
        return None
    base = embedder_source(Path(base_path) if base_path else None).path
    examples = training_set.examples(document_texts(documents.documents))
    out_dir, train_config = _trained("reranker", base, examples, config)
    result = train_reranker(base, examples, out_dir, train_config)
    _log(
        {
            "reranker_train_s": result.seconds,
            "reranker_examples_per_s": result.examples_per_s,
            **({"reranker_loss": result.loss} if result.loss is not None else {}),
        }
    )
    return str(result.out_dir)


@step(enable_cache=False, experiment_tracker=True)
def judge_retrievers(
    training_set: TrainingSet,
    chunks: ChunkSet,
    tuned_embedder: str,
    trained_reranker: str | None = None,
    base_path: str | None = None,
    rerank_margin: float = 0.01,
) -> tuple[
    Annotated[str | None, "shipped_reranker"],
    Annotated[dict[str, Any], "retrieval_config"],
    Annotated[CandidateReport, "candidate_report"],
]:
    """Base against fine-tuned retrieval on the frozen validation queries (dense and hybrid,
    with and without the re-ranker), the fusion tuned on the training queries; the re-ranker
    ships only when it adds ``rerank_margin`` nDCG@10."""
    from slipway.retrieval.rerank import CrossEncoderReranker

    if not training_set.validation:
        raise ValueError("The training set has no validation query; add data or raise the split.")
    base = embedder_source(Path(base_path) if base_path else None).path
    reranker = CrossEncoderReranker(Path(trained_reranker)) if trained_reranker else None
    report = judge_candidates(
        training_set,
        ChunkSearch(chunks.chunks),
        sentence_embed(base),
        sentence_embed(Path(tuned_embedder)),
        reranker,
        rerank_margin,
    )
    _log(report.flat(), {"candidates": {"reason": report.reason, "fusion": report.fusion}})
    if mlflow.active_run() is not None:
        mlflow.log_text(report.fusion_table, "reports/fusion_trials.txt")
        mlflow.log_dict(report.model_dump(), "reports/candidates.json")
        with tempfile.TemporaryDirectory() as tmp:
            plot = str(Path(tmp) / "validation.png")
            candidate_plot_png(report, plot)
            mlflow.log_artifact(plot, "reports")
    shipped = trained_reranker if report.ship_reranker else None
    return shipped, {"fusion": report.fusion, "reason": report.reason}, report


@step(enable_cache=False)
def publish_if_champion(
    index_version: IndexVersion,
    bundle_gate: dict[str, Any],
    retain: int | None = None,
) -> Annotated[str | None, "published_index_version"]:
    """Blue/green: publish the challenger's index version (atomically) only when the whole-bundle
    gate made its model champion; services keep their pair until restarted with it."""
    from slipway.retrieval.index import collect_garbage

    settings = index_settings()
    index = index_dir(index_version.name, settings)
    if not bundle_gate.get("champion"):
        logger.info(
            "Index %s %s stays unpublished: %s",
            index.name,
            index_version.version,
            bundle_gate.get("reason", "the challenger was not promoted"),
        )
        return None
    if not index_version.changed:
        return index_version.version
    index.publish(index_version.version)
    collect_garbage(index, vector_store(index, settings), retain or settings.index_retain)
    logger.info("Index %s: %s is published with its model", index.name, index_version.version)
    return index_version.version
