"""Step: find the base models (packaged defaults or the user's own directories)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from zenml import step

from slipway.config import ModelSettings, get_settings
from slipway.models import ModelSource, embedder_source, generator_source, reranker_source


@step(enable_cache=False)  # cheap, and a cached path could point at a deleted cache directory
def load_base_models(
    embedder_path: str | None = None,
    generator_path: str | None = None,
    reranker_path: str | None = None,
) -> Annotated[dict[str, str], "base_models"]:
    """Local HF directories of the embedder and generator (GGUF converted once, then cached),
    and of a trained cross-encoder re-ranker when ``reranker_path`` is given."""
    env = ModelSettings()
    embedder = embedder_source(Path(embedder_path) if embedder_path else env.embedder_path)
    generator = generator_source(
        Path(generator_path) if generator_path else env.generator_path, get_settings().cache_dir
    )
    sources = [embedder, generator]
    if reranker_path:
        sources.append(reranker_source(Path(reranker_path)))
    return {k: v for source in sources for k, v in _entries(source).items()}


def _entries(source: ModelSource) -> dict[str, str]:
    return {source.role: str(source.path), f"{source.role}_origin": source.origin}
