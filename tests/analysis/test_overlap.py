"""analysis.overlap: one tensor's masks and updates as stored, and top-K subspace overlaps."""

from __future__ import annotations

import math
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import torch

from opdlens import compare, open_run
from opdlens.analysis.overlap import Side, subspace_columns, update_and_mask
from opdlens.analysis.update import read_stored

NAME = "model.layers.0.mlp.down_proj.weight"


def test_update_and_mask_compare_the_stored_values(tmp_path: Path) -> None:
    w0 = (0.02 * torch.randn(8, 16, generator=torch.Generator().manual_seed(0))).bfloat16()
    w = w0.float()
    w[0] += 0.01  # a real change
    w[1] += 1e-7 * w0[1].float()  # rounds back to the same bf16 value
    w[2, :4] = 0.0
    w0[2, :4] = -0.0  # +0 and −0 are equal
    config = {"model_type": "llama"}
    for step, t in ((0, w0), (2, w.bfloat16())):
        checkpoints.write_state_dir(tmp_path / f"checkpoint-{step}", {NAME: t}, config=config)
    run = open_run(tmp_path)
    base, h0 = read_stored(run.base, NAME)
    d, mask, source = update_and_mask(Side(run, 2), NAME, base, h0, run.module(NAME), None)
    stored = w.bfloat16().float().numpy()
    assert mask is d  # Δ ≠ 0 exactly where the stored values differ: no mask is held
    assert np.array_equal(mask.numpy() != 0, stored != w0.float().numpy())
    assert mask[0].all() and not mask[1:].any()
    assert d.dtype == torch.float32
    assert np.array_equal(d.numpy(), stored - w0.float().numpy())
    assert source == h0 + read_stored(run.checkpoint(2), NAME)[1]  # analyze's cache key parts
    _, tol_mask, _ = update_and_mask(Side(run, 2), NAME, base, h0, run.module(NAME), 0.05)
    assert tol_mask is not None and not tol_mask.any()  # every change is below τ = 0.05


def test_equal_infinities_are_unchanged_though_their_difference_is_nan(tmp_path: Path) -> None:
    # 1040 rows of 1024: more than one block, the infinities in the last one.
    g = torch.Generator().manual_seed(1)
    w0 = (0.02 * torch.randn(1040, 1024, generator=g)).bfloat16()
    w0[-1, :3] = float("inf")
    stored = []
    for seed in (1, 2):
        w = w0.float() + (torch.rand(1040, 1024, generator=g) < 0.3) * 0.01 * seed
        w[-1, :3] = float("inf")  # W = W_0 = +inf: unchanged, though Δ = inf − inf = NaN
        w[-1, seed] = float("nan")  # +inf → NaN: changed
        w[-1, 3 + seed] = float("-inf")  # finite → −inf: changed
        for step, t in ((0, w0), (2, w.bfloat16())):
            checkpoints.write_state_dir(tmp_path / f"r{seed}" / f"checkpoint-{step}", {NAME: t},
                                        config={"model_type": "llama"})  # fmt: skip
        stored.append(w.bfloat16().float().numpy())
    runs = [open_run(tmp_path / f"r{seed}") for seed in (1, 2)]
    base, h0 = read_stored(runs[0].base, NAME)
    d, mask, _ = update_and_mask(Side(runs[0], 2), NAME, base, h0, runs[0].module(NAME), None)
    want = [w != w0.float().numpy() for w in stored]  # NaN differs from everything, inf = inf
    assert mask is not None and mask.dtype == torch.bool and np.array_equal(mask.numpy(), want[0])
    assert np.array_equal(d.numpy(), stored[0] - w0.float().numpy(), equal_nan=True)
    # Through compare: the counts of the stored values.
    row = compare(*runs, ranks=(1,), workers=1, scopes=("tensor",)).iloc[0]
    assert (row["changed_a"], row["changed_b"]) == (want[0].sum(), want[1].sum())
    assert row["changed_both"] == (want[0] & want[1]).sum()


def _planted(rows: int, cols: int, seed: int, shared: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    u = torch.linalg.qr(shared + 0.5 * torch.randn(rows, 3, generator=g))[0]
    v = torch.linalg.qr(torch.randn(cols, 3, generator=g))[0]
    return (u * torch.tensor([4.0, 2.0, 1.0])) @ v.T + 0.01 * torch.randn(rows, cols, generator=g)


def test_subspace_columns_match_a_float64_svd() -> None:
    shared = torch.randn(40, 3, generator=torch.Generator().manual_seed(9))
    da, db = _planted(40, 24, 1, shared), _planted(40, 24, 2, shared)
    sq_a, sq_b = float((da.double() ** 2).sum()), float((db.double() ** 2).sum())
    cols, notes, svds = subspace_columns(da, db, sq_a, sq_b, (1, 3, 30), "cpu")
    assert notes == [] and svds == 2
    ua, _, vat = np.linalg.svd(da.double().numpy())
    ub, _, vbt = np.linalg.svd(db.double().numpy())
    for k in (1, 3):
        left = ((ua[:, :k].T @ ub[:, :k]) ** 2).sum() / k
        right = ((vat[:k] @ vbt[:k].T) ** 2).sum() / k
        assert cols[f"subspace_left_k{k}"] == pytest.approx(left, abs=1e-4)
        assert cols[f"subspace_right_k{k}"] == pytest.approx(right, abs=1e-4)
        assert cols[f"subspace_left_random_k{k}"] == k / 40
        assert cols[f"subspace_right_random_k{k}"] == k / 24
    assert math.isnan(cols["subspace_left_k30"]) and math.isnan(cols["subspace_left_random_k30"])
    zero, _, none = subspace_columns(da, 0 * db, sq_a, 0.0, (1,), "cpu")
    assert math.isnan(zero["subspace_left_k1"]) and zero["subspace_left_random_k1"] == 1 / 40
    assert none == 0
    vec, _, _ = subspace_columns(da[0], db[0], 1.0, 1.0, (1,), "cpu")
    assert all(math.isnan(v) for v in vec.values())
    bad, notes, _ = subspace_columns(da, db, math.inf, sq_b, (1,), "cpu")
    assert math.isnan(bad["subspace_left_k1"]) and "NaN or Inf" in notes[0]
