"""glibc malloc tuning for streaming work: give freed tensor buffers back to the OS."""

from __future__ import annotations

import contextlib
import ctypes
import sys

_M_MMAP_THRESHOLD = -3  # glibc mallopt parameter


def release_freed_buffers() -> None:
    """Make glibc map every buffer ≥ 1 MiB separately, so freeing a tensor returns its memory.

    glibc keeps freed buffers below its self-raising mmap threshold (up to 32 MiB) on the heap,
    so streaming one large tensor after another grows RSS by several dead tensors (bounded:
    larger buffers are always mapped). The price is fresh, zeroed pages for every buffer:
    `opdlens extrapolate` measured 1.6× slower with it (BENCHMARKS.md), so only `analyze` and
    its workers call it, never on import, and their reads reuse their own buffers
    (`io.buffers`) to avoid most of that price; a no-op where libc is not glibc.
    """
    if not sys.platform.startswith("linux"):
        return
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 1 << 20)
