"""Pickled tensors stored as views with zero or overlapping strides: bounded before they are read."""

from __future__ import annotations

import time

import pytest
import torch
from checkpoints import copy_run, same_weights_run, tiny_model
from cli_errors import scan_fails

import opdlens


@pytest.fixture(scope="module")
def bins(tmp_path_factory):
    """A run of two pytorch_model.bin checkpoints, to copy and break."""
    return same_weights_run(tmp_path_factory.mktemp("bins"), "bin")


def _bin(run):
    return run / "checkpoint-1" / "pytorch_model.bin"


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_a_zero_stride_view_that_would_materialise_gigabytes_is_refused(bins, tmp_path, legacy):
    run = copy_run(bins, tmp_path)
    state = dict(tiny_model("llama").state_dict())
    name = "model.layers.0.mlp.up_proj.weight"
    state[name] = torch.zeros(1).expand(100_000, 100_000)  # 4 bytes stored, 40 GB when read
    for step in (0, 1):  # the same shape at every step: only reading it would fail
        torch.save(state, run / f"checkpoint-{step}" / "pytorch_model.bin",
                   _use_new_zipfile_serialization=not legacy)  # fmt: skip
    assert _bin(run).stat().st_size < 2_000_000
    start = time.perf_counter()
    for trust in (False, True):  # a bound on memory, not on code: trusted files too
        with pytest.raises(opdlens.CheckpointError, match=rf"tensor '{name}' of shape "
                           r"\[100000, 100000\] is a view with zero or overlapping strides "
                           r"\[0, 0\] of 4 stored bytes; reading it would materialise "
                           r"40000000000 bytes"):  # fmt: skip
            opdlens.open_run(run, trust_pickle=trust)
    assert time.perf_counter() - start < 10
    scan_fails([run], "pytorch_model.bin: tensor", "would materialise 40000000000 bytes")


def test_a_small_broadcast_buffer_is_still_read(bins, tmp_path):
    """transformers' position_ids: arange(n).expand((1, -1)), a stride-0 view of its storage."""
    run = copy_run(bins, tmp_path)
    state = dict(tiny_model("llama").state_dict())
    state["model.position_ids"] = torch.arange(64).expand((1, -1))
    state["model.mask"] = torch.ones(1, 8).expand(4, 8)  # 128 bytes from 32: within the slack
    torch.save(state, _bin(run))
    ck = opdlens.open_run(run).checkpoint(1)
    assert torch.equal(ck.tensor("model.position_ids"), torch.arange(64)[None])
    assert torch.equal(ck.tensor("model.mask"), torch.ones(4, 8))
