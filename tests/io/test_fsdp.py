"""verl FSDP rank files holding real DTensors (written by two gloo processes) reassemble exactly."""

from __future__ import annotations

import pytest
import torch
from torch.distributed.tensor import DTensor

import opdlens


def _rank_states(actor):
    return [
        torch.load(actor / f"model_world_size_2_rank_{r}.pt", weights_only=False) for r in (0, 1)
    ]


@pytest.mark.parametrize("arch", ["llama", "mixtral"])
def test_dtensor_rank_files_reassemble(verl_dtensor_runs, arch):
    root = verl_dtensor_runs[arch]
    run = opdlens.open_run(root)
    assert run.base.layout == "verl-fsdp" and run.steps == [2, 4]
    actor = root / "global_step_4" / "actor"
    assert len(run.checkpoint(4).files) == 2
    ranks = _rank_states(actor)
    for name in run.tensor_names:
        parts = [r[name] for r in ranks]
        assert isinstance(parts[0], DTensor)
        full = torch.cat([p.to_local() for p in parts], dim=0)
        got = run.checkpoint(4).tensor(name)
        assert tuple(got.shape) == tuple(parts[0].shape) == run.checkpoint(4).spec(name).shape
        assert torch.equal(got, full), name


def test_dtensor_uneven_rows(verl_dtensor_runs):
    root = verl_dtensor_runs["llama"]
    ranks = _rank_states(root / "global_step_2" / "actor")
    local = [r["model.embed_tokens.weight"].to_local() for r in ranks]
    assert [t.shape[0] for t in local] == [51, 50]
    run = opdlens.open_run(root)
    assert run.checkpoint(2).tensor("model.embed_tokens.weight").shape == (101, 32)


def test_dtensor_planted_update(verl_dtensor_runs):
    from checkpoints import planted_direction

    run = opdlens.open_run(verl_dtensor_runs["mixtral"])
    name = "model.layers.0.mlp.experts.down_proj"
    d = planted_direction(name, run.checkpoint(4).spec(name).shape)
    torch.testing.assert_close(run.delta(name, 4, ref=2), 2 * d, rtol=1e-5, atol=1e-6)
