"""Process-level tuning of glibc's ``malloc`` for CPU training (called by the CLI, never at import).

PyTorch's CPU allocator is plain ``malloc``. glibc serves blocks above ``M_MMAP_THRESHOLD`` (128 KiB at start)
with a fresh ``mmap`` and returns them with ``munmap`` on free, so every training step that allocates a few
megabyte-sized activations page-faults them in again, zeroed. glibc raises that threshold dynamically when such a
block is freed, but only up to the sizes seen so far: with length-bucketed batches every longer batch starts
over, and how fast a process runs depends on what it happened to allocate before. We measured 1.6x on
``sahp-sahp-base`` (MOOC, 1 thread) and EasyTPP's THP / SAHP / RMTPP running 1.5-1.8x faster in a process that
had already evaluated a model (see ``BENCHMARKS.md``).

``tune_allocator`` fixes both thresholds (which also turns the dynamic adjustment off): blocks up to 32 MiB (the
largest threshold glibc accepts on 64-bit) come from the heap and are reused; the heap is trimmed back to the OS
only above 256 MiB of free top memory. Memory freed by PyTorch is then kept by the process instead of returned
(peak RSS is unchanged; RSS between peaks can stay higher).

Skipped when ``MTPP_MALLOC_TUNING=0``, when the user set glibc's own ``MALLOC_MMAP_THRESHOLD_`` /
``MALLOC_TRIM_THRESHOLD_`` (or ``GLIBC_TUNABLES``), and where there is no glibc ``mallopt`` (macOS, Windows, musl).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 2**20
TRIM_THRESHOLD_BYTES = 256 * 2**20
OPT_OUT_ENV = "MTPP_MALLOC_TUNING"
USER_SETTINGS_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")


def tune_allocator() -> bool:
    """Fix glibc's mmap and trim thresholds for this process (see the module doc); ``True`` if applied."""
    if os.environ.get(OPT_OUT_ENV, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(k in os.environ for k in USER_SETTINGS_ENV) or not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    mmap_ok = bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    return mmap_ok and bool(mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))
