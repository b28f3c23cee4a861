"""Sentence embeddings from an ONNX transformer: tokenize, run, pool, normalise."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tokenizers import Encoding, Tokenizer

from slipway.onnx.session import open_session


class Embedder(Protocol):
    """Anything that turns texts into a matrix of unit vectors."""

    dimension: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


@dataclass(frozen=True)
class PoolingConfig:
    """How token states become one vector (sentence-transformers' pooling config)."""

    mode: str = "mean"
    normalize: bool = True
    max_length: int = 256

    @classmethod
    def from_model_dir(cls, model_dir: Path) -> PoolingConfig:
        """Read ``1_Pooling/config.json``, ``modules.json`` and ``sentence_bert_config.json``."""
        mode, normalize, max_length = "mean", False, 256
        pooling = model_dir / "1_Pooling" / "config.json"
        if pooling.is_file():
            cfg = json.loads(pooling.read_text())
            if cfg.get("pooling_mode_cls_token"):
                mode = "cls"
            elif cfg.get("pooling_mode_max_tokens"):
                mode = "max"
        modules = model_dir / "modules.json"
        if modules.is_file():
            normalize = any(
                "Normalize" in m.get("type", "") for m in json.loads(modules.read_text())
            )
        sbert = model_dir / "sentence_bert_config.json"
        if sbert.is_file():
            max_length = int(json.loads(sbert.read_text()).get("max_seq_length", max_length))
        return cls(mode=mode, normalize=normalize, max_length=max_length)


def pool(hidden: np.ndarray, mask: np.ndarray, config: PoolingConfig) -> np.ndarray:
    """Pool token states ``(batch, tokens, dim)`` under an attention mask to ``(batch, dim)``."""
    if config.mode == "cls":
        out = hidden[:, 0]
    elif config.mode == "max":
        out = np.where(mask[..., None] > 0, hidden, -np.inf).max(axis=1)
    else:
        m = mask[..., None].astype(hidden.dtype)
        out = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
    if config.normalize:
        out = out / np.clip(np.linalg.norm(out, axis=1, keepdims=True), 1e-12, None)
    return out.astype(np.float32, copy=False)


class OnnxEmbedder:
    """Embeds texts with an exported ONNX encoder; batches are length-sorted to cut padding.

    Small batches (8) suit dynamic int8: activations are quantized with one scale per batch,
    so fewer texts per batch means tighter ranges (measured: higher min cosine, same speed).
    """

    def __init__(
        self,
        model_dir: Path,
        providers: list[str] | None = None,
        threads: int = 0,
        batch_size: int = 8,
        model_file: str = "model.onnx",
        spinning: bool = True,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.pooling = PoolingConfig.from_model_dir(self.model_dir)
        self.batch_size = batch_size
        self.session = open_session(self.model_dir / model_file, providers, threads, spinning)
        self.provider = self.session.get_providers()[0]
        self._inputs = {i.name for i in self.session.get_inputs()}
        self.tokenizer = Tokenizer.from_file(str(self.model_dir / "tokenizer.json"))
        self.tokenizer.enable_truncation(max_length=self.pooling.max_length)
        self.tokenizer.no_padding()
        self.dimension = int(self.session.get_outputs()[0].shape[-1])

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Tokens per text after truncation."""
        return [len(e.ids) for e in self.tokenizer.encode_batch(list(texts))]

    def encode(self, texts: Sequence[str]) -> list[Encoding]:
        """Token encodings of ``texts`` (truncated, unpadded), as :meth:`embed_encodings`
        takes them."""
        return list(self.tokenizer.encode_batch(list(texts)))

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors ``(len(texts), dimension)`` in input order."""
        return self.embed_encodings(self.encode(texts))

    def embed_encodings(self, encodings: Sequence[Encoding]) -> np.ndarray:
        """Unit vectors for already tokenized texts, in input order."""
        if not encodings:
            return np.zeros((0, self.dimension), dtype=np.float32)
        order = np.argsort([-len(e.ids) for e in encodings], kind="stable")
        out = np.empty((len(encodings), self.dimension), dtype=np.float32)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            out[idx] = self._run([encodings[i] for i in idx])
        return out

    def warm_up(self) -> tuple[int, int]:
        """Run the largest batch the encoder forms (``batch_size`` texts of the full length)
        once, so onnxruntime's buffers reach their working size before traffic comes, not
        under it; returns that shape."""
        long = self.tokenizer.encode(" ".join(["warm"] * self.pooling.max_length))
        self.embed_encodings([long] * self.batch_size)
        return self.batch_size, len(long.ids)

    def _run(self, encodings: list[Encoding]) -> np.ndarray:
        width = max(len(e.ids) for e in encodings)
        ids = np.zeros((len(encodings), width), dtype=np.int64)
        mask = np.zeros_like(ids)
        for row, enc in enumerate(encodings):
            ids[row, : len(enc.ids)] = enc.ids
            mask[row, : len(enc.ids)] = 1
        feeds = {"input_ids": ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feeds["token_type_ids"] = np.zeros_like(ids)
        hidden = self.session.run(None, feeds)[0]
        return pool(hidden, mask, self.pooling)


def model_fingerprint(model_dir: Path, model_file: str = "model.onnx") -> str:
    """SHA-256 of an embedder's graph, tokenizer and pooling: same fingerprint, same vectors."""
    digest = hashlib.sha256()
    for name in (model_file, "tokenizer.json", "1_Pooling/config.json", "modules.json"):
        path = Path(model_dir) / name
        if path.is_file():
            digest.update(name.encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of two equally shaped matrices."""
    na = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.clip(na, 1e-12, None)
