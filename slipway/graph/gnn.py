"""Unsupervised entity embeddings: a 2-layer GraphSAGE or GCN trained by link prediction.

The entity graph's co-occurrence edges are split (seeded) into train, validation and test edges;
held-out edges are removed from the message-passing graph. The encoder learns to score edges
above random non-edges (dot-product decoder, BCE loss, fresh negatives each epoch); the epoch
with the best validation AUC is kept, and the final embeddings come from that encoder run over
the full graph. The test AUC is reported beside two baselines on exactly the same test pairs:
the cosine similarity of the raw input features, and random scores.

Full-batch on CPU: message passing is a sparse CSR product (``torch.sparse.mm``), about five
times faster and far lighter on memory than gather/scatter over an edge list, and the first
layer's aggregation of the constant input features is computed once per graph. On two cores an
epoch of a 50k-node, 500k-edge graph with 384-d features takes about 1 s (SAGE) or 0.8 s (GCN),
validation included. Seeded runs are bit-for-bit reproducible on one machine and thread count.
"""

from __future__ import annotations

import copy
import time
import warnings
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from sklearn.metrics import roc_auc_score
from torch_geometric.nn import GCNConv, SAGEConv

MIN_EDGES = 10
_NEGATIVE_ROUNDS = 50

GnnModel = Literal["sage", "gcn"]


@dataclass(frozen=True)
class GnnConfig:
    """Encoder, optimiser and split settings of one training run."""

    model: GnnModel = "sage"
    hidden: int = 128
    out: int = 64
    epochs: int = 100
    lr: float = 0.01
    weight_decay: float = 5e-4
    dropout: float = 0.2
    val_fraction: float = 0.1
    test_fraction: float = 0.1
    seed: int = 0
    patience: int = 20  # epochs without a better validation AUC before stopping; 0 = never

    def __post_init__(self) -> None:
        """Reject settings no run can use."""
        if self.model not in ("sage", "gcn"):
            raise ValueError(f"GnnConfig.model must be 'sage' or 'gcn'; got {self.model!r}")
        for name in ("hidden", "out", "epochs"):
            if getattr(self, name) < 1:
                raise ValueError(f"GnnConfig.{name} must be at least 1; got {getattr(self, name)}")
        if self.lr <= 0 or self.weight_decay < 0 or not 0 <= self.dropout < 1:
            raise ValueError(
                "GnnConfig needs lr > 0, weight_decay >= 0 and 0 <= dropout < 1; got "
                f"lr={self.lr}, weight_decay={self.weight_decay}, "
                f"dropout={self.dropout}"
            )
        if self.patience < 0:
            raise ValueError(f"GnnConfig.patience must be >= 0; got {self.patience}")
        if (
            not 0 < self.val_fraction < 1
            or not 0 < self.test_fraction < 1
            or self.val_fraction + self.test_fraction >= 1
        ):
            raise ValueError(
                "GnnConfig.val_fraction and test_fraction must be in (0, 1) and sum "
                f"to less than 1; got {self.val_fraction} and {self.test_fraction}"
            )

    def as_params(self) -> dict[str, str | int | float]:
        """The settings as MLflow parameters, prefixed ``gnn_`` so they never clash."""
        return {f"gnn_{key}": value for key, value in asdict(self).items()}


@dataclass
class GnnResult:
    """Embeddings of one run with its training history and held-out link-prediction AUCs."""

    embeddings: np.ndarray
    losses: list[float]
    val_aucs: list[float]
    test_auc: float
    cosine_auc: float
    random_auc: float
    epoch_seconds: float  # mean wall time of an epoch: negatives, step and validation AUC
    best_epoch: int  # 0-based index into losses and val_aucs
    nodes: int
    edges: int
    config: GnnConfig

    def metrics(self) -> dict[str, float]:
        """The summary numbers as MLflow metrics."""
        return {
            "link_auc": self.test_auc,
            "cosine_auc": self.cosine_auc,
            "random_auc": self.random_auc,
            "epoch_seconds": self.epoch_seconds,
            "best_epoch": float(self.best_epoch),
            "nodes": float(self.nodes),
            "edges": float(self.edges),
        }


@dataclass(frozen=True)
class _Graph:
    """A message-passing graph: its CSR adjacency and the input features aggregated over it."""

    adj: torch.Tensor
    agg: torch.Tensor


class _Encoder(torch.nn.Module):
    """Two graph convolutions with ReLU and dropout between them.

    The first layer's neighbourhood aggregation depends only on the (constant) input features,
    so it is computed once per graph (``_graph``) rather than every epoch: layer one is the
    convolution's linear part applied to it. For SAGE (mean aggregation, root weight) and GCN
    (symmetric normalisation, self-loops, edge weights) this is the same function as
    ``SAGEConv`` / ``GCNConv``; layer two is the PyG convolution itself.
    """

    def __init__(self, config: GnnConfig, in_dim: int) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(in_dim, config.hidden)
        self.root: torch.nn.Linear | None = None
        if config.model == "gcn":
            # The adjacency arrives already normalised, with self-loops (see _adjacency).
            self.conv: torch.nn.Module = GCNConv(config.hidden, config.out, normalize=False)
        else:
            self.root = torch.nn.Linear(in_dim, config.hidden, bias=False)
            self.conv = SAGEConv(config.hidden, config.out)
        self.dropout = torch.nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, graph: _Graph) -> torch.Tensor:
        """Node embeddings ``(n, out)`` from the features and a graph."""
        hidden = self.lin(graph.agg)
        if self.root is not None:
            hidden = hidden + self.root(x)
        return self.conv(self.dropout(torch.relu(hidden)), graph.adj)


def _graph(
    pairs: np.ndarray, weights: np.ndarray | None, x: torch.Tensor, model: GnnModel
) -> _Graph:
    """The message-passing graph of undirected pairs over features ``x``."""
    adj = _adjacency(pairs, weights, x.shape[0], model)
    return _Graph(adj, torch.sparse.mm(adj, x, "mean") if model == "sage" else adj @ x)


def _check_inputs(
    features: np.ndarray, edges: np.ndarray, weights: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Validated float32 features, int64 edges and float64 weights; ValueError otherwise."""
    features = np.asarray(features)
    edges = np.asarray(edges)
    if edges.size == 0:
        edges = edges.reshape(0, 2)
    if features.ndim != 2 or features.shape[0] < 2 or features.shape[1] < 1:
        raise ValueError(
            f"features must be a 2-D array (nodes, dim) with at least 2 nodes; "
            f"got shape {features.shape}"
        )
    if not np.issubdtype(features.dtype, np.number):
        raise ValueError(f"features must be numeric; got dtype {features.dtype}")
    features = features.astype(np.float32, copy=False)
    if not np.isfinite(features).all():
        bad = int((~np.isfinite(features).all(axis=1)).sum())
        raise ValueError(f"features have NaN or infinite values in {bad} row(s)")
    if edges.ndim != 2 or edges.shape[1] != 2:
        raise ValueError(f"edges must have shape (m, 2); got {edges.shape}")
    if edges.shape[0] < MIN_EDGES:
        raise ValueError(
            f"the entity graph has {edges.shape[0]} co-occurrence edges; link "
            f"prediction needs at least {MIN_EDGES}: add documents or lower the "
            "minimum co-occurrence count the graph is built with"
        )
    if not np.issubdtype(edges.dtype, np.integer):
        raise ValueError(f"edges must be integer node indices; got dtype {edges.dtype}")
    edges = edges.astype(np.int64, copy=False)
    n = features.shape[0]
    if edges.min() < 0 or edges.max() >= n:
        raise ValueError(
            f"edges reference nodes outside 0..{n - 1} (min {edges.min()}, max "
            f"{edges.max()}); features has {n} rows"
        )
    if (edges[:, 0] == edges[:, 1]).any():
        raise ValueError(f"edges contain {int((edges[:, 0] == edges[:, 1]).sum())} self-loop(s)")
    keys = _pair_keys(edges, n)
    if np.unique(keys).size != keys.size:
        raise ValueError(
            f"edges contain {keys.size - np.unique(keys).size} duplicate pair(s); "
            "give each undirected pair once"
        )
    if weights is not None:
        weights = np.asarray(weights, dtype=np.float64)
        if weights.shape != (edges.shape[0],):
            raise ValueError(
                f"weights must have shape ({edges.shape[0]},), one per edge; got {weights.shape}"
            )
        if not np.isfinite(weights).all() or (weights < 0).any():
            raise ValueError("weights must be finite and non-negative")
    return features, edges, weights


def _pair_keys(pairs: np.ndarray, n: int) -> np.ndarray:
    """One int64 key per undirected pair: ``min * n + max``."""
    return np.minimum(pairs[:, 0], pairs[:, 1]) * n + np.maximum(pairs[:, 0], pairs[:, 1])


def _adjacency(
    pairs: np.ndarray, weights: np.ndarray | None, n: int, model: GnnModel
) -> torch.Tensor:
    """Sparse CSR adjacency of undirected pairs: plain for SAGE (mean aggregation), symmetric-
    normalised with self-loops and edge weights for GCN."""
    src = np.concatenate([pairs[:, 0], pairs[:, 1]])
    dst = np.concatenate([pairs[:, 1], pairs[:, 0]])
    if model == "gcn":
        w = np.ones(len(pairs)) if weights is None else weights
        loops = np.arange(n, dtype=np.int64)
        src, dst = np.concatenate([src, loops]), np.concatenate([dst, loops])
        w = np.concatenate([w, w, np.ones(n)])
        deg = np.bincount(dst, weights=w, minlength=n)
        inv = np.where(deg > 0, 1.0 / np.sqrt(np.maximum(deg, 1e-300)), 0.0)
        values = inv[src] * w * inv[dst]
    else:
        values = np.ones(len(src))
    order = np.lexsort((src, dst))
    crow = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(np.bincount(dst, minlength=n), out=crow[1:])
    return _csr(crow, src[order], torch.from_numpy(values[order].astype(np.float32)), (n, n))


@dataclass(frozen=True)
class _Split:
    """Training edges and the held-out validation and test pairs with their 0/1 labels."""

    train: np.ndarray
    train_index: np.ndarray
    train_keys: np.ndarray
    val: np.ndarray
    val_labels: np.ndarray
    test: np.ndarray
    test_labels: np.ndarray


def _split(edges: np.ndarray, n: int, config: GnnConfig, rng: np.random.Generator) -> _Split:
    """Seeded train/validation/test edges, each held-out set non-empty and paired with as many
    non-edges of the full graph."""
    m = len(edges)
    perm = rng.permutation(m)
    n_test = max(1, round(m * config.test_fraction))
    n_val = max(1, round(m * config.val_fraction))
    if m - n_test - n_val < 1:
        raise ValueError(
            f"{m} edges leave no training edges after holding out {n_val} "
            f"validation and {n_test} test edges"
        )
    negatives = _negatives(rng, n, n_val + n_test, np.sort(_pair_keys(edges, n)))
    train_index = perm[n_test + n_val :]
    train = edges[train_index]
    return _Split(
        train=train,
        train_index=train_index,
        train_keys=np.sort(_pair_keys(train, n)),
        val=np.concatenate([edges[perm[n_test : n_test + n_val]], negatives[:n_val]]),
        val_labels=np.r_[np.ones(n_val), np.zeros(n_val)],
        test=np.concatenate([edges[perm[:n_test]], negatives[n_val:]]),
        test_labels=np.r_[np.ones(n_test), np.zeros(n_test)],
    )


def _negatives(rng: np.random.Generator, n: int, count: int, forbidden: np.ndarray) -> np.ndarray:
    """``count`` random node pairs (no self-loops) whose keys are not in sorted ``forbidden``."""
    found: list[np.ndarray] = []
    need = count
    for _ in range(_NEGATIVE_ROUNDS):
        draw = rng.integers(0, n, size=(int(need * 1.2) + 16, 2), dtype=np.int64)
        draw = draw[draw[:, 0] != draw[:, 1]]
        keys = _pair_keys(draw, n)
        at = np.minimum(np.searchsorted(forbidden, keys), max(forbidden.size - 1, 0))
        ok = draw[forbidden[at] != keys] if forbidden.size else draw
        found.append(ok[:need])
        need -= len(found[-1])
        if need == 0:
            return np.concatenate(found)
    raise ValueError(
        f"could not sample {count} non-edges among {n} nodes: the graph is too "
        "dense for link prediction with negative sampling"
    )


def _csr(
    crow: np.ndarray, col: np.ndarray, values: torch.Tensor, size: tuple[int, int]
) -> torch.Tensor:
    """A torch sparse CSR matrix from numpy structure and torch values."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        return torch.sparse_csr_tensor(
            torch.from_numpy(crow), torch.from_numpy(col), values, size=size, check_invariants=False
        )


def _dots(z: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    """``z[src] . z[dst]`` for each pair (no autograd bookkeeping of its own)."""
    src = torch.from_numpy(np.ascontiguousarray(pairs[:, 0]))
    dst = torch.from_numpy(np.ascontiguousarray(pairs[:, 1]))
    return torch.einsum("ij,ij->i", z.index_select(0, src), z.index_select(0, dst))


class _PairDot(torch.autograd.Function):
    """Dot products ``z[src] . z[dst]`` with a deterministic backward.

    Plain indexing's backward is a multi-threaded index_add whose summation order varies on CPU,
    so two seeded runs drift apart; here the gradient is one CSR product instead (rows summed in
    a fixed order), and it is faster too.
    """

    @staticmethod
    def forward(ctx: Any, z: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
        """One dot product per pair."""
        n, count = z.shape[0], len(pairs)
        rows = np.concatenate([pairs[:, 0], pairs[:, 1]])
        order = np.argsort(rows)  # any fixed order: numpy's sort is deterministic
        crow = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=n), out=crow[1:])
        col = np.concatenate([pairs[:, 1], pairs[:, 0]])[order]
        ctx.structure = (crow, col, torch.from_numpy(order % count))
        ctx.save_for_backward(z)
        return _dots(z, pairs)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        """d(sum g_p z_s . z_d)/dz = G z, with G[s, d] = G[d, s] = g_p."""
        (z,) = ctx.saved_tensors
        crow, col, pair = ctx.structure
        weights = _csr(crow, col, grad[pair].contiguous(), (z.shape[0], z.shape[0]))
        return torch.sparse.mm(weights, z), None


def _scores(z: torch.Tensor, pairs: np.ndarray) -> torch.Tensor:
    """Dot-product decoder: one logit per pair."""
    pairs = np.ascontiguousarray(pairs)
    return _PairDot.apply(z, pairs) if z.requires_grad else _dots(z, pairs)


def _auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of scores against 0/1 labels."""
    return float(roc_auc_score(labels, scores))


def _cosine(features: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    """Cosine similarity of the feature rows of each pair."""
    a, b = features[pairs[:, 0]].astype(np.float64), features[pairs[:, 1]].astype(np.float64)
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return (a * b).sum(axis=1) / np.maximum(norms, 1e-12)


def _standardise(features: np.ndarray) -> torch.Tensor:
    """Columns centred and scaled to unit variance (constant columns become zero)."""
    centred = features - features.mean(axis=0, dtype=np.float64)
    scale = centred.std(axis=0)
    return torch.from_numpy((centred / np.where(scale > 1e-8, scale, 1.0)).astype(np.float32))


def _evaluate(encoder: _Encoder, x: torch.Tensor, graph: _Graph, pairs: np.ndarray) -> np.ndarray:
    """Decoder scores of ``pairs`` with the encoder in eval mode (no dropout, no gradients)."""
    encoder.eval()
    with torch.no_grad():
        return _scores(encoder(x, graph), pairs).numpy()


def _fit(
    encoder: _Encoder,
    x: torch.Tensor,
    graph: _Graph,
    split: _Split,
    config: GnnConfig,
    rng: np.random.Generator,
) -> tuple[list[float], list[float], list[float], int]:
    """Train with fresh negatives each epoch and load the best epoch's weights by validation
    AUC; return the losses, validation AUCs, epoch seconds and the best epoch (0-based)."""
    n, count = x.shape[0], len(split.train)
    optimiser = torch.optim.Adam(
        encoder.parameters(), lr=config.lr, weight_decay=config.weight_decay
    )
    labels = torch.cat([torch.ones(count), torch.zeros(count)])
    losses: list[float] = []
    aucs: list[float] = []
    seconds: list[float] = []
    best_state, best_epoch = copy.deepcopy(encoder.state_dict()), 0
    for epoch in range(config.epochs):
        start = time.perf_counter()
        encoder.train()
        optimiser.zero_grad()
        pairs = np.concatenate([split.train, _negatives(rng, n, count, split.train_keys)])
        scores = _scores(encoder(x, graph), pairs)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(scores, labels)
        loss.backward()
        optimiser.step()
        aucs.append(_auc(split.val_labels, _evaluate(encoder, x, graph, split.val)))
        losses.append(float(loss.item()))
        seconds.append(time.perf_counter() - start)
        if aucs[-1] > aucs[best_epoch] or epoch == 0:
            best_state, best_epoch = copy.deepcopy(encoder.state_dict()), epoch
        elif config.patience and epoch - best_epoch >= config.patience:
            break
    encoder.load_state_dict(best_state)
    return losses, aucs, seconds, best_epoch


def train_link_predictor(
    features: np.ndarray, edges: np.ndarray, weights: np.ndarray | None, config: GnnConfig
) -> GnnResult:
    """Train a GNN encoder by link prediction; return its L2-normalised embeddings and AUCs.

    ``edges`` are undirected pairs of row indices of ``features``, each pair once; ``weights``
    (co-occurrence counts, say) weight GCN's normalised propagation; SAGE ignores them.
    """
    features, edges, weights = _check_inputs(features, edges, weights)
    n, m = features.shape[0], edges.shape[0]
    if m >= n * (n - 1) // 2:
        raise ValueError(f"the graph of {n} nodes is complete: no non-edges to contrast with")
    rng = np.random.default_rng(config.seed)
    split = _split(edges, n, config, rng)
    random_auc = _auc(split.test_labels, rng.random(len(split.test)))
    # Standardised columns: the scale the layers' initialisation assumes, whatever the features'
    # own (unit sentence vectors give near-zero first logits, a saddle of the dot-product
    # decoder that weight decay holds GCN in), and without the common direction such vectors
    # share. The cosine baseline still sees the raw features.
    x = _standardise(features)
    train_weights = None if weights is None else weights[split.train_index]
    train_graph = _graph(split.train, train_weights, x, config.model)
    with torch.random.fork_rng(devices=[]):  # seeded dropout and init, global RNG untouched
        torch.manual_seed(config.seed)
        encoder = _Encoder(config, features.shape[1])
        losses, val_aucs, seconds, best_epoch = _fit(encoder, x, train_graph, split, config, rng)
    test_auc = _auc(split.test_labels, _evaluate(encoder, x, train_graph, split.test))
    encoder.eval()
    with torch.no_grad():
        z = encoder(x, _graph(edges, weights, x, config.model))
    return GnnResult(
        embeddings=torch.nn.functional.normalize(z, dim=1).numpy().astype(np.float32),
        losses=losses,
        val_aucs=val_aucs,
        test_auc=test_auc,
        cosine_auc=_auc(split.test_labels, _cosine(features, split.test)),
        random_auc=random_auc,
        epoch_seconds=float(np.mean(seconds)),
        best_epoch=best_epoch,
        nodes=n,
        edges=m,
        config=config,
    )


def nearest(embeddings: np.ndarray, query: int, k: int) -> list[tuple[int, float]]:
    """The ``k`` nodes most cosine-similar to node ``query`` (itself excluded), best first."""
    if not 0 <= query < len(embeddings):
        raise ValueError(f"query {query} is outside 0..{len(embeddings) - 1}")
    norms = np.maximum(np.linalg.norm(embeddings, axis=1), 1e-12)
    sims = (embeddings @ embeddings[query]) / (norms * norms[query])
    sims[query] = -np.inf
    k = max(0, min(k, len(embeddings) - 1))
    top = np.argpartition(-sims, k - 1)[:k] if k else np.array([], dtype=np.int64)
    top = top[np.lexsort((top, -sims[top]))]
    return [(int(i), float(sims[i])) for i in top]


def loss_figure(result: GnnResult) -> Figure:
    """Training loss per epoch with the validation AUC on a twin axis (Agg, no pyplot state)."""
    fig = Figure(figsize=(7, 4), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    epochs = np.arange(len(result.losses))
    ax.plot(epochs, result.losses, color="tab:blue", label="training loss (BCE)")
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss", color="tab:blue")
    twin = ax.twinx()
    twin.plot(epochs, result.val_aucs, color="tab:orange", label="validation AUC")
    twin.axvline(result.best_epoch, color="tab:gray", linestyle="--", linewidth=1)
    twin.set_ylabel("validation AUC", color="tab:orange")
    ax.set_title(
        f"{result.config.model.upper()} link prediction: test AUC {result.test_auc:.3f}"
        f" (cosine {result.cosine_auc:.3f}, random {result.random_auc:.3f})"
    )
    fig.tight_layout()
    return fig


def log_to_mlflow(result: GnnResult) -> None:
    """Log parameters, metrics, per-epoch history and the loss figure to the active MLflow run."""
    import mlflow
    from mlflow.entities import Metric

    run = mlflow.active_run()
    if run is None:
        return
    mlflow.log_params(result.config.as_params())
    mlflow.log_metrics(result.metrics())
    now = int(time.time() * 1000)
    history = [
        Metric(key, float(value), now, epoch)
        for epoch, (loss, auc) in enumerate(zip(result.losses, result.val_aucs, strict=True))
        for key, value in (("gnn_loss", loss), ("gnn_val_auc", auc))
    ]
    client = mlflow.MlflowClient()
    for start in range(0, len(history), 1000):  # one request per 1000 values, not per epoch
        client.log_batch(run.info.run_id, metrics=history[start : start + 1000])
    mlflow.log_figure(loss_figure(result), "gnn/loss_curve.png")
