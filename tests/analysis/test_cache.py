"""Factor cache: only new steps recomputed, alignment from the cache alone, changed files caught."""

from __future__ import annotations

import json
import shutil

import checkpoints
import pandas as pd
import pytest
import torch
from planted import RANKS, SMALL_CONFIG, small_states, write_state_run

from opdlens import OpdlensError, open_run
from opdlens.analysis.analyze import run_analysis
from opdlens.analysis.cache import FactorCache
from opdlens.analysis.export import write_analysis

N_MATRICES = 8  # 2-D tensors of small_states: embed, head, 2 × (q, o, down)


def _values(df: pd.DataFrame) -> pd.DataFrame:
    return df.drop(columns=["update_share"]).reset_index(drop=True)


def test_rerun_computes_only_new_steps(tmp_path):
    states = small_states((0, 1, 2, 4))
    root = write_state_run(tmp_path / "run", {s: states[s] for s in (0, 1, 2)}, SMALL_CONFIG)
    out = tmp_path / "out"
    first, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert (first.svd_calls, first.cache_hits) == (2 * N_MATRICES, 0)
    checkpoints.write_state_dir(root / "checkpoint-4", states[4], config=SMALL_CONFIG)
    second, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert (second.svd_calls, second.cache_hits) == (N_MATRICES, 2 * N_MATRICES)
    prov = json.loads((out / "provenance.json").read_text())
    assert (prov["svd_calls"], prov["cache_hits"]) == (N_MATRICES, 2 * N_MATRICES)
    fresh = run_analysis(open_run(root), ranks=RANKS, workers=1).frame
    pd.testing.assert_frame_equal(second.frame, fresh)
    # Asking for a larger K than was cached is a miss, never a silently truncated answer.
    third = run_analysis(open_run(root), ranks=(1, 12), workers=1, cache_dir=out / "cache")
    assert third.svd_calls == 3 * N_MATRICES
    big = (third.frame["rows"] >= 12) & (third.frame["cols"] >= 12)
    assert third.frame.loc[big, "energy_k12"].notna().all()


def test_alignment_between_any_two_steps_from_cache_only(tmp_path):
    states = small_states((0, 1, 2, 4))
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    shutil.move(root, tmp_path / "elsewhere")  # no checkpoint file left to read
    cache = FactorCache.open(out)
    name = "model.layers.1.mlp.down_proj.weight"
    for a, b in ((1, 2), (2, 4), (1, 4)):
        da = states[a][name].double() - states[0][name].double()
        db = states[b][name].double() - states[0][name].double()
        (ua, _, vha), (ub, _, vhb) = torch.linalg.svd(da), torch.linalg.svd(db)
        for k in (1, 3):
            want_l = float(((ua[:, :k].T @ ub[:, :k]) ** 2).sum()) / k
            want_r = float(((vha[:k] @ vhb[:k].T) ** 2).sum()) / k
            assert cache.alignment(name, a, b, k) == pytest.approx(want_l, abs=1e-2)
            assert cache.alignment(name, a, b, k, side="right") == pytest.approx(want_r, abs=1e-2)
    assert cache.alignment(name, 2, 2, 3) == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(OpdlensError, match="Step 3 is not in the run"):
        cache.alignment(name, 1, 3, 1)
    with pytest.raises(OpdlensError, match="exceeds the cached rank"):
        cache.alignment(name, 1, 2, 9)
    with pytest.raises(OpdlensError, match="no factor cache"):
        FactorCache.open(tmp_path / "elsewhere")


def test_changed_checkpoint_is_recomputed_never_reused(tmp_path):
    states = small_states((0, 1, 2))
    root = write_state_run(tmp_path / "run", states, SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    other = small_states((0, 1, 2), seed=0)[1]  # different weights for step 2
    other = {n: t * 1.5 for n, t in other.items()}
    checkpoints.write_state_dir(root / "checkpoint-2", other, config=SMALL_CONFIG)
    again, _ = write_analysis(open_run(root), out, ranks=RANKS, workers=1)
    assert again.svd_calls == N_MATRICES and again.cache_hits == N_MATRICES  # step 1 reused
    fresh = run_analysis(open_run(root), ranks=RANKS, workers=1).frame
    pd.testing.assert_frame_equal(again.frame, fresh)
    name = "model.layers.0.self_attn.q_proj.weight"
    row = fresh[(fresh["tensor"] == name) & (fresh["step"] == 2)]
    want = float((other[name].double() - states[0][name].double()).norm())
    assert row["update_norm"].item() == pytest.approx(want, rel=1e-5)


def test_damaged_cache_file_is_rebuilt_with_a_warning(tmp_path):
    root = write_state_run(tmp_path / "run", small_states((0, 1)), SMALL_CONFIG)
    out = tmp_path / "out"
    write_analysis(open_run(root), out, ranks=(1,), workers=1)
    victim = sorted((out / "cache").glob("*.pt"))[0]
    victim.write_bytes(b"garbage")
    again, _ = write_analysis(open_run(root), out, ranks=(1,), workers=1)
    assert again.svd_calls == 1 and any("unreadable cache file" in w for w in again.warnings)
