"""`analyze --base-geometry` against a float64 full SVD of W_0 and W_t read back from disk."""

from __future__ import annotations

import json
import math
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from planted import (
    base_reference,
    check_base,
    load_states,
    planted,
    spiked,
    spiked_update,
    write_spiked_moe,
    write_state_run,
)
from typer.testing import CliRunner

import opdlens
from opdlens import open_run
from opdlens.analysis import base_geometry as BG
from opdlens.analysis.analyze import compute_analysis
from opdlens.analysis.frame import geometry_columns, summarize
from opdlens.analysis.options import AnalyzeOptions
from opdlens.cli import app

RANKS = (1, 3, 8)  # 1 and 3: the base's planted spikes (sharp); 8: inside W_0's bulk
STEPS = (0, 1, 2, 4)


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Spiked-base runs: llama bf16, phi3 (fused qkv / gate_up) f32, qwen3_moe (stacked experts)."""
    out = {}
    for kind, arch, dtype in (("llama", "llama", torch.bfloat16), ("phi3", "phi3", torch.float32)):
        root = tmp_path_factory.mktemp(kind)
        checkpoints.write_hf_run(
            root, arch, STEPS, dtype=dtype, update=spiked_update, trainer_files=False
        )
        out[kind] = root
    root = tmp_path_factory.mktemp("moe")
    out["moe"] = write_spiked_moe(root, STEPS)
    return out


def _config(root: Path) -> dict:
    return json.loads((root / "checkpoint-0" / "config.json").read_text())


@pytest.mark.parametrize("kind", ["llama", "phi3", "moe"])
def test_every_column_matches_float64_svd(runs, kind):
    root = runs[kind]
    df = opdlens.analyze(
        open_run(root), ranks=RANKS, consecutive=True, base_geometry=True, workers=1
    )
    assert set(geometry_columns(RANKS)) <= set(df.columns)
    counts = check_base(df, base_reference(load_states(root), _config(root)))
    assert counts["energy"] > 50 and counts["rotation"] > 50 and counts["drift"] > 100
    vectors = df[df["cols"] == 1]
    assert vectors[geometry_columns(RANKS)].isna().all().all()  # norms: no matrix, no geometry
    if kind == "phi3":  # float32: W_t is formed beside W_0, never in it
        assert {"q", "k", "v", "gate", "up"} <= set(df["part"].dropna())
        plain = opdlens.analyze(open_run(root), ranks=RANKS, consecutive=True, workers=1)
        pd.testing.assert_frame_equal(df[list(plain.columns)], plain)
    if kind == "moe":
        assert df["expert"].notna().any()
    # By block, the principal energy is the group's Σ‖U_0ᵀΔ‖² / Σ‖Δ‖² (update-energy weighted).
    cum = df[(df["span"] == "cumulative") & df["principal_energy_left_k1"].notna()]
    by_block = summarize(cum, by=("block",)).set_index(["step", "block"])
    w = cum["update_norm"] ** 2
    want = (cum["principal_energy_left_k1"] * w).groupby([cum["step"], cum["block"]]).sum()
    want /= w.groupby([cum["step"], cum["block"]]).sum()
    got = by_block["principal_energy_left_k1"].reindex(want.index)
    np.testing.assert_allclose(got.to_numpy(), want.to_numpy(), rtol=1e-9)


def test_lora_run_uses_w0_plus_ba(planted_runs):
    root, base = planted_runs("lora"), planted_runs("llama-f32") / "checkpoint-0"
    run = open_run(root, base=base)
    df = opdlens.analyze(run, ranks=RANKS, consecutive=True, base_geometry=True, workers=1)
    states = load_states(root, base)
    states = {
        s: {n: w for n, w in st.items() if "self_attn.q_proj" in n} for s, st in states.items()
    }
    ref = base_reference(states, _config(base.parent))
    counts = check_base(df[df["tensor"].str.contains("self_attn.q_proj")], ref)
    assert counts["drift"] > 0


def test_cache_reuses_w0_factors(runs, tmp_path):
    run = open_run(runs["phi3"])
    cache = tmp_path / "cache"
    plain = compute_analysis(run, AnalyzeOptions(ranks=RANKS, workers=1), cache_dir=cache)
    opts = AnalyzeOptions(ranks=RANKS, workers=1, base_geometry=True)
    first = compute_analysis(run, opts, cache_dir=cache)
    # Δ's factors come from the plain analysis; W_0's are computed once per matrix slice.
    matrices = first.frame[(first.frame["cols"] > 1) & (first.frame["step"] == 4)]
    w0_svds = sum(n for label, n in first.svd_methods.items() if label.startswith("base_w0:"))
    assert w0_svds == len(matrices)
    assert first.cache_hits >= plain.svd_calls
    second = compute_analysis(run, opts, cache_dir=cache)
    assert not any(label.startswith("base_w0:") for label in second.svd_methods)
    assert second.cache_hits == first.cache_hits + w0_svds
    pd.testing.assert_frame_equal(first.frame, second.frame)
    # A plain analysis keeps the W_0 entries in the files it rewrites.
    compute_analysis(run, AnalyzeOptions(ranks=(1,), workers=1, consecutive=True), cache_dir=cache)
    third = compute_analysis(run, opts, cache_dir=cache)
    assert not any(label.startswith("base_w0:") for label in third.svd_methods)


def test_off_by_default_and_cli_flag(runs, tmp_path):
    run = open_run(runs["llama"])
    assert not set(geometry_columns(RANKS)) & set(opdlens.analyze(run, ranks=RANKS, workers=1))
    out = tmp_path / "out"
    args = ["analyze", str(runs["llama"]), "--out", str(out), "--ranks", "1,3", "--workers", "1"]
    res = CliRunner().invoke(app, [*args, "--base-geometry", "--quiet"])
    assert res.exit_code == 0, res.output
    pq = pd.read_parquet(out / "metrics.parquet")
    assert set(geometry_columns((1, 3))) <= set(pq.columns)
    assert json.loads((out / "provenance.json").read_text())["options"]["base_geometry"] is True
    ref = base_reference(load_states(runs["llama"]), _config(runs["llama"]))
    row = pq[(pq["tensor"] == "model.layers.1.mlp.down_proj.weight") & (pq["step"] == 4)].iloc[0]
    want = ref[(ref["tensor"] == "model.layers.1.mlp.down_proj.weight") & (ref["step"] == 4)]
    want = want[want["span"] == "cumulative"].iloc[0]
    assert abs(row["principal_energy_left_k3"] - want["principal_energy_left_k3"]) <= 1e-3
    assert abs(row["spectral_drift_k1"] - want["spectral_drift_k1"]) <= 1e-3


def _matrix(m: int, n: int, seed: int, spikes: int = 6, bulk: float = 1.0) -> torch.Tensor:
    """A weight-like matrix: spikes over a Marchenko–Pastur bulk (slowly decaying), float32."""
    g = torch.Generator().manual_seed(seed)
    noise = bulk * torch.randn(m, n, generator=g, dtype=torch.float64) / math.sqrt(n)
    a = torch.linalg.qr(torch.randn(m, spikes, generator=g, dtype=torch.float64))[0]
    b = torch.linalg.qr(torch.randn(n, spikes, generator=g, dtype=torch.float64))[0]
    sig = 8.0 * 0.85 ** torch.arange(spikes, dtype=torch.float64)
    return (noise + (a * sig) @ b.T).float()


def _check_values(top, w: torch.Tensor, k: int, rtol: float = BG.BASE_RTOL) -> None:
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(top.S[:k].double().numpy(), s[:k], rtol=rtol)
    lo, hi = BG.value_brackets(w, top)
    assert (lo.numpy() <= s[:k] * (1 + 1e-6)).all() and (hi.numpy() >= s[:k] * (1 - 1e-6)).all()


def test_certified_top_k_on_a_slowly_decaying_spectrum():
    w0 = _matrix(600, 900, 0)
    wt = w0 + 1e-3 * _matrix(600, 900, 1)
    k = 8  # K = 8 reaches into the bulk: values are certified, subspaces only where sharp
    base = BG.certified_top_k(w0, k)
    moved = BG.certified_top_k(wt, k, init=base.V, ref=base.S)
    assert BG.svd_label(base) == "gram32"  # no warm start for W_0: its float32 Gram matrix
    _check_values(base, w0, k)
    _check_values(moved, wt, k, rtol=1.01 * BG.MOVED_RTOL)


def test_warm_start_from_w0_certifies_a_spiky_weight():
    w0 = _matrix(500, 800, 4, spikes=24, bulk=0.01)  # a pretrained-like decaying spectrum
    wt = w0 + 1e-3 * _matrix(500, 800, 5)
    base = BG.certified_top_k(w0, 8)
    moved = BG.certified_top_k(wt, 8, init=base.V, ref=base.S)
    assert BG.svd_label(moved) == "subspace"  # warm-started from W_0's V, values bracketed
    _check_values(moved, wt, 8, rtol=1.01 * BG.MOVED_RTOL)
    e0 = np.linalg.svd(w0.double().numpy())[0][:, :8]
    et = np.linalg.svd(wt.double().numpy())[0][:, :8]
    rot = 1 - float(((e0.T @ et) ** 2).sum()) / 8
    got = 1 - float(((base.U.double().T @ moved.U.double()) ** 2).sum()) / 8
    assert abs(got - rot) <= 1e-2


def test_loose_values_fall_back_to_exact(monkeypatch):
    w = _matrix(300, 500, 2)
    exact = BG.top_k_svd(w, 4, method="exact")
    shake = 0.05 * torch.randn(exact.U.shape, generator=torch.Generator().manual_seed(3))
    loose = BG.TopK(torch.linalg.qr(exact.U + shake)[0], exact.S, exact.V, "gram32", 0)
    monkeypatch.setattr(BG, "_gram32", lambda w_, k_: loose)
    top = BG.certified_top_k(w, 4)
    assert BG.svd_label(top) == "exact"  # the loose gram32 result was not kept
    s = np.linalg.svd(w.double().numpy(), compute_uv=False)
    np.testing.assert_allclose(top.S[:4].double().numpy(), s[:4], rtol=1e-6)
    lo, hi = BG.value_brackets(w, loose)
    assert ((hi - lo) > BG.BASE_RTOL * lo).any()  # the brackets saw it


def test_step_columns_cover_frame_columns_and_flag_vectors():
    cols = BG.step_columns(RANKS, None, 0, None, None)
    assert set(cols) == set(geometry_columns(RANKS)) and all(math.isnan(v) for v in cols.values())


def _scaled_step(scale: float):
    """checkpoint-1 = spiked W_0 + `scale` × planted's step-1 update (float32 keeps a tiny Δ)."""

    def update(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
        base = spiked(name, w0)
        if step == 0 or not base.is_floating_point():
            return base
        return base + scale * (planted(name, base, 1) - base)

    return update


@pytest.mark.parametrize(("scale", "pinned"), [(1e-4, True), (1.0, False)])
def test_small_update_is_pinned_from_w0_without_decomposing_w_t(tmp_path, scale, pinned):
    # ‖Δ‖_2 ≈ 5e-5 against σ_8(W_0) ≈ 0.3: Weyl, interlacing and Wedin pin every column. At
    # scale 1 (‖Δ‖_2 ≈ 0.5 > σ_3(W_0)) no bound holds and W_t must be decomposed.
    checkpoints.write_hf_run(
        tmp_path, "llama", (0, 1), dtype=torch.float32, update=_scaled_step(scale),
        trainer_files=False,
    )  # fmt: skip
    run = open_run(tmp_path)
    opts = AnalyzeOptions(ranks=RANKS, workers=1, consecutive=True, base_geometry=True)
    res = compute_analysis(run, opts)
    matrices = int(((res.frame["cols"] > 1) & (res.frame["span"] == "cumulative")).sum())
    moved = {k: n for k, n in res.svd_methods.items() if k.startswith("base_wt:")}
    if pinned:
        assert moved == {"base_wt:pinned": matrices}
    else:
        assert "base_wt:pinned" not in moved and sum(moved.values()) == matrices
    counts = check_base(res.frame, base_reference(load_states(tmp_path), _config(tmp_path)))
    assert counts["drift"] >= 3 * matrices and counts["rotation"] > 10


@pytest.mark.parametrize("base", ["random init", "spiked"])
def test_flat_base_top_skips_the_warm_start(tmp_path, monkeypatch, base):
    # A random initialisation's top is flat (σ_5/σ_1 of 0.93–0.97 here): W_t goes to its Gram
    # matrix at once. A spiked base's W_t is warm-started from W_0's V and certified there.
    warm = []
    krylov = BG.block_krylov
    monkeypatch.setattr(BG, "block_krylov", lambda *a, **kw: warm.append(1) or krylov(*a, **kw))
    update = planted if base == "random init" else spiked_update
    checkpoints.write_hf_run(
        tmp_path, "llama", (0, 1), dtype=torch.float32, update=update, trainer_files=False,
        hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4,
    )  # fmt: skip
    ranks = (1, 4)
    opts = AnalyzeOptions(ranks=ranks, workers=1, consecutive=True, base_geometry=True)
    res = compute_analysis(open_run(tmp_path), opts)
    moved = {k: n for k, n in res.svd_methods.items() if k.startswith("base_wt:")}
    matrices = int(((res.frame["cols"] > 1) & (res.frame["span"] == "cumulative")).sum())
    if base == "random init":
        assert moved == {"base_wt:gram32": matrices} and not warm
    else:
        assert moved.get("base_wt:subspace", 0) >= matrices - 3 and len(warm) == matrices
    ref = base_reference(load_states(tmp_path), _config(tmp_path), ranks)
    counts = check_base(res.frame, ref, ranks)
    assert counts["drift"] >= len(ranks) * matrices


@pytest.mark.parametrize("bad", [math.nan, math.inf])
def test_a_non_finite_base_matrix_has_no_geometry_and_the_others_do(tmp_path, bad):
    model = checkpoints.tiny_model("llama")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = {s: {n: spiked_update(n, w, s) for n, w in base.items()} for s in (0, 1)}
    name = next(n for n in base if "layers.0.mlp.up_proj" in n)
    for s in (0, 1):
        states[s][name] = states[s][name].clone()
        states[s][name][0, 0] = bad
    root = write_state_run(tmp_path, states, checkpoints.tiny_config("llama").to_dict())
    df = opdlens.analyze(open_run(root), ranks=(1, 3), base_geometry=True, workers=1)
    cols = geometry_columns((1, 3))
    assert df.loc[df["tensor"] == name, cols].isna().all().all()
    others = df[(df["tensor"] != name) & (df["cols"] > 1)]
    assert len(others) > 10 and others[cols].notna().all().all()


def _doubled(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
    """Another run from the spiked base: planted's update of step 2t at step t."""
    return spiked_update(name, w0, 2 * step)


def test_a_run_from_the_same_base_takes_w0_from_another_runs_cache(runs, tmp_path):
    """W_0's factors found in a donor cache under the same base bytes are reused and kept; the
    numbers are those of a run that decomposed W_0 itself (and of float64 SVDs)."""
    root = checkpoints.write_hf_run(tmp_path / "b", "llama", STEPS, dtype=torch.bfloat16,
                                    update=_doubled, trainer_files=False)  # fmt: skip
    opts = AnalyzeOptions(ranks=RANKS, workers=2, base_geometry=True, consecutive=True)
    donor = tmp_path / "cache-a"
    first = compute_analysis(open_run(runs["llama"]), opts, cache_dir=donor)
    w0_svds = sum(n for label, n in first.svd_methods.items() if label.startswith("base_w0:"))
    alone = compute_analysis(open_run(root), opts, cache_dir=tmp_path / "cache-alone")
    donated = compute_analysis(
        open_run(root), opts, cache_dir=tmp_path / "cache-b", base_donors=[tmp_path / "none", donor]
    )
    assert w0_svds > 10 and not any(m.startswith("base_w0:") for m in donated.svd_methods)
    assert donated.cache_hits == alone.cache_hits + w0_svds
    pd.testing.assert_frame_equal(donated.frame, alone.frame)
    check_base(donated.frame, base_reference(load_states(root), _config(root)), RANKS)
    # The donated factors are now in the run's own cache; the donor was only read.
    again = compute_analysis(open_run(root), opts, cache_dir=tmp_path / "cache-b")
    assert not any(m.startswith("base_w0:") for m in again.svd_methods)
    # Another base's bytes: nothing matches, W_0 is decomposed.
    other = compute_analysis(
        open_run(runs["phi3"]), opts, cache_dir=tmp_path / "c", base_donors=[donor]
    )
    assert any(m.startswith("base_w0:") for m in other.svd_methods)
