"""WeightDynamics on a model changed by hand, against float64 SVDs and inner products in numpy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from checkpoints import tiny_model

from opdlens.analysis.live import WeightDynamics
from opdlens.errors import OptionError


def _move(model: torch.nn.Module, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """Add a rank-2 update (plus a little noise) to every trainable tensor; return the weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                u, v = (
                    torch.randn(p.shape[0], 2, generator=g),
                    torch.randn(2, p.shape[1], generator=g),
                )
                p += scale * (u * torch.tensor([3.0, 1.0])) @ v + 1e-3 * scale * torch.randn(
                    p.shape, generator=g
                )
            else:
                p += scale * torch.randn(p.shape, generator=g)
    return {n: p.detach().clone() for n, p in model.named_parameters()}


@pytest.fixture()
def moved() -> tuple[torch.nn.Module, WeightDynamics, dict, dict, dict]:
    model = tiny_model("llama", seed=0)
    dyn = WeightDynamics()
    dyn.start(model)
    start = {n: p.detach().clone() for n, p in model.named_parameters()}
    first = _move(model, 1, 0.01)
    return model, dyn, start, first, {}


def _svd(d: torch.Tensor) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    u, s, vt = np.linalg.svd(d.double().numpy(), full_matrices=False)
    return u, s, vt


def test_each_matrix_and_block_matches_numpy(moved) -> None:
    model, dyn, start, first, _ = moved
    m = dyn.measure(model, 2)
    total = sum(float(((first[n] - start[n]).double() ** 2).sum()) for n in start)
    rows = m.rows.set_index("tensor")
    for name in start:
        d = first[name] - start[name]
        if d.dim() != 2:
            assert math.isnan(rows.loc[name, "energy_k1"])
            continue
        _, s, _ = _svd(d)
        assert rows.loc[name, "energy_k1"] == pytest.approx(s[0] ** 2 / (s**2).sum(), abs=1e-3)
        assert rows.loc[name, "gap_k1"] == pytest.approx((s[0] - s[1]) / s[0], abs=1e-3)
    for block, g in m.rows.groupby("block"):
        share = sum(float(((first[n] - start[n]).double() ** 2).sum()) for n in set(g["tensor"]))
        assert m.scalars[f"opdlens/update_share/{block}"] == pytest.approx(share / total, rel=1e-5)
    assert m.scalars["opdlens/update_norm"] == pytest.approx(math.sqrt(total), rel=1e-5)
    assert not any(k.startswith("opdlens/align_prev") for k in m.scalars)  # nothing before


def test_alignment_and_alpha_star_against_the_previous_measurement(moved) -> None:
    model, dyn, start, first, _ = moved
    dyn.measure(model, 2)
    second = _move(model, 2, 0.005)
    m = dyn.measure(model, 4, previous=lambda name: first[name])
    rows = m.rows.set_index("tensor")
    cross = prev_sq = now_sq = 0.0
    for name in start:
        dp, dn = (first[name] - start[name]).double(), (second[name] - start[name]).double()
        if dp.dim() == 2:
            up, _, vtp = _svd(dp)
            un, sn, vtn = _svd(dn)
            if (sn[0] - sn[1]) / sn[0] >= 1e-2:
                assert rows.loc[name, "align_prev_left_k1"] == pytest.approx(
                    float(up[:, 0] @ un[:, 0]) ** 2, abs=1e-2
                )
                assert rows.loc[name, "align_prev_right_k1"] == pytest.approx(
                    float(vtp[0] @ vtn[0]) ** 2, abs=1e-2
                )
        if dp.dim() == 2 and ("self_attn" in name or "mlp" in name):  # attention and MLP matrices
            cross += float((dp * dn).sum())
            prev_sq += float((dp**2).sum())
            now_sq += float((dn**2).sum())
    ed = prev_sq - cross
    ee = prev_sq - 2 * cross + now_sq
    assert m.scalars["opdlens/alpha_star"] == pytest.approx(-ed / prev_sq, rel=1e-5)
    rel = math.sqrt(1 - ed * ed / (ee * prev_sq))
    assert m.scalars["opdlens/alpha_rel_error"] == pytest.approx(rel, rel=1e-4)
    assert 0 < m.scalars["opdlens/align_prev_k1/mlp"] <= 1


def test_a_missing_previous_leaves_alpha_out_and_misuse_is_refused(moved) -> None:
    model, dyn, _, _, _ = moved
    dyn.measure(model, 2)

    def gone(name: str) -> torch.Tensor:
        raise OSError("checkpoint-2 was deleted")

    assert "opdlens/alpha_star" not in dyn.measure(model, 4, previous=gone).scalars
    with pytest.raises(OptionError, match="before start"):
        WeightDynamics().measure(model, 1)
    model.model.norm.weight.requires_grad_(False)
    with pytest.raises(OptionError, match="measured parameters changed"):
        dyn.measure(model, 6)
    with pytest.raises(OptionError, match="selected no parameter"):
        WeightDynamics(select=lambda name, p: False).start(model)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_on_cuda_a_model_gives_the_numbers_of_the_cpu() -> None:
    def measured(device: str) -> dict[str, float]:
        model = tiny_model("llama", seed=0).to(device)
        dyn = WeightDynamics()
        dyn.start(model)
        first = _move_on(model, 1, 0.01)
        dyn.measure(model, 2)
        _move_on(model, 2, 0.005)
        return dyn.measure(model, 4, previous=lambda name: first[name]).scalars

    cpu, cuda = measured("cpu"), measured("cuda")
    assert cpu.keys() == cuda.keys()
    for key, value in cpu.items():
        tol = 1e-2 if "align" in key else 1e-3 if "energy" in key else 1e-4
        assert cuda[key] == pytest.approx(value, rel=tol, abs=tol), key


def _move_on(model: torch.nn.Module, seed: int, scale: float) -> dict[str, torch.Tensor]:
    """_move's update, made on the CPU and copied to the model's device."""
    cpu = {n: p.detach().cpu() for n, p in model.named_parameters()}
    shadow = tiny_model("llama", seed=0)
    shadow.load_state_dict(cpu, strict=False)
    moved = _move(shadow, seed, scale)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(moved[n])
    return {n: p.detach().clone() for n, p in model.named_parameters()}
