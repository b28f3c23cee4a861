"""Fine-tuning with sentence-transformers: the embedder on (query, positive, hard negatives)
with a multiple-negatives ranking loss, and a cross-encoder re-ranker on labelled pairs.

Both runs are seeded, show the trainer's progress bar, write checkpoints every
``checkpoint_steps`` (keeping ``keep_checkpoints``) and, called again with the same inputs after
a kill or a ``max_steps`` stop, resume from the last complete checkpoint. Checkpoints live in
``checkpoint_dir/<run key>``: the key hashes the base model, the examples and the settings that
shape training, so a run with other data never resumes from a stale checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
import time
import zlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

logger = logging.getLogger(__name__)

Example = tuple[str, str, Sequence[str]]  # (query, positive text, hard-negative texts)
TRAINER_STATE = "trainer_state.json"  # written last into a checkpoint: its presence = complete
LOG_STEPS = 10
# Base keys that sentence-transformers renamed (it warns on loading them); the new name is saved.
RENAMED = frozenset({"word_embedding_dimension"})


class TrainConfig(BaseModel):
    """How a model is fine-tuned (an unknown key is an error)."""

    model_config = ConfigDict(extra="forbid")

    epochs: float = Field(default=1.0, gt=0)
    batch_size: int = Field(default=32, ge=2)
    learning_rate: float = Field(default=2e-5, gt=0)
    warmup_ratio: float = Field(default=0.1, ge=0, lt=1)
    seed: int = 0
    max_seq_length: int = Field(default=256, ge=8)
    negatives: int = Field(default=1, ge=0, description="Hard negatives per example (embedder).")
    cached: bool = Field(
        default=False, description="CachedMultipleNegativesRankingLoss (big batches, less memory)."
    )
    mini_batch_size: int = Field(default=16, ge=1, description="With cached: texts per forward.")
    checkpoint_dir: Path | None = Field(
        default=None, description="Where checkpoints go; unset: '<out_dir>-checkpoints'."
    )
    checkpoint_steps: int = Field(default=100, ge=1)
    keep_checkpoints: int = Field(default=2, ge=1)
    max_steps: int | None = Field(
        default=None,
        ge=1,
        description="Stop (with a checkpoint) at this global step; the learning-rate schedule "
        "stays that of the whole run, so a later call resumes where this one stopped.",
    )
    random_negatives: int = Field(
        default=4,
        ge=0,
        description="Re-ranker: easy negatives per query, drawn (seeded) from the other "
        "queries' texts, besides its hard ones. With hard ones only, every negative resembles "
        "the query while positives include texts search misses, and the re-ranker learns that "
        "resembling the query means irrelevant.",
    )
    balance_labels: bool = Field(
        default=True,
        description="Re-ranker: weigh positive pairs by negatives / positives in the loss.",
    )


@dataclass(frozen=True)
class TrainResult:
    """What a training call did."""

    out_dir: Path
    steps: int  # the global step reached
    epochs: float  # epochs reached
    examples: int  # training rows (embedder: one per example; re-ranker: one per pair)
    seconds: float  # this call's training time
    examples_per_s: float  # rows trained on per second in this call (steps x batch size)
    resumed_from: Path | None
    loss: float | None  # the last logged training loss (else this call's mean)
    completed: bool  # False when max_steps stopped it early


def training_device() -> str:
    """CUDA when torch sees a GPU, else CPU."""
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def run_key(kind: str, base_dir: Path, rows: Sequence[Sequence[Any]], config: TrainConfig) -> str:
    """A short hash of what shapes a run (not of where it checkpoints or when it stops)."""
    shaping = config.model_dump(
        exclude={"checkpoint_dir", "checkpoint_steps", "keep_checkpoints", "max_steps"}
    )
    digest = hashlib.sha256(json.dumps([kind, str(Path(base_dir).resolve()), shaping]).encode())
    for row in rows:
        digest.update(json.dumps(list(row)).encode())
    return digest.hexdigest()[:16]


def last_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete ``checkpoint-N`` in ``run_dir`` (a kill mid-save leaves none)."""
    if not run_dir.is_dir():
        return None
    done = [
        p
        for p in run_dir.glob("checkpoint-*")
        if p.name.split("-")[-1].isdigit() and (p / TRAINER_STATE).is_file()
    ]
    return max(done, key=lambda p: int(p.name.split("-")[-1]), default=None)


def embedder_rows(examples: Sequence[Example], negatives: int) -> dict[str, list[list[str]]]:
    """(query, positive, n negatives) rows, n = ``negatives``, taken round from a place that
    the positive picks (a query's rows then spread over its negatives); an example with fewer
    repeats its own. Those with none go to a second set of (query, positive) rows: batches are
    drawn from one set at a time, so in-batch negatives still apply to them."""
    hard = [
        [q, p, *[negs[(zlib.crc32(p.encode()) + i) % len(negs)] for i in range(negatives)]]
        for q, p, negs in examples
        if negs or not negatives
    ]
    plain = [[q, p] for q, p, negs in examples if not negs and negatives]
    if plain:
        logger.warning("%d of %d examples have no hard negative.", len(plain), len(examples))
    return {name: rows for name, rows in (("hard", hard), ("plain", plain)) if rows}


def embedder_columns(rows: Sequence[Sequence[str]]) -> list[str]:
    """anchor, positive, negative_1...: the columns of ``rows``."""
    return ["anchor", "positive", *(f"negative_{i}" for i in range(1, len(rows[0]) - 1))]


def reranker_rows(
    examples: Sequence[Example], random_negatives: int = 0, seed: int = 0
) -> list[tuple[str, str, float]]:
    """(query, text, 1.0) for each positive and (query, text, 0.0) for each hard negative, once
    each (a query's examples repeat its negatives); a text that is a positive stays one. With
    ``random_negatives``, each query also gets that many easy negatives (0.0): texts of the
    other queries' examples that are neither its positives nor its hard negatives, drawn
    seeded, so that the re-ranker sees texts unlike the query labelled irrelevant too."""
    positives = {(query, positive) for query, positive, _ in examples}
    labels: dict[tuple[str, str], float] = {}
    for query, positive, negatives in examples:
        labels[(query, positive)] = 1.0
        for negative in negatives:
            if (query, negative) not in positives:
                labels.setdefault((query, negative), 0.0)
    if random_negatives:
        for query, text, label in easy_negatives(labels, random_negatives, seed):
            labels.setdefault((query, text), label)
    return [(query, text, label) for (query, text), label in labels.items()]


def easy_negatives(
    labels: Mapping[tuple[str, str], float], per_query: int, seed: int
) -> list[tuple[str, str, float]]:
    """Up to ``per_query`` (query, text, 0.0) rows a query: texts labelled for other queries
    that ``labels`` has no label for with this one, drawn by a generator seeded with ``seed``
    (queries in first-seen order, so the draw is reproducible)."""
    pool = list(dict.fromkeys(text for _, text in labels))
    known: dict[str, set[str]] = {}
    for query, text in labels:
        known.setdefault(query, set()).add(text)
    rng = random.Random(seed)
    rows = []
    for query, seen in known.items():
        candidates = rng.sample(pool, min(len(pool), per_query + len(seen)))
        rows += [(query, text, 0.0) for text in candidates if text not in seen][:per_query]
    return rows


def columns(rows: Sequence[Sequence[Any]], names: Sequence[str]) -> dict[str, list[Any]]:
    """Rows to the column dict that ``datasets.Dataset.from_dict`` takes."""
    return {name: [row[i] for row in rows] for i, name in enumerate(names)}


def stop_at(max_steps: int | None) -> Any:
    """A trainer callback that saves a checkpoint and stops at global step ``max_steps``."""
    from transformers import TrainerCallback

    class StopAt(TrainerCallback):
        def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
            if max_steps is not None and state.global_step >= max_steps:
                control.should_save = True
                control.should_training_stop = True
            return control

    return StopAt()


def training_arguments(args_class: Any, run_dir: Path, config: TrainConfig, **extra: Any) -> Any:
    """The trainer's arguments: seeded, checkpointed, no tracking integrations."""
    import torch

    cuda = training_device() == "cuda"
    bf16 = cuda and torch.cuda.is_bf16_supported()
    return args_class(
        output_dir=str(run_dir),
        num_train_epochs=config.epochs,
        per_device_train_batch_size=config.batch_size,
        learning_rate=config.learning_rate,
        warmup_ratio=config.warmup_ratio,
        seed=config.seed,
        data_seed=config.seed,
        save_strategy="steps",
        save_steps=config.checkpoint_steps,
        save_total_limit=config.keep_checkpoints,
        logging_steps=min(LOG_STEPS, config.checkpoint_steps),
        report_to="none",  # tracking goes through slipway.tracking, not the trainer
        use_cpu=not cuda,
        bf16=bf16,
        fp16=cuda and not bf16,
        dataloader_num_workers=0,
        disable_tqdm=False,
        **extra,
    )


def run_trainer(make_trainer: Callable[[], Any], run_dir: Path, rows: int) -> dict[str, Any]:
    """Train (resuming from the last checkpoint in ``run_dir``, if any); what the run reached."""
    resume = last_checkpoint(run_dir)
    if resume is not None:
        logger.info("Resuming from %s", resume)
    trainer = make_trainer()
    start = 0
    if resume is not None:
        start = json.loads((resume / TRAINER_STATE).read_text()).get("global_step", 0)
    started = time.perf_counter()
    output = trainer.train(resume_from_checkpoint=str(resume) if resume is not None else None)
    seconds = time.perf_counter() - started
    state = trainer.state
    losses = [entry["loss"] for entry in state.log_history if "loss" in entry]
    done = state.global_step - start
    batch = trainer.args.per_device_train_batch_size
    return {
        "steps": state.global_step,
        "epochs": float(state.epoch or 0.0),
        "examples": rows,
        "seconds": seconds,
        "examples_per_s": done * batch / max(seconds, 1e-9),
        "resumed_from": resume,
        "loss": losses[-1] if losses else (output.training_loss if done else None),
        "completed": state.global_step >= state.max_steps,
    }


def checkpoint_root(out_dir: Path, config: TrainConfig) -> Path:
    """``config.checkpoint_dir``, else ``<out_dir>-checkpoints`` beside the output."""
    if config.checkpoint_dir is not None:
        return Path(config.checkpoint_dir)
    return out_dir.with_name(out_dir.name + "-checkpoints")


def seed_all(seed: int) -> None:
    """Seed Python, NumPy and torch (the model's new heads are initialised from it)."""
    from transformers import set_seed

    random.seed(seed)
    set_seed(seed)


def keep_base_keys(base_dir: Path, out_dir: Path, extra: dict[str, Any]) -> None:
    """Put back the base's module-config keys that a newer sentence-transformers save drops
    (``max_seq_length``, ``pooling_mode_mean_tokens``...): readers of the older layout (our ONNX
    embedder, the exporter) then read the saved model as they read the base."""
    for name in ("sentence_bert_config.json", "1_Pooling/config.json"):
        saved, base = out_dir / name, base_dir / name
        if not saved.is_file():
            continue
        config = json.loads(saved.read_text())
        old = json.loads(base.read_text()) if base.is_file() else {}
        if name == "sentence_bert_config.json":
            old = {**old, **extra}
        config.update(
            {k: v for k, v in old.items() if k not in RENAMED and (k not in config or k in extra)}
        )
        saved.write_text(json.dumps(config, indent=2))


def finetune_embedder(
    base_dir: Path, examples: Sequence[Example], out_dir: Path, config: TrainConfig
) -> TrainResult:
    """Fine-tune a sentence-transformers embedder with (Cached)MultipleNegativesRankingLoss on
    (query, positive, hard negatives); save a sentence-transformers directory at ``out_dir``."""
    from datasets import Dataset, DatasetDict
    from sentence_transformers import (
        SentenceTransformer,
        SentenceTransformerTrainer,
        SentenceTransformerTrainingArguments,
    )
    from sentence_transformers.losses import (
        CachedMultipleNegativesRankingLoss,
        MultipleNegativesRankingLoss,
    )
    from sentence_transformers.training_args import BatchSamplers

    if not examples:
        raise ValueError("No training examples: nothing to fine-tune the embedder on.")
    sets = embedder_rows(examples, config.negatives)
    rows = [row for part in sets.values() for row in part]
    run_dir = checkpoint_root(out_dir, config) / run_key("embedder", base_dir, rows, config)
    seed_all(config.seed)
    model = SentenceTransformer(str(base_dir), device=training_device(), local_files_only=True)
    served_length = model.max_seq_length
    model.max_seq_length = config.max_seq_length
    loss = (
        CachedMultipleNegativesRankingLoss(
            model, mini_batch_size=config.mini_batch_size, show_progress_bar=False
        )
        if config.cached
        else MultipleNegativesRankingLoss(model)
    )
    args = training_arguments(
        SentenceTransformerTrainingArguments,
        run_dir,
        config,
        batch_sampler=BatchSamplers.NO_DUPLICATES,
    )

    def make_trainer() -> Any:
        return SentenceTransformerTrainer(
            model=model,
            args=args,
            train_dataset=DatasetDict(
                {
                    name: Dataset.from_dict(columns(part, embedder_columns(part)))
                    for name, part in sets.items()
                }
            ),
            loss=loss,
            callbacks=[stop_at(config.max_steps)],
        )

    reached = run_trainer(make_trainer, run_dir, len(rows))
    model.max_seq_length = served_length  # the served model keeps the base's window
    model.save(str(out_dir), create_model_card=False)
    keep_base_keys(base_dir, out_dir, {"max_seq_length": served_length})
    return TrainResult(out_dir=out_dir, **reached)


def train_reranker(
    base_dir: Path, examples: Sequence[Example], out_dir: Path, config: TrainConfig
) -> TrainResult:
    """Train a cross-encoder (one logit) from the embedder's backbone with BinaryCrossEntropyLoss
    on (query, positive)=1, (query, hard negative)=0 and ``config.random_negatives`` easy
    (query, other query's text)=0 a query, positives weighed by negatives / positives with
    ``config.balance_labels``; save it at ``out_dir`` (a Hugging Face sequence-classification
    directory with its tokenizer, loadable by ``CrossEncoder``)."""
    import torch
    from datasets import Dataset
    from sentence_transformers.cross_encoder import (
        CrossEncoder,
        CrossEncoderTrainer,
        CrossEncoderTrainingArguments,
    )
    from sentence_transformers.cross_encoder.losses import BinaryCrossEntropyLoss

    rows = reranker_rows(examples, config.random_negatives, config.seed)
    if not rows or all(label == 1.0 for _, _, label in rows):
        raise ValueError("The re-ranker needs positive and negative pairs; got no negatives.")
    run_dir = checkpoint_root(out_dir, config) / run_key("reranker", base_dir, rows, config)
    seed_all(config.seed)
    model = CrossEncoder(
        str(base_dir),
        num_labels=1,
        max_length=config.max_seq_length,
        device=training_device(),
        local_files_only=True,
    )
    args = training_arguments(CrossEncoderTrainingArguments, run_dir, config)
    weight = positive_weight(rows) if config.balance_labels else 1.0
    logger.info("Re-ranker: %d pairs, positives weighed %.2f", len(rows), weight)

    def make_trainer() -> Any:
        return CrossEncoderTrainer(
            model=model,
            args=args,
            train_dataset=Dataset.from_dict(columns(rows, ["query", "text", "label"])),
            loss=BinaryCrossEntropyLoss(model, pos_weight=torch.tensor(weight)),
            callbacks=[stop_at(config.max_steps)],
        )

    reached = run_trainer(make_trainer, run_dir, len(rows))
    model.save(str(out_dir), create_model_card=False)
    return TrainResult(out_dir=out_dir, **reached)


def positive_weight(rows: Sequence[tuple[str, str, float]]) -> float:
    """Negatives / positives among ``rows`` (1.0 when either is missing): the weight that gives
    both classes the same say in the binary cross-entropy."""
    positives = sum(1 for _, _, label in rows if label > 0.5)
    negatives = len(rows) - positives
    return negatives / positives if positives and negatives else 1.0
