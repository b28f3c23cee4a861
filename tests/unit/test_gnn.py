"""GNN link prediction: beats raw-feature cosine on community structure, seeded, logged."""

from __future__ import annotations

import uuid
from pathlib import Path

import mlflow
import numpy as np
import pytest
from matplotlib.figure import Figure
from mlflow import MlflowClient

from slipway.graph.gnn import (
    GnnConfig,
    GnnResult,
    log_to_mlflow,
    loss_figure,
    nearest,
    train_link_predictor,
)

FAST = GnnConfig(epochs=40, hidden=32, out=16)


def block_model(
    seed: int = 0,
    blocks: int = 6,
    size: int = 50,
    p_in: float = 0.15,
    p_out: float = 0.005,
    dim: int = 32,
    signal: float = 0.5,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A stochastic block model: features are a weak community signal plus noise."""
    rng = np.random.default_rng(seed)
    community = np.repeat(np.arange(blocks), size)
    a, b = np.triu_indices(blocks * size, 1)
    same = community[a] == community[b]
    keep = rng.random(a.size) < np.where(same, p_in, p_out)
    edges = np.stack([a[keep], b[keep]], axis=1).astype(np.int64)
    centres = rng.normal(size=(blocks, dim))
    features = signal * centres[community] + rng.normal(size=(blocks * size, dim))
    return features.astype(np.float32), edges, community


@pytest.fixture(scope="module")
def graph() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The synthetic entity graph: 300 nodes in 6 communities."""
    return block_model()


@pytest.fixture(scope="module")
def sage(graph: tuple[np.ndarray, np.ndarray, np.ndarray]) -> GnnResult:
    """One SAGE run on the block model."""
    features, edges, _ = graph
    return train_link_predictor(features, edges, None, FAST)


def test_gnn_beats_cosine_and_random(
    sage: GnnResult, graph: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    features, edges, community = graph
    assert 0.35 <= sage.random_auc <= 0.65
    assert sage.test_auc > sage.random_auc + 0.15
    assert sage.test_auc > sage.cosine_auc
    assert sage.cosine_auc > sage.random_auc  # the features do carry a signal
    assert sage.embeddings.shape == (features.shape[0], FAST.out)
    assert sage.embeddings.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(sage.embeddings, axis=1), 1.0, rtol=1e-5)
    assert len(sage.losses) == len(sage.val_aucs) >= 1
    assert 0 <= sage.best_epoch < len(sage.losses)
    assert sage.val_aucs[sage.best_epoch] == max(sage.val_aucs)
    assert (sage.nodes, sage.edges) == (features.shape[0], edges.shape[0])
    assert set(sage.metrics()) == {
        "link_auc",
        "cosine_auc",
        "random_auc",
        "epoch_seconds",
        "best_epoch",
        "nodes",
        "edges",
    }
    # Nearest neighbours in embedding space mostly share the query's community.
    hits = [
        community[i] == community[q]
        for q in range(0, 300, 25)
        for i, _ in nearest(sage.embeddings, q, 5)
    ]
    assert np.mean(hits) > 0.8


def test_seeded_runs_are_identical(
    sage: GnnResult, graph: tuple[np.ndarray, np.ndarray, np.ndarray]
) -> None:
    features, edges, _ = graph
    again = train_link_predictor(features, edges, None, FAST)
    assert np.array_equal(again.embeddings, sage.embeddings)
    assert again.losses == sage.losses and again.test_auc == sage.test_auc
    other = train_link_predictor(features, edges, None, GnnConfig(**{**FAST.__dict__, "seed": 1}))
    assert not np.array_equal(other.embeddings, sage.embeddings)


def test_gcn_with_weights_runs_and_is_seeded(
    graph: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> None:
    features, edges, _ = graph
    weights = np.random.default_rng(0).integers(1, 5, len(edges)).astype(np.float64)
    config = GnnConfig(model="gcn", epochs=15, hidden=32, out=16)
    result = train_link_predictor(features, edges, weights, config)
    again = train_link_predictor(features, edges, weights, config)
    assert np.array_equal(again.embeddings, result.embeddings)
    assert result.embeddings.shape == (features.shape[0], 16)
    assert np.isfinite(result.embeddings).all()
    assert result.test_auc > result.random_auc + 0.15
    assert result.config.as_params()["gnn_model"] == "gcn"


def test_nearest_excludes_the_query() -> None:
    embeddings = np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32)
    found = nearest(embeddings, 0, 2)
    assert [i for i, _ in found] == [1, 2]
    assert found[0][1] == pytest.approx(0.9 / np.hypot(0.9, 0.1))
    assert len(nearest(embeddings, 0, 10)) == 3


def _valid() -> tuple[np.ndarray, np.ndarray]:
    features, edges, _ = block_model(size=10)
    return features, edges


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (
            lambda f, e, w: (f, e[:5], None),
            "the entity graph has 5 co-occurrence edges; link prediction needs at least 10: add",
        ),
        (lambda f, e, w: (f, [], None), "the entity graph has 0 co-occurrence edges"),
        (lambda f, e, w: (f[:, 0], e, None), "features must be a 2-D array"),
        (
            lambda f, e, w: (np.where(np.arange(len(f))[:, None] == 3, np.nan, f), e, None),
            "NaN or infinite values in 1 row",
        ),
        (lambda f, e, w: (f, np.vstack([e, [[0, len(f)]]]), None), "outside 0..59"),
        (lambda f, e, w: (f, e[:, :1], None), "edges must have shape (m, 2)"),
        (lambda f, e, w: (f, e.astype(np.float64), None), "integer node indices"),
        (lambda f, e, w: (f, np.vstack([e, [[4, 4]]]), None), "self-loop"),
        (lambda f, e, w: (f, np.vstack([e, e[:1, ::-1]]), None), "1 duplicate pair"),
        (lambda f, e, w: (f, e, w[:-1]), "weights must have shape"),
        (lambda f, e, w: (f, e, -w), "finite and non-negative"),
    ],
)
def test_bad_inputs_raise(change, message: str) -> None:  # type: ignore[no-untyped-def]
    features, edges = _valid()
    f, e, w = change(features, edges, np.ones(len(edges)))
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        train_link_predictor(f, e, w, FAST)


def test_bad_config_raises() -> None:
    with pytest.raises(ValueError, match="'sage' or 'gcn'"):
        GnnConfig(model="gat")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sum to less than 1"):
        GnnConfig(val_fraction=0.5, test_fraction=0.5)


def test_complete_graph_raises() -> None:
    a, b = np.triu_indices(6, 1)
    edges = np.stack([a, b], axis=1).astype(np.int64)
    with pytest.raises(ValueError, match="complete"):
        train_link_predictor(np.eye(6, dtype=np.float32), edges, None, FAST)


def test_loss_figure_is_standalone(sage: GnnResult) -> None:
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    fig = loss_figure(sage)
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    assert plt.get_fignums() == before


def test_log_to_mlflow(sage: GnnResult, tmp_path: Path) -> None:
    log_to_mlflow(sage)  # no active run: nothing happens
    assert mlflow.active_run() is None
    previous = mlflow.get_tracking_uri()  # other tests may have pointed MLflow elsewhere
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    try:
        _check_logged(sage, tmp_path)
    finally:
        mlflow.set_tracking_uri(previous)


def _check_logged(sage: GnnResult, tmp_path: Path) -> None:
    name = f"gnn-{uuid.uuid4().hex[:8]}"
    experiment = mlflow.create_experiment(name, artifact_location=tmp_path.as_uri())
    with mlflow.start_run(experiment_id=experiment) as run:
        log_to_mlflow(sage)
    client = MlflowClient()
    data = client.get_run(run.info.run_id).data
    assert data.metrics["link_auc"] == pytest.approx(sage.test_auc)
    assert data.metrics["cosine_auc"] == pytest.approx(sage.cosine_auc)
    assert data.params["gnn_model"] == "sage" and data.params["gnn_epochs"] == str(FAST.epochs)
    losses = client.get_metric_history(run.info.run_id, "gnn_loss")
    assert sorted(m.step for m in losses) == list(range(len(sage.losses)))
    assert [m.value for m in sorted(losses, key=lambda m: m.step)] == pytest.approx(sage.losses)
    aucs = client.get_metric_history(run.info.run_id, "gnn_val_auc")
    assert len(aucs) == len(sage.val_aucs)
    assert "gnn/loss_curve.png" in [a.path for a in client.list_artifacts(run.info.run_id, "gnn")]
