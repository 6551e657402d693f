"""The whole-run sweep against an independent float64 SVD of the weights written to disk, and odd
but legal checkpoints (buffers, float8, empty tensors, extreme magnitudes) that never abort it."""

from __future__ import annotations

import json
import math
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
from opdlens import open_run
from opdlens.analysis.analyze import compute_analysis
from opdlens.analysis.options import AnalyzeOptions


def _config(root):
    return json.loads((root / "checkpoint-0" / "config.json").read_text())


@pytest.mark.parametrize("kind", ["llama-bf16", "llama-f32", "phi3", "moe"])
def test_every_metric_matches_float64_svd(planted_runs, kind):
    root = planted_runs(kind)
    df = opdlens.analyze(
        open_run(root), ranks=RANKS, consecutive=True, full_spectrum=True, workers=1
    )
    ref = reference(load_states(root), _config(root), consecutive=True)
    counts = compare(df, ref)
    assert counts["aligned"] > counts["rows"]  # most alignments are sharp and checked exactly
    shares = df.groupby(["span", "step"])["update_share"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-9)
    first = df[(df["span"] == "consecutive") & (df["step"] == 1)].reset_index(drop=True)
    cum = df[(df["span"] == "cumulative") & (df["step"] == 1)].reset_index(drop=True)
    np.testing.assert_allclose(first["update_norm"], cum["update_norm"])  # W_1 − W_0 both ways


def test_slices_of_fused_and_stacked_tensors(planted_runs):
    moe = opdlens.analyze(open_run(planted_runs("moe")), ranks=(1,), workers=1)
    gu = moe[(moe["tensor"] == "model.layers.0.mlp.experts.gate_up_proj") & (moe["step"] == 4)]
    assert sorted(zip(gu["expert"], gu["part"], strict=True)) == [
        (e, p) for e in range(4) for p in ("gate", "up")
    ]
    assert set(gu["kind"]) == {"gate_proj", "up_proj"} and set(gu["rows"]) == {16}
    phi = opdlens.analyze(open_run(planted_runs("phi3")), ranks=(1,), workers=1)
    qkv = phi[(phi["tensor"] == "model.layers.1.self_attn.qkv_proj.weight") & (phi["step"] == 1)]
    assert list(zip(qkv["part"], qkv["kind"], qkv["rows"], strict=True)) == [
        ("k", "k_proj", 16), ("q", "q_proj", 32), ("v", "v_proj", 16)
    ]  # fmt: skip
    keys = ["span", "step", "tensor", "expert", "part"]
    assert not phi.duplicated(keys).any() and not moe.duplicated(keys).any()


def test_lora_updates_from_factors_match_float64(planted_runs):
    root, base = planted_runs("lora"), planted_runs("llama-f32") / "checkpoint-0"
    run = open_run(root, base=base)
    df = opdlens.analyze(run, ranks=RANKS, workers=1)
    ref = reference(load_states(root, base), _config(base.parent))
    compare(df, ref)
    q = df[df["tensor"] == "model.layers.0.self_attn.q_proj.weight"]
    np.testing.assert_allclose(q["energy_k8"], 1.0, atol=1e-6)  # rank-4 LoRA
    # K = 8 above the rank-4 update: the subspace is undefined and gap_k8 flags it.
    assert (q["gap_k8"] < 1e-2).all()
    untouched = df[df["tensor"] == "model.layers.0.mlp.up_proj.weight"]
    assert (untouched["update_norm"] == 0).all() and untouched["energy_k1"].isna().all()


def test_chosen_final_keeps_every_step(planted_runs):
    root = planted_runs("llama-f32")
    df = opdlens.analyze(open_run(root), ranks=RANKS, final=2, workers=1)
    assert sorted(df["step"].unique()) == [1, 2, 4]
    compare(df, reference(load_states(root), _config(root), final=2), final=2)
    at2 = df[df["step"] == 2]
    np.testing.assert_allclose(at2["cos_to_final"], 1.0, atol=1e-6)


def test_vectors_get_norms_only_and_zero_base_gives_inf(tmp_path):
    states = small_states()
    for s, st in states.items():
        st["model.layers.0.self_attn.o_proj.bias"] = torch.zeros(16) + 0.01 * s  # W_0 = 0
        st["model.layers.1.mlp.down_proj.weight"] = torch.zeros(16, 24) if s == 0 else st[
            "model.layers.1.mlp.down_proj.weight"
        ]  # fmt: skip
    df = opdlens.analyze(
        open_run(write_state_run(tmp_path, states, SMALL_CONFIG)), ranks=RANKS, workers=1
    )
    vec = df[df["tensor"] == "model.layers.0.input_layernorm.weight"]
    assert (vec["update_norm"] > 0).all() and (vec["base_norm"] > 0).all()
    assert (vec["rows"] == 16).all() and (vec["cols"] == 1).all()
    spectral = [c for c in df.columns if c.startswith(("energy", "align", "gap", "stable"))]
    assert vec[spectral].isna().all().all()
    bias = df[df["tensor"] == "model.layers.0.self_attn.o_proj.bias"]
    assert (bias["base_norm"] == 0).all() and np.isinf(bias["rel_update_norm"]).all()
    zero_mat = df[df["tensor"] == "model.layers.1.mlp.down_proj.weight"]
    assert np.isinf(zero_mat["rel_update_norm"]).all() and zero_mat["energy_k1"].notna().all()


def test_nonfinite_weight_marks_one_row_and_keeps_the_rest(tmp_path):
    states = small_states((0, 1, 2, 3))
    bad = "model.layers.1.self_attn.q_proj.weight"
    states[2][bad][3, 5] = float("nan")
    states[2]["model.layers.0.input_layernorm.weight"][0] = float("inf")
    run = open_run(write_state_run(tmp_path, states, SMALL_CONFIG))
    res = compute_analysis(run, AnalyzeOptions(ranks=RANKS, workers=1, consecutive=True))
    df = res.frame
    marked = df[df["nonfinite"]]
    assert set(zip(marked["tensor"], marked["step"], strict=True)) == {
        (bad, 2), (bad, 3), ("model.layers.0.input_layernorm.weight", 2),
        ("model.layers.0.input_layernorm.weight", 3),
    }  # fmt: skip
    # Cumulative rows at step 3 are finite again; only W_3 − W_2 touches the NaN.
    assert set(marked.loc[marked["step"] == 3, "span"]) == {"consecutive"}
    assert marked[["update_norm", "energy_k1", "align_left_k1"]].isna().all().all()
    assert any(bad in w and "step 2" in w for w in res.warnings)
    assert any("input_layernorm" in w and "step 2" in w for w in res.warnings)
    good = df[~df["nonfinite"]]
    clean = [n for n in states[0] if n not in (bad, "model.layers.0.input_layernorm.weight")]
    ref = reference(
        {s: {n: t.double() for n, t in st.items()} for s, st in states.items()}, SMALL_CONFIG,
        names=clean,
    )  # fmt: skip
    cum = good[(good["span"] == "cumulative") & good["tensor"].isin(clean)]
    compare(cum, ref.drop(columns="update_share"), final=3)
    for step in (1, 3):  # the marked tensor's other steps are intact
        row = df[(df["tensor"] == bad) & (df["step"] == step) & (df["span"] == "cumulative")]
        want = float((states[step][bad].double() - states[0][bad].double()).norm())
        assert row["update_norm"].item() == pytest.approx(want, rel=1e-5)
    shares = good[good["span"] == "cumulative"].groupby("step")["update_share"].sum()
    np.testing.assert_allclose(shares.to_numpy(), 1.0, atol=1e-9)
    assert math.isnan(df.loc[df["nonfinite"], "update_share"].iloc[0])


def test_ranks_at_or_beyond_min_rows_cols_follow_the_definition(tmp_path):
    router, narrow = "model.layers.0.mlp.gate.weight", "model.layers.1.self_attn.k_proj.weight"
    states = small_states((0, 1, 2))
    for s, st in states.items():
        g = torch.Generator().manual_seed(s)
        st[router] = 0.02 * torch.randn(4, 16, generator=g)  # (experts, hidden)
        st[narrow] = 0.02 * torch.randn(12, 64, generator=g)  # a 12×64 head block
    root = write_state_run(tmp_path, states, SMALL_CONFIG)
    ranks = (1, 4, 12, 10_000)
    res = compute_analysis(open_run(root), AnalyzeOptions(ranks=ranks, workers=1))
    df = res.frame
    compare(df, reference(load_states(root), SMALL_CONFIG, ranks[:3]), ranks[:3])  # float64 SVDs
    r, n = df[df["tensor"] == router], df[df["tensor"] == narrow]
    assert (r[["energy_k4", "energy_k12", "energy_k10000"]] == 1.0).all().all()  # exactly
    assert (r[["gap_k12", "gap_k10000"]] == 0.0).all().all()
    assert r[["align_left_k12", "align_right_k10000"]].isna().all().all()
    assert (n["energy_k12"] == 1.0).all() and (n["gap_k12"] > 0).all()
    matrices = df[df["cols"] > 1]
    assert (matrices["energy_k10000"] == 1.0).all()
    assert df.loc[df["cols"] == 1, "energy_k10000"].isna().all()  # vectors: no spectrum
    notes = [w for w in res.warnings if "exceed min(rows, cols)" in w]
    assert len(notes) == 1 and "[10000]" in notes[0] and "at most 16" in notes[0]


def test_gpt2_conv1d_c_attn_is_analysed_per_part(hf_run):
    from safetensors.numpy import load_file

    root = hf_run("gpt2", "safetensors", steps=(0, 1), dtype=torch.float32)
    run = open_run(root)
    df = compute_analysis(run, AnalyzeOptions(ranks=(1,), workers=1)).frame
    name = "transformer.h.0.attn.c_attn.weight"
    rows = df[(df["tensor"] == name) & (df["step"] == 1)].set_index("part")
    assert sorted(rows.index) == ["k", "q", "v"]
    w0 = load_file(str(root / "checkpoint-0" / "model.safetensors"))[name].astype("float64")
    w1 = load_file(str(root / "checkpoint-1" / "model.safetensors"))[name].astype("float64")
    delta = (w1 - w0).T  # Conv1D stores (in, out); GPT2Attention splits the out features in thirds
    hidden = delta.shape[1]
    for i, part in enumerate("qkv"):
        block = delta[i * hidden : (i + 1) * hidden]
        assert rows.loc[part, "rows"] == hidden
        assert math.isclose(rows.loc[part, "update_norm"], np.linalg.norm(block), rel_tol=1e-5)
        sigma = np.linalg.svd(block, compute_uv=False)
        assert math.isclose(
            rows.loc[part, "stable_rank"], (sigma**2).sum() / sigma[0] ** 2, rel_tol=1e-3
        )


# -- odd but legal checkpoints ----------------------------------------------------------------

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
    res = compute_analysis(open_run(odd_run), AnalyzeOptions(ranks=RANKS, workers=1))
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
        open_run(root), AnalyzeOptions(ranks=RANKS, workers=1, full_spectrum=True)
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
