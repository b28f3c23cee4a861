"""Re-ranking: a cross-encoder scores (query, chunk) pairs for the top fused candidates.

No cross-encoder ships offline, so the default is off. A re-ranker trained on the user's
corpus is built into the ONNX bundle (its ``reranker/`` role, :class:`OnnxReranker`); a user
may also pass a local model path (``SLIPWAY_RERANKER_PATH``: a PyTorch cross-encoder, or an
exported ``model.onnx`` directory), and ``bench/retrieval_quality.py --reranker PATH``
measures whether it helps on the shared sets before it is switched on.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Encoding, Tokenizer

from slipway.onnx.bundle import OnnxBundle
from slipway.onnx.session import open_session

logger = logging.getLogger(__name__)

RERANKER_ROLE = "reranker"
_ACTIVATIONS = ("Sigmoid", "Identity", "Tanh")


class Reranker(Protocol):
    """Scores of ``texts`` for ``query``; higher is more relevant."""

    def score(self, query: str, texts: Sequence[str]) -> list[float]: ...


class CrossEncoderReranker:
    """A sentence-transformers ``CrossEncoder`` loaded from a local directory, on CPU; pairs
    are cut to ``max_length`` tokens (default: the length it was trained for, within its
    position embeddings)."""

    def __init__(
        self, model_path: Path, batch_size: int = 32, max_length: int | None = None
    ) -> None:
        from sentence_transformers import CrossEncoder

        if not (Path(model_path) / "config.json").is_file():
            raise FileNotFoundError(
                f"No cross-encoder at {model_path} (config.json missing); set "
                "SLIPWAY_RERANKER_PATH to a local Hugging Face cross-encoder directory."
            )
        self.model = CrossEncoder(
            str(model_path),
            device="cpu",
            max_length=max_length or reranker_max_length(Path(model_path)),
            local_files_only=True,
        )
        self.batch_size = batch_size

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text."""
        if not texts:
            return []
        scores = self.model.predict(
            [(query, t) for t in texts], batch_size=self.batch_size, show_progress_bar=False
        )
        return [float(s) for s in scores]


def _read_json(path: Path) -> dict[str, object]:
    return json.loads(path.read_text()) if path.is_file() else {}


def reranker_max_length(model_dir: Path, default: int = 512) -> int:
    """The pair length the cross-encoder was trained for, as sentence-transformers reads it:
    ``max_seq_length`` (older saves), else the tokenizer's ``model_max_length``, capped by the
    model's position embeddings."""
    sbert = _read_json(model_dir / "sentence_bert_config.json").get("max_seq_length")
    tok = _read_json(model_dir / "tokenizer_config.json").get("model_max_length")
    positions = _read_json(model_dir / "config.json").get("max_position_embeddings")
    length = default
    if isinstance(sbert, int):
        length = sbert
    elif isinstance(tok, int | float) and tok < 1_000_000:  # HF's "unset" is a huge number
        length = int(tok)
    return min(length, positions) if isinstance(positions, int) else length


def reranker_activation(model_dir: Path) -> str:
    """The activation the cross-encoder applies to its logit (``Sigmoid`` by default, as
    sentence-transformers does for one label)."""
    saved = _read_json(model_dir / "config_sentence_transformers.json").get("activation_fn")
    if saved is None:  # sentence-transformers < 4 kept it in config.json
        legacy = _read_json(model_dir / "config.json").get("sentence_transformers")
        saved = legacy.get("activation_fn") if isinstance(legacy, dict) else None
    name = str(saved or "Sigmoid").rsplit(".", 1)[-1]
    if name not in _ACTIVATIONS:
        raise ValueError(
            f"The cross-encoder at {model_dir} uses activation {saved!r}; OnnxReranker applies "
            f"one of {', '.join(_ACTIVATIONS)}."
        )
    return name


def activate(logits: np.ndarray, activation: str) -> np.ndarray:
    """The activation of :func:`reranker_activation` applied to logits."""
    if activation == "Sigmoid":
        return 1.0 / (1.0 + np.exp(-logits))
    if activation == "Tanh":
        return np.tanh(logits)
    return logits


class OnnxReranker:
    """A cross-encoder exported to ONNX (the bundle's ``reranker/``) on onnxruntime.

    Pairs are tokenized ``[CLS] query [SEP] passage [SEP]`` and only the passage is truncated
    to the model's length (unless the query alone is too long: then both, as PyTorch does).
    Batches are length-sorted to cut padding; small ones suit dynamic int8, whose activation
    scales are set per batch.
    """

    def __init__(
        self,
        model_dir: Path,
        providers: list[str] | None = None,
        threads: int = 0,
        batch_size: int = 8,
        max_length: int | None = None,
        model_file: str = "model.onnx",
        spinning: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        if not (self.model_dir / model_file).is_file():
            raise FileNotFoundError(f"No {model_file} in {self.model_dir}; build the re-ranker.")
        self.session = open_session(self.model_dir / model_file, providers, threads, spinning)
        self._check_outputs()
        self.provider = self.session.get_providers()[0]
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.batch_size = batch_size
        self.max_length = max_length or reranker_max_length(self.model_dir)
        self.activation = reranker_activation(self.model_dir)
        self._passage_only = self._tokenizer("only_second")
        self._both = self._tokenizer("longest_first")

    def _check_outputs(self) -> None:
        outputs = self.session.get_outputs()
        if not outputs or outputs[0].name != "logits" or outputs[0].shape[-1] != 1:
            got = [(o.name, o.shape) for o in outputs]
            raise ValueError(
                f"{self.model_dir} is not a re-ranker graph: it outputs {got}, not one logit "
                "per pair (export a cross-encoder with task text-classification, num_labels=1)."
            )

    def _tokenizer(self, strategy: str) -> Tokenizer:
        tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        tokenizer.enable_truncation(max_length=self.max_length, strategy=strategy)
        tokenizer.no_padding()
        return tokenizer

    def encode(self, query: str, texts: Sequence[str]) -> list[Encoding]:
        """Token encodings of the (query, text) pairs, truncated and unpadded."""
        tokenizer = self._passage_only
        query_tokens = len(self._both.encode(query, add_special_tokens=False).ids)
        if query_tokens + tokenizer.num_special_tokens_to_add(True) >= self.max_length:
            tokenizer = self._both  # no room left for any of the passage
        return list(tokenizer.encode_batch([(query, t) for t in texts]))

    def logits(self, query: str, texts: Sequence[str]) -> np.ndarray:
        """The raw logit of each (query, text) pair, in input order."""
        encodings = self.encode(query, texts)
        out = np.empty(len(encodings), dtype=np.float32)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._run([encodings[i] for i in idx])
        return out

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text (the logit through the model's activation)."""
        if not texts:
            return []
        return [float(s) for s in activate(self.logits(query, texts), self.activation)]

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask, types = np.zeros_like(ids), np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            types[row, : len(enc.ids)] = enc.type_ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = types
        return np.asarray(self.session.run(["logits"], feeds)[0])[:, 0]


def bundle_reranker(
    bundle: OnnxBundle, providers: list[str] | None = None, threads: int = 0
) -> OnnxReranker | None:
    """The bundle's re-ranker when it was built with one, else None."""
    if not bundle.has_role(RERANKER_ROLE):
        return None
    return OnnxReranker(bundle.role_dir(RERANKER_ROLE), providers, threads, spinning=False)


def configured_reranker(path: Path | None, bundle: OnnxBundle | None = None) -> Reranker | None:
    """The re-ranker at ``SLIPWAY_RERANKER_PATH`` (``IndexSettings.reranker_path``: a directory
    with ``model.onnx`` runs on onnxruntime, any other on PyTorch), else ``bundle``'s own when
    given and built with one; None otherwise. The service, the CLI and the benchmarks all load
    it here."""
    if path is not None:
        if (Path(path) / "model.onnx").is_file():
            return OnnxReranker(Path(path), spinning=False)
        return CrossEncoderReranker(path)
    return bundle_reranker(bundle) if bundle is not None else None


def rerank(
    reranker: Reranker,
    query: str,
    hits: Sequence[tuple[str, float]],
    texts: Sequence[str],
    top_n: int,
) -> list[tuple[str, float]]:
    """The first ``top_n`` hits re-ordered by the re-ranker's score; the rest keep their order."""
    head, tail = list(hits[:top_n]), list(hits[top_n:])
    scores = reranker.score(query, texts[: len(head)])
    ordered = sorted(zip(head, scores, strict=True), key=lambda pair: -pair[1])
    return [(doc, score) for (doc, _), score in ordered] + tail
