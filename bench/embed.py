"""Embedder benchmark: the final ONNX artifact vs sentence-transformers on PyTorch fp32.

Same texts (Cranfield documents and queries), same thread count, interleaved rounds.

    python -m bench.embed [--bundle DIR] [--threads N] [--rounds N]
"""

from __future__ import annotations

import json
import logging

import numpy as np
import torch

from bench._common import DATA, bundle_for, parser, print_machine
from slipway.embedding import OnnxEmbedder, cosine_rows
from slipway.onnx.latency import interleaved


def cranfield_texts(limit_docs: int = 512, limit_queries: int = 225) -> list[str]:
    """Cranfield documents and queries from the shared data."""
    path = DATA / "cranfield"
    if not path.is_dir():
        raise SystemExit(f"Cranfield not found at {path}; the benchmark needs ../shared/data.")
    docs = [json.loads(line)["text"] for line in (path / "corpus.jsonl").open()][:limit_docs]
    queries = [json.loads(line)["text"] for line in (path / "queries.jsonl").open()][:limit_queries]
    return [t for t in docs + queries if t.strip()]


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(args.threads)
    print_machine(args.threads)
    bundle = bundle_for("embedder", args.bundle, args.quantization)
    info = bundle.info("embedder")
    source = str(bundle.source_path("embedder"))
    from sentence_transformers import SentenceTransformer

    texts = cranfield_texts()
    onnx = OnnxEmbedder(bundle.role_dir("embedder"), threads=args.threads)
    st = SentenceTransformer(source, device="cpu", local_files_only=True)
    print(
        f"artifact: {info['precision']} {info.get('isa', '')} "
        f"optimization={info.get('optimization')} "
        f"provider={onnx.provider} batch={onnx.batch_size} | torch batch=32 | texts={len(texts)}"
    )
    ours = onnx.embed(texts)
    ref = st.encode(texts, batch_size=32, show_progress_bar=False)
    cos = cosine_rows(ours, ref)

    def run_onnx() -> float:
        onnx.embed(texts)
        return len(texts)

    def run_torch() -> float:
        st.encode(texts, batch_size=32, show_progress_bar=False)
        return len(texts)

    a, b = interleaved(run_onnx, run_torch, rounds=args.rounds, names=("onnx", "torch"))
    print(
        f"onnx:  {a.throughput:8.1f} texts/s  "
        f"(p50 {a.percentile(50):.0f} ms per {len(texts)} texts)"
    )
    print(
        f"torch: {b.throughput:8.1f} texts/s  "
        f"(p50 {b.percentile(50):.0f} ms per {len(texts)} texts)"
    )
    print(
        f"cosine: min {cos.min():.5f} mean {cos.mean():.5f} | "
        f"worst: {texts[int(np.argmin(cos))][:60]!r}"
    )
    print(
        f"RESULT embed_speedup={a.throughput / b.throughput:.2f} min_cos={cos.min():.5f} "
        f"mean_cos={cos.mean():.5f} onnx_texts_per_s={a.throughput:.1f} "
        f"torch_texts_per_s={b.throughput:.1f}"
    )


if __name__ == "__main__":
    main()
