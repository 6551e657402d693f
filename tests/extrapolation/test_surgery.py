"""Weight surgery: scale, low-rank and window checkpoints against independent computations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from opdlens import OpdlensError, open_run
from opdlens.extrapolation.surgery import (
    parse_layers,
    surgery_lowrank,
    surgery_scale,
    surgery_window,
)


def _load(run: Path, step: int) -> dict[str, torch.Tensor]:
    return load_file(run / f"checkpoint-{step}/model.safetensors")


def test_scale(random_run: Path, tmp_path: Path) -> None:
    path = surgery_scale(open_run(random_run), 5, 0.25, tmp_path / "s")
    got, w0, wt = load_file(path / "model.safetensors"), _load(random_run, 0), _load(random_run, 5)
    for name in got:
        if ".mlp." in name or ".self_attn." in name:
            want = (w0[name].double() + 0.25 * (wt[name].double() - w0[name].double())).float()
            assert torch.allclose(got[name], want, atol=1e-6), name
        else:
            assert torch.equal(got[name], wt[name]), name
    with safe_open(path / "model.safetensors", "pt") as f:
        assert f.metadata()["factor"] == "0.25"
    with pytest.raises(ValueError, match="finite number ≥ 0"):
        surgery_scale(open_run(random_run), 5, -1.0, tmp_path / "s2")


def check_lowrank(path: Path, run: Path, keep_norm: bool) -> None:
    """The rank-2 truncation `path` holds equals numpy's float64 SVD of Δ_5 (rescaled if asked)."""
    got, w0, wt = load_file(path / "model.safetensors"), _load(run, 0), _load(run, 5)
    for name in ("model.layers.1.mlp.down_proj.weight", "model.layers.2.self_attn.k_proj.weight"):
        delta = (wt[name].double() - w0[name].double()).numpy()
        u, s, vt = np.linalg.svd(delta, full_matrices=False)
        trunc = (u[:, :2] * s[:2]) @ vt[:2]
        if keep_norm:
            trunc *= np.linalg.norm(delta) / np.linalg.norm(trunc)
        assert np.allclose((got[name].double() - w0[name].double()).numpy(), trunc, atol=2e-5), name
    assert torch.equal(got["model.norm.weight"], wt["model.norm.weight"])


@pytest.mark.parametrize("keep_norm", [False, True])
def test_lowrank_matches_numpy_svd(random_run: Path, tmp_path: Path, keep_norm: bool) -> None:
    path = surgery_lowrank(open_run(random_run), 5, 2, tmp_path / "l", keep_norm=keep_norm)
    check_lowrank(path, random_run, keep_norm)
    with pytest.raises(ValueError, match="--rank must be a whole number"):
        surgery_lowrank(open_run(random_run), 5, 0, tmp_path / "l2")


def test_window(random_run: Path, tmp_path: Path) -> None:
    path = surgery_window(open_run(random_run), 5, tmp_path / "w", layers="1-2", blocks=["mlp"])
    got, w0, wt = load_file(path / "model.safetensors"), _load(random_run, 0), _load(random_run, 5)
    for name in got:
        inside = any(f"layers.{i}.mlp." in name for i in (1, 2))
        assert torch.equal(got[name], (wt if inside else w0)[name]), name
    assert parse_layers("7") == (7, 7)
    with pytest.raises(ValueError, match="FIRST-LAST"):
        parse_layers("5-x")
    with pytest.raises(OpdlensError, match="No tensor lies in layers"):
        surgery_window(open_run(random_run), 5, tmp_path / "w2", layers="10-12")
    with pytest.raises(ValueError, match="needs --layers"):
        surgery_window(open_run(random_run), 5, tmp_path / "w3")
