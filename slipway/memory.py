"""Handing freed heap memory back to the operating system.

glibc's ``malloc`` keeps the pages of freed blocks for reuse: after a peak (a batch of long
prompts prefilled together, each step allocating and freeing hundreds of megabytes of
activations) a process keeps its high-water mark for good, although most of it is free.
``malloc_trim(0)`` returns the free pages of every arena (measured on the served decoder:
about 90 MB in 7 ms after eight concurrent 1,500-token prompts). Elsewhere (musl, macOS) this
is a no-op."""

from __future__ import annotations

import ctypes
import ctypes.util
from functools import cache
from typing import Any


@cache
def _libc() -> Any:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name or "libc.so.6")
        return libc if hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def release_free_heap() -> bool:
    """Give the free pages of the C heap back to the OS; False where that cannot be done."""
    libc = _libc()
    if libc is None:
        return False
    libc.malloc_trim(0)
    return True
