"""Which tensors an extrapolation, surgery or foresight covers: globs, or the matrices of blocks."""

from __future__ import annotations

from pathlib import Path

import pytest
from extrapolation.conftest import MATRICES, shapes, write_run

from opdlens import OptionError, open_run
from opdlens.selection import select_tensors


@pytest.fixture
def linear_run(tmp_path: Path) -> Path:
    """A qwen3-named float32 run (tests/extrapolation/conftest) saved at 0, 1, 2, 4, 8."""
    return write_run(tmp_path / "run")


def test_default_selection_is_attention_and_mlp_matrices(linear_run: Path) -> None:
    assert sorted(select_tensors(open_run(linear_run))) == sorted(MATRICES)
    assert select_tensors(open_run(linear_run), tensors=["*.q_proj.weight"]) == [
        f"model.layers.{i}.self_attn.q_proj.weight" for i in range(3)
    ]
    with pytest.raises(ValueError, match="blocks from attn"):
        select_tensors(open_run(linear_run), modules=["attention"])


def test_blocks_all_and_globs_choose_floating_point_tensors_only(linear_run: Path) -> None:
    run = open_run(linear_run)
    assert select_tensors(run, ["embed", "head"]) == ["lm_head.weight", "model.embed_tokens.weight"]
    assert sorted(select_tensors(run, ["all"])) == sorted(shapes())  # not the int64 step counter
    assert select_tensors(run, None) == select_tensors(run)  # None is the default: attn, mlp
    with pytest.raises(OptionError, match=r"No weight matrix of blocks \['norm'\] in the run"):
        select_tensors(run, ["norm"])  # norms are vectors
    with pytest.raises(
        OptionError, match=r"selects non-floating-point tensors \['model\.step_counter'\]"
    ):
        select_tensors(run, tensors=["model.*"])
    assert select_tensors(run, ["norm"], tensors=["*.norm.weight"]) == ["model.norm.weight"]


def test_the_online_callback_selects_what_select_tensors_selects(linear_run: Path) -> None:
    """One block rule (`in_blocks`) for a run's files and a live model's parameters."""
    import torch
    from torch import nn

    from opdlens import EffOPD

    run = open_run(linear_run)
    model = nn.Module()
    for name in run.base.names():
        *path, leaf = name.split(".")
        owner = model
        for part in path:
            if not hasattr(owner, part):
                owner.add_module(part, nn.Module())
            owner = getattr(owner, part)
        value = run.base.tensor(name)
        owner.register_parameter(leaf, nn.Parameter(value, requires_grad=value.is_floating_point()))
    assert any(p.dtype == torch.int64 for p in model.parameters())  # the step counter
    for modules in [("attn", "mlp"), ("embed", "head"), ("mlp",), ("all",)]:
        online = EffOPD(modules=modules)
        chosen = {n for n, p in model.named_parameters() if online.selects(n, p)}
        assert chosen == set(select_tensors(run, modules)), modules
