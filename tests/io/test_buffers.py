"""io/buffers: a pooled block is reused only when nothing else refers to it, and bounded."""

from __future__ import annotations

import threading

import numpy as np
import torch

from opdlens.io import buffers
from opdlens.io.buffers import BufferPool, pooled


def _address(a: np.ndarray) -> int:
    return a.__array_interface__["data"][0]


def test_outside_a_pool_empty_is_plain_numpy():
    a = buffers.empty((3, 4), np.float32)
    b = buffers.empty((3, 4), np.float32)
    assert a.shape == (3, 4) and a.dtype == np.float32 and a.flags.c_contiguous
    assert not np.shares_memory(a, b)


def test_a_block_is_reused_once_every_view_of_it_is_gone():
    with pooled() as pool:
        a = buffers.empty(1000, np.float32)
        where = _address(a)
        a[:] = 7.0
        b = buffers.empty(1000, np.float32)  # a is alive: a new block
        assert not np.shares_memory(a, b)
        del a
        c = buffers.empty(500, np.uint16)  # smaller, fits the freed block
        assert _address(c) == where
        assert len(pool._blocks) == 2
        assert pool.held_bytes() == 2 * 4000


def test_torch_views_keep_their_block_in_use():
    with pooled():
        t = torch.from_numpy(buffers.empty((10, 20), np.float32)).T[2:]  # a view of a view
        t.fill_(3.0)
        other = buffers.empty((10, 20), np.float32)
        other[:] = -1.0
        assert bool((t == 3.0).all()), "a live torch view's block was handed out again"
        del t
        again = buffers.empty((10, 20), np.float32)
        assert not np.shares_memory(again, other)


def test_a_larger_request_drops_free_blocks_that_do_not_fit():
    pool = BufferPool()
    with pooled(pool):
        small = buffers.empty(100, np.float64)
        keep = buffers.empty(50, np.float64)
        del small
        big = buffers.empty(10_000, np.float64)
        # The free 800-byte block fitted nothing and went; the one in use stayed.
        assert pool.held_bytes() == keep.nbytes + big.nbytes


def test_shapes_dtypes_and_zero_sizes():
    with pooled():
        for shape, dtype in [
            ((0,), np.float32),
            ((2, 0, 3), np.uint16),
            ((5, 7), np.int8),
            (9, np.float64),
        ]:
            a = buffers.empty(shape, dtype)
            want = (shape,) if isinstance(shape, int) else shape
            assert a.shape == want and a.dtype == np.dtype(dtype)


def test_pools_are_per_thread_and_nest():
    seen = {}

    def worker():
        seen["pool"] = getattr(buffers._local, "pool", None)

    with pooled() as outer:
        t = threading.Thread(target=worker)
        t.start()
        t.join()
        assert seen["pool"] is None  # another thread does not see this thread's pool
        with pooled() as inner:
            assert buffers._local.pool is inner
        assert buffers._local.pool is outer
    assert getattr(buffers._local, "pool", None) is None
