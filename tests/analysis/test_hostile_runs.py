"""Odd but legal runs (issue 22, items 19–20): nothing to analyse, and updates of norm ~2⁻¹³⁰."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_errors import cli_fails  # noqa: E402

import opdlens  # noqa: E402
from opdlens.errors import OpdlensError  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj.weight"
UP = "model.layers.0.mlp.up_proj.weight"


def _save(root: Path, states: dict[int, dict[str, torch.Tensor]]) -> Path:
    for s, state in states.items():
        ck = root / f"checkpoint-{s}"
        ck.mkdir(parents=True)
        save_file(state, ck / "model.safetensors")
    return root


def test_only_integer_buffers_and_an_empty_tensor_is_one_line(tmp_path: Path) -> None:
    run = _save(tmp_path / "run", {s: {"model.layers.0.mlp.counter": torch.tensor([s, 1]),
                                       Q0: torch.zeros(0, 8)} for s in (0, 1, 2)})  # fmt: skip
    cli_fails(["analyze", run, "--out", tmp_path / "o", "--workers", "1", "-q"],
              "Nothing to analyse", "2 selected tensor(s) is skipped", "int64")  # fmt: skip
    cli_fails(["report", run, "--out", tmp_path / "r", "-q"], "Nothing to analyse")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    with pytest.raises(OpdlensError, match="Nothing to analyse"):
        opdlens.analyze(opdlens.open_run(run))


@pytest.mark.parametrize("exponent", [-134, -131, 110])
def test_updates_of_extreme_norm_match_float64(tmp_path: Path, exponent: int) -> None:
    """README: finite weights of any magnitude. ‖Δ‖ ≈ 2^(exponent+4), outside float32's 2^±128
    once squared or rescaled; every metric against a float64 computation on the stored values."""
    g = torch.Generator().manual_seed(1)
    w0, d = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    scale = 2.0**exponent
    states = {s: {Q0: ((w0 + s * d).double() * scale).float(), UP: torch.randn(16, 8, generator=g)}
              for s in (0, 1, 2)}  # fmt: skip
    run = _save(tmp_path / "run", states)
    df = opdlens.analyze(opdlens.open_run(run), ranks=(1, 4), workers=1)
    row = df[(df["tensor"] == Q0) & (df["step"] == 2) & (df["span"] == "cumulative")].iloc[0]
    delta = states[2][Q0].double() - states[0][Q0].double()  # exact: the stored float32 values
    norm = float(torch.linalg.norm(delta / scale)) * scale
    sigma = torch.linalg.svdvals(delta / scale).numpy()  # (8,), scaled back below
    assert np.isfinite(row["update_norm"]) and row["update_norm"] > 0
    assert row["update_norm"] == pytest.approx(norm, rel=1e-6)
    energy = np.cumsum(sigma**2) / np.sum(sigma**2)
    assert row["energy_k1"] == pytest.approx(energy[0], rel=1e-4)
    assert row["energy_k4"] == pytest.approx(energy[3], rel=1e-4)
    assert row["stable_rank"] == pytest.approx(np.sum(sigma**2) / sigma[0] ** 2, rel=1e-4)
    assert row["gap_k1"] == pytest.approx(1 - sigma[1] / sigma[0], abs=1e-4)
