"""Keep freed CPU memory for the next training step instead of handing it back to the kernel.

glibc's ``malloc`` serves every allocation above its mmap threshold (adaptive, at most 32 MiB
on 64-bit) with fresh ``mmap`` pages and returns them with ``munmap`` on free. A CPU training
step allocates many tensors above that size once batches grow (SmolLM2-135M, 8,000 packed
tokens: an MLP activation is 8,000 x 1,536 x 4 bytes = 49 MB), so every step touches
gigabytes of brand-new pages, each first touch a page fault that zeroes the page: in a
profile of the ``smollm2-api`` update, doubling the batch (two groups of 8 episodes instead of
one) multiplied the time of ``mul`` by 6.4 and of ``add`` by 9.7 (the ops that write those
tensors first), where the work only doubled. The usual fix is another allocator (jemalloc, tcmalloc) through
``LD_PRELOAD``; :func:`reuse_freed_memory` gets the same effect from glibc itself, in-process:
no ``mmap`` for large blocks (``M_MMAP_MAX = 0``: they come from the heap) and no trimming of
the heap's free top (``M_TRIM_THRESHOLD`` at its maximum), so a step reuses the pages the
previous step freed. The cost: the process keeps its peak heap resident until it exits.

Process-wide and one-way (called by the backend on a CPU device, ``backend.cpu_memory: reuse``).
"""

from __future__ import annotations

import functools
import logging

log = logging.getLogger("agent_lightning")

M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4


@functools.lru_cache(maxsize=1)
def reuse_freed_memory() -> bool:
    """Tell glibc's ``malloc`` to serve large blocks from the heap and keep freed memory.

    Returns ``True`` when both settings were taken, ``False`` where there is no glibc
    ``mallopt`` (macOS, musl, Windows: the allocator is left as it is). Idempotent.
    """
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    # -1 is read as the largest size_t: the heap's free top is never trimmed.
    taken = mallopt(M_MMAP_MAX, 0) == 1 and mallopt(M_TRIM_THRESHOLD, -1) == 1
    if not taken:
        log.warning("backend.cpu_memory: reuse: glibc's mallopt refused the settings; the allocator is unchanged")
    return taken
