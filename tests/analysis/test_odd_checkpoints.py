"""Odd but legal checkpoints: buffers, float8, empty tensors and extreme magnitudes never abort."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from planted import (
    RANKS,
    SMALL_CONFIG,
    compare,
    load_states,
    reference,
    small_states,
    write_state_run,
)

import opdlens
from opdlens.analysis.analyze import compute_analysis
from opdlens.analysis.options import AnalyzeOptions

MASK = "model.layers.0.self_attn.causal_mask"  # bool buffer
POSITIONS = "model.position_ids"  # int64 buffer
QUANT = "model.layers.1.self_attn.o_proj.qweight"  # int8 quantized weights
EMPTY = "model.layers.0.mlp.gate_proj.weight"  # (0, 32)
F8 = {"model.layers.0.mlp.up_proj.weight": torch.float8_e4m3fn,
      "model.layers.1.mlp.up_proj.weight": torch.float8_e5m2}  # fmt: skip
SKIPPED = (MASK, POSITIONS, QUANT, EMPTY)


def _f8(name: str, step: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(len(name))
    w0 = 0.1 * torch.randn(24, 16, generator=g)
    d = torch.randn(24, 1, generator=g) @ torch.randn(1, 16, generator=g)  # rank 1
    return (w0 + 0.05 * step * d).to(dtype)


@pytest.fixture(scope="module")
def odd_run(tmp_path_factory):
    states = small_states((0, 1, 2))
    for s, st in states.items():
        st[MASK] = torch.tril(torch.ones(8, 8, dtype=torch.bool))
        st[POSITIONS] = torch.arange(8).reshape(1, 8) + s  # changes, still not a weight
        st[QUANT] = torch.randint(
            -127, 127, (16, 16), generator=torch.Generator().manual_seed(s)
        ).to(torch.int8)
        st[EMPTY] = torch.zeros(0, 32)
        st.update({n: _f8(n, s, dt) for n, dt in F8.items()})
    return write_state_run(tmp_path_factory.mktemp("odd"), states, SMALL_CONFIG)


def _float64_states(root) -> dict[int, dict[str, torch.Tensor]]:
    return {
        s: {n: t for n, t in st.items() if n not in SKIPPED} for s, st in load_states(root).items()
    }


def test_buffers_float8_and_empty_tensors_through_the_api(odd_run):
    res = compute_analysis(opdlens.open_run(odd_run), AnalyzeOptions(ranks=RANKS, workers=1))
    df = res.frame
    assert not set(SKIPPED) & set(df["tensor"])
    for name in SKIPPED:  # one note each, naming the tensor
        notes = [w for w in res.warnings if f"'{name}'" in w]
        assert len(notes) == 1 and "skipped" in notes[0], res.warnings
    assert any("int8" in w and QUANT in w for w in res.warnings)
    assert any("[0, 32], no elements" in w for w in res.warnings)
    for name, dt in F8.items():
        notes = [w for w in res.warnings if f"'{name}'" in w]
        assert len(notes) == 1 and str(dt).removeprefix("torch.") in notes[0]
    # Every analysed tensor, float8 ones included, matches float64 (float8 upcast exactly).
    compare(df, reference(_float64_states(odd_run), SMALL_CONFIG))
    up = df[df["tensor"] == "model.layers.0.mlp.up_proj.weight"]
    assert (up["energy_k1"] > 0.95).all() and not up["nonfinite"].any()  # rank 1 + rounding


def test_same_run_through_the_cli(odd_run, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-m", "opdlens", "analyze", str(odd_run), "--out", str(out),
         "--ranks", "1,3", "--workers", "2", "--quiet"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    prov = json.loads((out / "provenance.json").read_text())
    for name in (*SKIPPED, *F8):
        assert sum(f"'{name}'" in w for w in prov["warnings"]) == 1, prov["warnings"]
    csv = pd.read_csv(out / "metrics.csv")
    assert not set(SKIPPED) & set(csv["tensor"]) and set(F8) <= set(csv["tensor"])


def _scaled_run(tmp_path, scales: dict[str, float]):
    states = small_states((0, 1, 2))
    for st in states.values():
        for name, scale in scales.items():
            st[name] = st[name] * scale  # float32 weights of magnitude ~scale · 0.02
    return write_state_run(tmp_path, states, SMALL_CONFIG)


@pytest.mark.parametrize(
    "scales",
    [
        {"model.layers.0.mlp.down_proj.weight": 1e30},
        {"model.layers.0.mlp.down_proj.weight": 1e-30},
        {"model.layers.0.mlp.down_proj.weight": 1e30, "model.layers.1.self_attn.q_proj.weight": 1e-30,
         "model.norm.weight": 1e-30},
    ],
    ids=["1e30", "1e-30", "mixed"],
)  # fmt: skip
def test_extreme_but_finite_weights_match_float64(tmp_path, scales):
    root = _scaled_run(tmp_path, scales)
    res = compute_analysis(
        opdlens.open_run(root), AnalyzeOptions(ranks=RANKS, workers=1, full_spectrum=True)
    )
    df = res.frame
    assert not df["nonfinite"].any() and not res.warnings
    compare(df, reference(load_states(root), SMALL_CONFIG))  # norms rel 1e-5, energies 1e-3
    states = load_states(root)
    for name, scale in scales.items():
        rows = df[df["tensor"] == name].set_index("step")
        for step in (1, 2):
            d = (states[step][name] - states[0][name]).numpy()
            want = np.linalg.norm(d / scale) * scale  # float64, scaled: no overflow
            assert rows.loc[step, "update_norm"] == pytest.approx(want, rel=1e-6)
            assert rows.loc[step, "update_norm"] > 0
    shares = df.groupby("step")["update_share"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-9)
