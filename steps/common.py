"""What every Slipway step shares: a cache policy that follows the ``slipway`` core's code."""

from __future__ import annotations

import hashlib
from pathlib import Path

from zenml.config import CachePolicy


def slipway_source_hash() -> str:
    """A hash of every module of the ``slipway`` package: editing the core invalidates caches."""
    import slipway

    root = Path(slipway.__file__).parent
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


SLIPWAY_CACHE = CachePolicy(cache_func="steps.common.slipway_source_hash")
