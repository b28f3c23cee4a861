"""Parity gate: does the final ONNX artifact still answer like the original PyTorch model?"""

from __future__ import annotations

import html
import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from slipway.embedding import OnnxEmbedder, cosine_rows
from slipway.generation import Sampling, TextGenerator
from slipway.retrieval.rerank import OnnxReranker

logger = logging.getLogger(__name__)


class ParityError(RuntimeError):
    """A model failed its parity gate; the message is the readable report."""


@dataclass(frozen=True)
class ParityThresholds:
    """Gate bounds (config: ``steps.parity_gate.parameters``)."""

    embed_min_cosine: float = 0.99
    gen_min_exact_match: float = 0.95  # fp32 generator: whole greedy outputs identical
    gen_quantized_min_token_agreement: float = 0.9  # int8/int4: teacher-forced top-1 agreement
    gen_max_mean_kl: float = 0.05  # mean KL(torch || onnx) of next-token distributions
    # Re-ranker logits: the order is the gate; the bounds on differences catch a broken graph.
    # Measured on a trained MiniLM cross-encoder (logits -3.3..3.4), O2 + int8: Spearman 0.998,
    # mean Kendall 0.949, mean |diff| 0.098, max |diff| 1.1 (one ambiguous pair near 0).
    rerank_min_spearman: float = 0.98  # rank correlation of all pairs' logits
    rerank_min_kendall: float = 0.9  # mean per-query Kendall tau: the order re-ranking gives
    rerank_max_mean_abs_diff: float = 0.25  # mean |logit difference| over all pairs
    rerank_max_abs_diff: float = 1.5  # largest |logit difference| of any pair
    # The order is gated only when the reference gives one: a model whose logits barely vary
    # (an untrained head) has near-ties that any rounding reorders; its bounds still apply.
    rerank_min_spread: float = 0.05  # standard deviation of the reference logits


@dataclass
class EmbedderParity:
    """Cosine similarity of ONNX embeddings to the PyTorch ones, text by text."""

    n_texts: int
    min_cosine: float
    mean_cosine: float
    worst_text: str
    passed: bool = False

    def check(self, thresholds: ParityThresholds) -> EmbedderParity:
        """Set ``passed`` against the thresholds."""
        self.passed = self.min_cosine >= thresholds.embed_min_cosine
        return self


@dataclass
class GeneratorParity:
    """Greedy agreement with the PyTorch model and next-token KL divergence."""

    n_prompts: int
    exact_match: float
    token_agreement: float
    mean_kl: float
    max_kl: float
    quantized: bool
    mismatches: list[dict[str, str]] = field(default_factory=list)
    passed: bool = False

    def check(self, thresholds: ParityThresholds) -> GeneratorParity:
        """Set ``passed`` against the thresholds for this artifact's precision."""
        if self.quantized:
            agreed = self.token_agreement >= thresholds.gen_quantized_min_token_agreement
        else:
            agreed = self.exact_match >= thresholds.gen_min_exact_match
        self.passed = agreed and self.mean_kl <= thresholds.gen_max_mean_kl
        return self


@dataclass
class RerankerParity:
    """Logits of the ONNX cross-encoder against PyTorch's on (query, candidates) groups: their
    differences, and how well they agree on the order of each query's candidates."""

    n_queries: int
    n_pairs: int
    max_abs_diff: float
    mean_abs_diff: float
    spearman: float
    kendall: float
    min_kendall: float
    top1_agreement: float
    worst_pair: str
    reference_spread: float = float("inf")  # standard deviation of the reference logits
    passed: bool = False

    def check(self, thresholds: ParityThresholds) -> RerankerParity:
        """Set ``passed`` against the thresholds (the rank bounds only when the reference's
        logits spread at least ``rerank_min_spread``)."""
        ordered = self.reference_spread >= thresholds.rerank_min_spread
        self.passed = (
            (not ordered or self.spearman >= thresholds.rerank_min_spearman)
            and (not ordered or self.kendall >= thresholds.rerank_min_kendall)
            and self.mean_abs_diff <= thresholds.rerank_max_mean_abs_diff
            and self.max_abs_diff <= thresholds.rerank_max_abs_diff
        )
        return self


def torch_rerank_logits(
    model_dir: Path, groups: Sequence[tuple[str, Sequence[str]]], max_length: int, threads: int
) -> list[np.ndarray]:
    """Reference logits (no activation) of each group from sentence-transformers' CrossEncoder
    on PyTorch fp32."""
    import torch
    from sentence_transformers import CrossEncoder

    if threads:
        torch.set_num_threads(threads)
    model = CrossEncoder(str(model_dir), device="cpu", max_length=max_length, local_files_only=True)
    return [
        np.asarray(
            model.predict(
                [(q, t) for t in texts],
                batch_size=32,
                activation_fn=torch.nn.Identity(),
                show_progress_bar=False,
            ),
            dtype=np.float64,
        ).reshape(-1)
        for q, texts in groups
    ]


def rank_agreement(
    onnx: Sequence[np.ndarray], ref: Sequence[np.ndarray]
) -> tuple[float, list[float], float]:
    """Spearman's rho over all pairs, Kendall's tau per group, and the share of groups whose
    top candidate is the same; an undefined correlation (constant scores) counts as 0."""
    from scipy.stats import kendalltau, spearmanr

    def defined(value: float) -> float:
        return 0.0 if np.isnan(value) else float(value)

    rho = defined(spearmanr(np.concatenate(onnx), np.concatenate(ref)).statistic)
    taus = [defined(kendalltau(o, r).statistic) for o, r in zip(onnx, ref, strict=True)]
    top1 = np.mean([int(np.argmax(o)) == int(np.argmax(r)) for o, r in zip(onnx, ref, strict=True)])
    return rho, taus, float(top1)


def reranker_parity(
    onnx_dir: Path,
    torch_dir: Path,
    groups: Sequence[tuple[str, Sequence[str]]],
    threads: int = 0,
) -> RerankerParity:
    """Compare the ONNX and PyTorch cross-encoders' logits on (query, candidates) groups."""
    if not any(texts for _, texts in groups):
        raise ValueError("Re-ranker parity needs at least one (query, passage) pair.")
    onnx = OnnxReranker(onnx_dir, threads=threads)
    got = [onnx.logits(q, texts).astype(np.float64) for q, texts in groups]
    ref = torch_rerank_logits(torch_dir, groups, onnx.max_length, threads)
    diffs = [np.abs(o - r) for o, r in zip(got, ref, strict=True)]
    flat = np.concatenate(diffs)
    worst_group = int(np.argmax([d.max() for d in diffs]))
    query, texts = groups[worst_group]
    rho, taus, top1 = rank_agreement(got, ref)
    return RerankerParity(
        n_queries=len(groups),
        n_pairs=int(flat.size),
        max_abs_diff=float(flat.max()),
        mean_abs_diff=float(flat.mean()),
        spearman=rho,
        kendall=float(np.mean(taus)),
        min_kendall=float(np.min(taus)),
        top1_agreement=top1,
        worst_pair=f"{query[:100]} || {texts[int(np.argmax(diffs[worst_group]))][:100]}",
        reference_spread=float(np.std(np.concatenate(ref))),
    )


def torch_embeddings(model_dir: Path, texts: Sequence[str], threads: int) -> np.ndarray:
    """Reference embeddings from sentence-transformers on PyTorch fp32."""
    import torch
    from sentence_transformers import SentenceTransformer

    if threads:
        torch.set_num_threads(threads)
    model = SentenceTransformer(str(model_dir), device="cpu", local_files_only=True)
    return model.encode(list(texts), batch_size=32, show_progress_bar=False)


def embedder_parity(
    onnx_dir: Path, torch_dir: Path, texts: Sequence[str], threads: int = 0
) -> EmbedderParity:
    """Compare ONNX and PyTorch embeddings of ``texts``."""
    onnx_vecs = OnnxEmbedder(onnx_dir, threads=threads).embed(texts)
    ref = torch_embeddings(torch_dir, texts, threads)
    ref = ref / np.clip(np.linalg.norm(ref, axis=1, keepdims=True), 1e-12, None)
    cos = cosine_rows(onnx_vecs, ref)
    worst = int(np.argmin(cos))
    return EmbedderParity(
        n_texts=len(texts),
        min_cosine=float(cos.min()),
        mean_cosine=float(cos.mean()),
        worst_text=texts[worst][:200],
    )


def generator_parity(
    candidates: dict[str, tuple[TextGenerator, bool]],
    torch_dir: Path,
    prompts: Sequence[str],
    max_new_tokens: int = 32,
    threads: int = 0,
) -> dict[str, GeneratorParity]:
    """Greedy outputs and teacher-forced next-token distributions against PyTorch fp32.

    ``candidates`` maps a label to (generator, quantized); the PyTorch reference is computed
    once per prompt and compared with every candidate.
    """
    import torch
    from transformers import AutoModelForCausalLM

    if threads:
        torch.set_num_threads(threads)
    model = AutoModelForCausalLM.from_pretrained(
        torch_dir, dtype=torch.float32, local_files_only=True
    )
    model.eval()
    first = next(iter(candidates.values()))[0]
    eos = sorted(first.eos_ids)
    sampling = Sampling(max_new_tokens=max_new_tokens)
    stats = {label: _Tally() for label in candidates}
    for prompt in tqdm(prompts, desc="generator parity", unit="prompt"):
        ids = first.prompt_ids(prompt)
        inputs = torch.tensor([ids])
        with torch.inference_mode():
            out = model.generate(
                inputs,
                attention_mask=torch.ones_like(inputs),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=eos,
                pad_token_id=eos[0],
            )
            ref = [int(t) for t in out[0, len(ids) :]]
            full = ids + ref
            ref_logits = model(torch.tensor([full])).logits[0, len(ids) - 1 : len(full) - 1].numpy()
        ref_cut = _until_eos(ref, first.eos_ids)
        for label, (generator, _) in candidates.items():
            tally = stats[label]
            got = _until_eos(list(generator.decoder.stream_ids(ids, sampling)), generator.eos_ids)
            if got == ref_cut:
                tally.exact += 1
            elif len(tally.mismatches) < 10:
                decode = generator.tokenizer.decode
                tally.mismatches.append(
                    {"prompt": prompt, "torch": decode(ref_cut), "onnx": decode(got)}
                )
            onnx_logits = generator.decoder.next_token_logits(full, len(ids))
            tally.kls += [kl_divergence(r, o) for r, o in zip(ref_logits, onnx_logits, strict=True)]
            tally.agree += [bool(a) for a in ref_logits.argmax(-1) == onnx_logits.argmax(-1)]
    return {
        label: GeneratorParity(
            n_prompts=len(prompts),
            exact_match=tally.exact / max(len(prompts), 1),
            token_agreement=float(np.mean(tally.agree)) if tally.agree else 0.0,
            mean_kl=float(np.mean(tally.kls)) if tally.kls else 0.0,
            max_kl=float(np.max(tally.kls)) if tally.kls else 0.0,
            quantized=candidates[label][1],
            mismatches=tally.mismatches,
        )
        for label, tally in stats.items()
    }


@dataclass
class _Tally:
    exact: int = 0
    kls: list[float] = field(default_factory=list)
    agree: list[bool] = field(default_factory=list)
    mismatches: list[dict[str, str]] = field(default_factory=list)


def _until_eos(ids: list[int], eos: frozenset[int]) -> list[int]:
    for i, token in enumerate(ids):
        if token in eos:
            return ids[:i]
    return ids


def kl_divergence(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    """KL(p || q) between the softmax distributions of two logit vectors."""
    p = _log_softmax(p_logits.astype(np.float64))
    q = _log_softmax(q_logits.astype(np.float64))
    return float(np.sum(np.exp(p) * (p - q)))


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x - x.max()
    return x - np.log(np.exp(x).sum())


def parity_report_html(report: dict[str, Any]) -> str:
    """A small HTML page of the parity report, for the ZenML dashboard and MLflow."""
    rows = []
    for role, values in report.items():
        if not isinstance(values, dict):
            continue
        status = "PASS" if values.get("passed") else "FAIL"
        cells = "".join(
            f"<tr><td>{html.escape(str(k))}</td><td>{html.escape(_fmt(v))}</td></tr>"
            for k, v in values.items()
            if k not in ("passed", "mismatches")
        )
        mismatches = "".join(
            f"<li><b>{html.escape(m.get('prompt', ''))}</b><br>"
            f"torch: {html.escape(m.get('torch', ''))}"
            f"<br>onnx: {html.escape(m.get('onnx', ''))}</li>"
            for m in values.get("mismatches", [])[:5]
        )
        rows.append(
            f"<h3>{html.escape(role)}: {status}</h3><table border=1 cellpadding=4>{cells}</table>"
            + (f"<p>First mismatches:</p><ul>{mismatches}</ul>" if mismatches else "")
        )
    return "<html><body><h2>Slipway parity report</h2>" + "".join(rows) + "</body></html>"


def _fmt(value: Any) -> str:
    return f"{value:.5f}" if isinstance(value, float) else str(value)


def as_report(**parts: EmbedderParity | GeneratorParity | RerankerParity) -> dict[str, Any]:
    """A JSON-able parity report keyed by role."""
    return {role: asdict(part) for role, part in parts.items()}


def raise_on_failure(report: dict[str, Any]) -> None:
    """Fail with a readable report when any role did not pass."""
    failed = [
        role for role, part in report.items() if isinstance(part, dict) and not part["passed"]
    ]
    if failed:
        lines = [f"Parity gate failed for {', '.join(failed)}; nothing was registered."]
        for role in failed:
            details = {k: _fmt(v) for k, v in report[role].items() if k != "mismatches"}
            lines.append(f"  {role}: {details}")
        lines.append(
            "Loosen the thresholds in the parity_gate step config or change the "
            "quantization (e.g. quantization: off) if this is expected."
        )
        raise ParityError("\n".join(lines))
