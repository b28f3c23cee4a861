"""Parity and latency of a finished bundle against the original PyTorch models."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from slipway.embedding import OnnxEmbedder
from slipway.generation import Sampling, load_generator
from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.calibration import calibration_pairs, calibration_prompts, calibration_texts
from slipway.onnx.latency import Timing, interleaved, latency_plot_png
from slipway.onnx.parity import (
    EmbedderParity,
    GeneratorParity,
    ParityThresholds,
    RerankerParity,
    as_report,
    embedder_parity,
    generator_parity,
    reranker_parity,
)
from slipway.retrieval.rerank import OnnxReranker

logger = logging.getLogger(__name__)


def parity(
    bundle: OnnxBundle,
    thresholds: ParityThresholds,
    corpus_texts: Sequence[str] | None = None,
    n_texts: int = 128,
    n_prompts: int = 20,
    max_new_tokens: int = 32,
    threads: int = 0,
    exported: OnnxBundle | None = None,
    n_queries: int = 16,
) -> dict[str, Any]:
    """Run the parity checks of every role, record the report in the bundle, return it.

    The embedder is checked on ``corpus_texts`` (a sample of the corpus being processed, see
    :mod:`slipway.onnx.calibration`; the built-in set without one, or to top it up), the
    re-ranker on ``n_queries`` demo questions, each with its passage and others of that sample.

    With ``exported`` (the fp32 export) and a quantized final generator, the fp32 export is
    checked too (``generator_fp32``: exact greedy match), besides the final one's bounds.
    """
    parts: dict[str, EmbedderParity | GeneratorParity | RerankerParity] = {}
    if "embedder" in bundle.roles:
        texts = calibration_texts(corpus_texts, limit=n_texts)
        logger.info("Embedder parity on %d texts", len(texts))
        parts["embedder"] = embedder_parity(
            bundle.role_dir("embedder"), bundle.source_path("embedder"), texts, threads
        ).check(thresholds)
    if "generator" in bundle.roles:
        info = bundle.info("generator")
        prompts = calibration_prompts(limit=n_prompts)
        logger.info("Generator parity on %d prompts, %d tokens", len(prompts), max_new_tokens)
        runtime = bundle.runtime("generator")
        quantized = info.get("precision", "fp32") != "fp32"
        candidates = {
            "generator": (load_generator(bundle.role_dir("generator"), runtime, threads), quantized)
        }
        if quantized and exported is not None and "generator" in exported.roles:
            candidates["generator_fp32"] = (
                load_generator(exported.role_dir("generator"), runtime, threads),
                False,
            )
        results = generator_parity(
            candidates,
            bundle.source_path("generator"),
            prompts,
            max_new_tokens=max_new_tokens,
            threads=threads,
        )
        parts.update({label: result.check(thresholds) for label, result in results.items()})
    if bundle.has_role("reranker"):
        groups = calibration_pairs(corpus_texts, n_queries=n_queries)
        logger.info("Re-ranker parity on %d queries", len(groups))
        parts["reranker"] = reranker_parity(
            bundle.role_dir("reranker"), bundle.source_path("reranker"), groups, threads
        ).check(thresholds)
    report = as_report(**parts)
    bundle.record("parity", report)
    return report


def parity_metrics(report: dict[str, Any]) -> dict[str, float]:
    """Headline parity figures as flat metrics."""
    keys = (
        "min_cosine",
        "mean_cosine",
        "exact_match",
        "token_agreement",
        "mean_kl",
        "max_kl",
        "max_abs_diff",
        "mean_abs_diff",
        "spearman",
        "kendall",
        "top1_agreement",
        "reference_spread",
    )
    return {
        f"{role}_{k}": float(v)
        for role, part in report.items()
        for k, v in part.items()
        if k in keys
    }


def latency(
    bundle: OnnxBundle,
    corpus_texts: Sequence[str] | None = None,
    rounds: int = 5,
    batch: int = 32,
    new_tokens: int = 32,
    threads: int = 0,
    plot_path: Path | None = None,
) -> dict[str, float]:
    """Interleaved latency/throughput of each ONNX model against its PyTorch original."""
    import torch

    if threads:
        torch.set_num_threads(threads)
    metrics: dict[str, float] = {}
    timings: list[Timing] = []
    if "embedder" in bundle.roles:
        from sentence_transformers import SentenceTransformer

        texts = calibration_texts(corpus_texts, limit=batch)
        onnx = OnnxEmbedder(bundle.role_dir("embedder"), threads=threads)
        ref = SentenceTransformer(
            str(bundle.source_path("embedder")), device="cpu", local_files_only=True
        )

        def run_onnx() -> float:
            onnx.embed(texts)
            return len(texts)

        def run_torch() -> float:
            ref.encode(texts, batch_size=batch, show_progress_bar=False)
            return len(texts)

        a, b = interleaved(run_onnx, run_torch, rounds, names=("embed_onnx", "embed_torch"))
        metrics.update(a.as_metrics() | b.as_metrics())
        metrics["embed_speedup"] = a.throughput / b.throughput
        timings += [a, b]
    if "generator" in bundle.roles:
        from transformers import AutoModelForCausalLM

        gen = load_generator(bundle.role_dir("generator"), bundle.runtime("generator"), threads)
        model = AutoModelForCausalLM.from_pretrained(
            bundle.source_path("generator"), dtype=torch.float32, local_files_only=True
        ).eval()
        ids = gen.prompt_ids(calibration_prompts(limit=1)[0])
        sampling = Sampling(max_new_tokens=new_tokens, ignore_eos=True)

        def gen_onnx() -> float:
            return len(list(gen.decoder.stream_ids(ids, sampling)))

        def gen_torch() -> float:
            inputs = torch.tensor([ids])
            with torch.inference_mode():
                out = model.generate(
                    inputs,
                    attention_mask=torch.ones_like(inputs),
                    do_sample=False,
                    max_new_tokens=new_tokens,
                    min_new_tokens=new_tokens,
                )
            return out.shape[1] - len(ids)

        a, b = interleaved(
            gen_onnx, gen_torch, max(2, rounds // 2), names=("gen_onnx", "gen_torch")
        )
        metrics.update(a.as_metrics() | b.as_metrics())
        metrics["gen_speedup"] = a.throughput / b.throughput
        timings += [a, b]
    if bundle.has_role("reranker"):
        a, b = _rerank_timings(bundle, corpus_texts, batch, rounds, threads)
        metrics.update(a.as_metrics() | b.as_metrics())
        metrics["rerank_speedup"] = a.throughput / b.throughput
        timings += [a, b]
    for role in bundle.roles:
        metrics[f"{role}_size_mb"] = bundle.info(role).get("size_bytes", 0) / 2**20
    if plot_path is not None and timings:
        latency_plot_png(timings, str(plot_path), "ONNX vs PyTorch, per call")
    bundle.record("latency", metrics)
    return metrics


def _rerank_timings(
    bundle: OnnxBundle, corpus_texts: Sequence[str] | None, pairs: int, rounds: int, threads: int
) -> tuple[Timing, Timing]:
    """Scoring one query's ``pairs`` candidates, ONNX against the PyTorch cross-encoder: the
    corpus sample's texts, or the demo set's passages without one."""
    from sentence_transformers import CrossEncoder

    groups = calibration_pairs(corpus_texts, n_queries=pairs, per_query=1)
    query = groups[0][0]
    if corpus_texts:
        texts = calibration_texts(corpus_texts, limit=pairs)
    else:
        texts = [t for _, candidates in groups for t in candidates]
    texts = (texts * (pairs // max(len(texts), 1) + 1))[:pairs]
    onnx = OnnxReranker(bundle.role_dir("reranker"), threads=threads)
    ref = CrossEncoder(
        str(bundle.source_path("reranker")),
        device="cpu",
        max_length=onnx.max_length,
        local_files_only=True,
    )

    def run_onnx() -> float:
        onnx.score(query, texts)
        return len(texts)

    def run_torch() -> float:
        ref.predict([(query, t) for t in texts], batch_size=32, show_progress_bar=False)
        return len(texts)

    return interleaved(run_onnx, run_torch, rounds, names=("rerank_onnx", "rerank_torch"))
