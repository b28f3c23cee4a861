"""What the CPU can do, so quantization and thread settings fit the machine they run on."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path

_INTERESTING = ("avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8")


@dataclass(frozen=True)
class CpuInfo:
    """The processor's model name, its SIMD flags and the usable core count."""

    model: str
    flags: frozenset[str]
    cores: int

    @property
    def isa(self) -> str:
        """The best int8 instruction set: ``avx512_vnni``, ``avx512``, ``avx2`` or ``arm64``."""
        if platform.machine().lower() in {"aarch64", "arm64"}:
            return "arm64"
        if "avx512_vnni" in self.flags or "avx_vnni" in self.flags:
            return "avx512_vnni" if "avx512f" in self.flags else "avx2"
        if "avx512f" in self.flags and "avx512bw" in self.flags:
            return "avx512"
        return "avx2"

    def summary(self) -> str:
        """One line: model, cores and the flags that matter for inference."""
        shown = " ".join(f for f in _INTERESTING if f in self.flags) or "none"
        return f"{self.model} | cores={self.cores} | isa={self.isa} | flags={shown}"


def read_cpu_info(cpuinfo: Path = Path("/proc/cpuinfo")) -> CpuInfo:
    """Read the processor description (Linux ``/proc/cpuinfo``; a best effort elsewhere)."""
    model, flags = platform.processor() or platform.machine(), frozenset[str]()
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name" and model in ("", platform.machine(), platform.processor()):
                model = value.strip()
            elif key in ("flags", "Features") and not flags:
                flags = frozenset(value.split())
    cores = (
        len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )
    return CpuInfo(model=model, flags=flags, cores=cores)
