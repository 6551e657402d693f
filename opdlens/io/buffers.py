"""Reuse of large flat buffers within one worker: a sweep's memory is faulted in once, not per read.

`analyze` reads every tensor of every checkpoint into fresh arrays. Freshly mapped memory costs a
page fault and a zeroed page per 4 KiB (several times the cost of the read it holds on a VM), and
`_malloc.release_freed_buffers` gives every freed buffer back to the OS, so each read pays it
again. Inside `pooled()`, `empty` hands out a block this thread allocated before and nothing else
still refers to; outside, it is `np.empty`.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator

import numpy as np

__all__ = ["BufferPool", "empty", "pooled"]

_local = threading.local()


class BufferPool:
    """Flat byte blocks of one thread, each free while nothing but the pool refers to it.

    A block handed out is viewed by the result (numpy keeps its base alive, and so does a torch
    tensor made by `torch.from_numpy`), so a block with no reference outside the pool is
    provably unused: it is never reused while any view of it lives.
    """

    def __init__(self) -> None:
        self._blocks: list[np.ndarray] = []
        self._idle = -1  # reference count of a block held by the pool alone (measured)

    def empty(self, shape: int | tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialised array of this shape and dtype, on a reused block when one is free."""
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64))
        nbytes = max(1, count * dt.itemsize)
        # Indexing, not iterating: a loop variable would hold a reference of its own.
        fits = [
            i
            for i in range(len(self._blocks))
            if self._blocks[i].nbytes >= nbytes and self._free(i)
        ]
        if fits:
            block = self._blocks[min(fits, key=lambda i: self._blocks[i].nbytes)]
        else:
            # None of the free blocks fits: drop them, so the pool never holds more than the
            # arrays in use plus this one (what plain np.empty calls would hold).
            keep = [i for i in range(len(self._blocks)) if not self._free(i)]
            self._blocks = [self._blocks[i] for i in keep]
            self._blocks.append(np.empty(nbytes, dtype=np.uint8))
            if self._idle < 0:  # measured the way _free measures: the pool's list alone
                self._idle = self._refs(len(self._blocks) - 1)
            block = self._blocks[-1]
        return block[: count * dt.itemsize].view(dt).reshape(shape)

    def held_bytes(self) -> int:
        """Bytes of every block the pool holds, in use or free."""
        return sum(b.nbytes for b in self._blocks)

    def _refs(self, i: int) -> int:
        return sys.getrefcount(self._blocks[i])

    def _free(self, i: int) -> bool:
        return self._refs(i) <= self._idle


def empty(shape: int | tuple[int, ...], dtype: np.dtype | type) -> np.ndarray:
    """`np.empty`, served from this thread's pool inside `pooled()`."""
    pool: BufferPool | None = getattr(_local, "pool", None)
    if pool is None:
        return np.empty(shape, dtype=dtype)
    return pool.empty(shape, dtype)


@contextlib.contextmanager
def pooled(pool: BufferPool | None = None) -> Iterator[BufferPool]:
    """Serve this thread's `empty` calls from `pool` (a new one by default) until the block ends.

    Pass the same pool to successive blocks to reuse its blocks across them.
    """
    outer = getattr(_local, "pool", None)
    pool = BufferPool() if pool is None else pool
    _local.pool = pool
    try:
        yield pool
    finally:
        _local.pool = outer
