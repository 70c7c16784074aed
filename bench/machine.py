"""What every benchmark records about the machine and the process, and the malloc pinning
they share (bench/README.md, "page faults"). Imports nothing heavy: the scripts import it
after setting their thread variables and before NumPy."""

from __future__ import annotations

import ctypes
import os
import platform
import resource
import subprocess
from pathlib import Path

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc <malloc.h>
PIN_MMAP_THRESHOLD = 32 << 20  # the largest glibc accepts (HEAP_MAX_SIZE / 2 on 64-bit)
PIN_TRIM_THRESHOLD = 256 << 20


def set_malloc_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    """Fix glibc's mmap and trim thresholds (disables their adaptation); False if not glibc."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, mmap_bytes) == 1
    return bool(mallopt(M_TRIM_THRESHOLD, trim_bytes) == 1 and ok)


def pin_malloc() -> str:
    """Pin glibc's thresholds high, so no timed call pays page faults; say what happened."""
    if not set_malloc_thresholds(PIN_MMAP_THRESHOLD, PIN_TRIM_THRESHOLD):
        return "not pinned (no glibc mallopt here, or it refused)"
    mmap_mib, trim_mib = PIN_MMAP_THRESHOLD >> 20, PIN_TRIM_THRESHOLD >> 20
    return f"pinned (mmap threshold {mmap_mib} MiB, trim threshold {trim_mib} MiB)"


def minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def git_revision() -> str:
    try:
        out = subprocess.run(
            ["git", "describe", "--always", "--dirty"],  # noqa: S607
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def openblas_core() -> str:
    """Which kernels the OpenBLAS behind Numba's np.dot (SciPy's) runs: OPENBLAS_CORETYPE
    overrides its own choice, and its AVX2 ("Haswell") kernels take about 3x as long as its
    AVX-512 ones for the small products of a time step. Best effort: wheel installs only."""
    forced = os.environ.get("OPENBLAS_CORETYPE")
    suffix = f" (OPENBLAS_CORETYPE={forced})" if forced else ""
    try:
        import scipy  # numba's np.dot calls scipy.linalg.cython_blas

        libs = sorted((Path(scipy.__file__).parent.parent / "scipy.libs").glob("*openblas*.so*"))
        lib = ctypes.CDLL(str(libs[0]))
        get = getattr(lib, "scipy_openblas_get_corename", None) or lib.openblas_get_corename
        get.restype = ctypes.c_char_p
        return f"{get().decode()}{suffix}"
    except (ImportError, IndexError, OSError, AttributeError):
        return f"unknown{suffix}"
