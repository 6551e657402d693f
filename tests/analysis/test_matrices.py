"""One rule for the matrices of a tensor: analyze, surgery and ablate agree on a real MoE run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from planted import SMALL_CONFIG, small_states, write_state_run
from safetensors.numpy import load_file

import opdlens
from opdlens import open_run
from opdlens.analysis.matrices import as_matrices, low_rank, matrix_of, matrix_shape, truncate
from opdlens.extrapolation.ablate import ablate
from opdlens.extrapolation.surgery import surgery_lowrank

EXPERTS = "model.layers.0.mlp.experts.gate_up_proj"  # (experts, 2·inter, hidden) as stored
CONV = "model.layers.0.conv.weight"  # a 3-D kernel that is not stacked experts: (out, in, k)


def _tensor(directory: Path, name: str) -> np.ndarray:
    """One tensor of a checkpoint directory, read by safetensors' numpy API, as float64."""
    for f in sorted(directory.glob("*.safetensors")):
        found = load_file(f)
        if name in found:
            return found[name].astype(np.float64)
    raise KeyError(name)


def _rank_k(delta: np.ndarray, k: int) -> tuple[np.ndarray, float]:
    """numpy's float64 rank-k truncation of one matrix and its energy Σ_{i≤k} σ² / ‖Δ‖²."""
    u, s, vt = np.linalg.svd(delta, full_matrices=False)
    return (u[:, :k] * s[:k]) @ vt[:k], float((s[:k] ** 2).sum() / (s**2).sum())


def _zero(_: Path) -> float:
    return 0.0


def test_analyze_surgery_and_ablate_agree_on_stacked_expert_matrices(planted_runs, tmp_path):
    root = planted_runs("moe")
    run = open_run(root)
    step = max(run.steps)
    w0 = _tensor(root / "checkpoint-0", EXPERTS)
    delta = _tensor(root / f"checkpoint-{step}", EXPERTS) - w0
    assert delta.ndim == 3 and delta.shape[0] == 4  # a real stacked 3-D expert tensor
    ref = [_rank_k(delta[e], 2) for e in range(delta.shape[0])]  # one matrix per expert

    df = opdlens.analyze(run, ranks=(2,), split_fused=False, workers=1)
    rows = df[(df["tensor"] == EXPERTS) & (df["step"] == step) & (df["span"] == "cumulative")]
    rows = rows.set_index("expert").sort_index()
    assert list(rows.index) == [0, 1, 2, 3]
    assert set(zip(rows["rows"], rows["cols"], strict=True)) == {delta.shape[1:]}
    np.testing.assert_allclose(rows["energy_k2"], [e for _, e in ref], atol=1e-6)

    cut = surgery_lowrank(run, step, 2, tmp_path / "surgery", tensors=[EXPERTS])
    got = _tensor(cut, EXPERTS) - w0
    ablate(run, step, _zero, mode="drop", ranks=[2], out=tmp_path / "ablate", keep=True)
    candidate = _tensor(tmp_path / "ablate" / "candidates" / "rank-2", EXPERTS) - w0
    for e, (want, _) in enumerate(ref):
        np.testing.assert_allclose(got[e], want, atol=2e-6)
        np.testing.assert_allclose(candidate[e], want, atol=2e-6)


def test_a_kernel_is_one_out_by_rest_matrix_in_surgery_and_ablate(tmp_path):
    """A 3-D tensor that is not stacked experts: ablate truncates it as surgery does."""
    states = small_states((0, 3))
    g = torch.Generator().manual_seed(7)
    kernel = 0.02 * torch.randn(8, 4, 3, generator=g)
    states[0][CONV], states[3][CONV] = kernel, kernel + 0.01 * torch.randn(8, 4, 3, generator=g)
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    run = open_run(root)
    w0 = _tensor(root / "checkpoint-0", CONV)
    delta = _tensor(root / "checkpoint-3", CONV) - w0
    want = _rank_k(delta.reshape(8, 12), 2)[0].reshape(8, 4, 3)

    cut = surgery_lowrank(run, 3, 2, tmp_path / "surgery", tensors=[CONV])
    np.testing.assert_allclose(_tensor(cut, CONV) - w0, want, atol=2e-6)
    ablate(run, 3, _zero, mode="drop", ranks=[2], out=tmp_path / "ablate", keep=True)
    candidate = _tensor(tmp_path / "ablate" / "candidates" / "rank-2", CONV) - w0
    np.testing.assert_allclose(candidate, want, atol=2e-6)  # was kept whole before


def test_matrix_shapes_and_truncation_against_numpy():
    assert matrix_shape((5,), stacked=True) is None
    assert matrix_shape((6, 4), stacked=True) == (1, 6, 4)  # one expert's 2-D weight
    assert matrix_shape((8, 4, 3), stacked=False) == (1, 8, 12)  # conv: (out, rest)
    assert matrix_shape((4, 6, 2, 3), stacked=True) == (4, 6, 6)  # per expert, (out, rest)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 6, 5, generator=g, dtype=torch.float64)
    assert torch.equal(matrix_of(x, True, 1), x[1])
    assert torch.equal(matrix_of(x, False), x.reshape(3, 30))
    with pytest.raises(ValueError, match="needs an expert index"):
        matrix_of(x, True)
    with pytest.raises(ValueError, match="vector"):
        as_matrices(x[0, 0], False)
    with pytest.raises(ValueError, match="float64"):
        low_rank(x[0].float(), 2)
    got = truncate(x, 2, True, keep_norm=True)
    for e in range(3):
        want = _rank_k(x[e].numpy(), 2)[0]
        want *= np.linalg.norm(x[e].numpy()) / np.linalg.norm(want)
        np.testing.assert_allclose(got[e].numpy(), want, atol=1e-12)
    assert torch.equal(truncate(x, 5, True), x)  # rank ≥ min(rows, cols): kept exactly
