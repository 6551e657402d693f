"""analyze and foresee on CUDA: the same numbers as a float64 SVD and as the CPU, on real files.

Marked gpu: skipped where torch sees no CUDA device; `scripts/gpu_check.sh` runs them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from checkpoints import write_hf_run
from planted import (
    RANKS,
    STEPS,
    base_reference,
    check_base,
    compare,
    load_states,
    planted,
    reference,
    spiked_update,
    write_spiked_moe,
)
from typer.testing import CliRunner

import opdlens
from opdlens import AnalyzeOptions, open_run
from opdlens.analysis.analyze import compute_analysis
from opdlens.cli import app
from opdlens.errors import ResourceError

pytestmark = pytest.mark.gpu

GAP_FLAG = 1e-2


def _config(root):
    return json.loads((root / "checkpoint-0" / "config.json").read_text())


def _slices(df: pd.DataFrame) -> list[tuple[str, str, str]]:
    """(tensor, expert, part) per row, missing values spelled out: pandas 3 cannot join on NA."""
    return list(zip(df["tensor"], df["expert"].astype(str), df["part"].astype(str), strict=True))


def _agree(cuda: pd.DataFrame, cpu: pd.DataFrame) -> None:
    """CUDA and CPU rows within design.md's contract: energy 1e-3, alignment 1e-2 (sharp K)."""
    keys = ["span", "step", "tensor", "expert", "part"]
    assert len(cuda) == len(cpu)
    a = cuda.sort_values(keys, kind="stable").reset_index(drop=True)
    b = cpu.sort_values(keys, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    for col in ("update_norm", "base_norm", "update_share"):
        np.testing.assert_allclose(a[col], b[col], rtol=1e-5, atol=1e-9, err_msg=col)
    np.testing.assert_allclose(a["cos_to_final"], b["cos_to_final"], atol=1e-5)
    for col in ("changed_frac", "changed_frac_tol"):  # exact counts: the same on every device
        pd.testing.assert_series_equal(a[col], b[col], check_exact=True)
    final = b["step"].max()
    for k in RANKS:
        np.testing.assert_allclose(a[f"energy_k{k}"], b[f"energy_k{k}"], atol=1e-3, err_msg=k)
        last = b[(b["step"] == final) & (b["span"] == "cumulative")]
        gap_final = dict(zip(_slices(last), last[f"gap_k{k}"], strict=True))
        g_final = pd.Series([gap_final[x] for x in _slices(b)], index=b.index)
        sharp = (b[f"gap_k{k}"] >= GAP_FLAG) & (g_final >= GAP_FLAG)
        for side in ("left", "right"):
            col = f"align_{side}_k{k}"
            np.testing.assert_allclose(a.loc[sharp, col], b.loc[sharp, col], atol=1e-2)


@pytest.mark.parametrize("workers", [1, 3])
@pytest.mark.parametrize("kind", ["llama-bf16", "llama-f32", "phi3", "moe"])
def test_cuda_matches_float64_and_the_cpu(planted_runs, kind: str, workers: int) -> None:
    root = planted_runs(kind)
    cuda = opdlens.analyze(
        open_run(root), ranks=RANKS, consecutive=True, workers=workers, device="cuda"
    )
    compare(cuda, reference(load_states(root), _config(root), consecutive=True))
    cpu = opdlens.analyze(open_run(root), ranks=RANKS, consecutive=True, workers=1)
    _agree(cuda, cpu)


@pytest.mark.parametrize("workers", [1, 3])
def test_lora_factors_on_cuda(planted_runs, workers: int) -> None:
    root, base = planted_runs("lora"), planted_runs("llama-f32") / "checkpoint-0"
    cuda = opdlens.analyze(open_run(root, base=base), ranks=RANKS, workers=workers, device="cuda:0")
    compare(cuda, reference(load_states(root, base), _config(base.parent)))
    _agree(cuda, opdlens.analyze(open_run(root, base=base), ranks=RANKS, workers=1))


def test_fp16_run_on_cuda(tmp_path) -> None:
    root = write_hf_run(tmp_path / "f16", "llama", STEPS, dtype=torch.float16, update=planted,
                        trainer_files=False)  # fmt: skip
    cuda = opdlens.analyze(open_run(root), ranks=RANKS, workers=2, device="cuda")
    compare(cuda, reference(load_states(root), _config(root)))
    _agree(cuda, opdlens.analyze(open_run(root), ranks=RANKS, workers=1))


def test_warm_starts_and_cache_cross_devices(planted_runs, tmp_path) -> None:
    """Factors cached on one device are reused on the other, and equal a fresh computation."""
    root = planted_runs("llama-bf16")
    gpu = AnalyzeOptions(ranks=RANKS, workers=3, device="cuda")
    cpu = AnalyzeOptions(ranks=RANKS, workers=1)
    first = compute_analysis(open_run(root), gpu, cache_dir=tmp_path / "c1")
    assert first.svd_calls > 0
    again = compute_analysis(open_run(root), cpu, cache_dir=tmp_path / "c1")
    assert again.svd_calls == 0 and again.cache_hits == first.svd_calls
    pd.testing.assert_frame_equal(again.frame, first.frame)
    on_cpu = compute_analysis(open_run(root), cpu, cache_dir=tmp_path / "c2")
    on_gpu = compute_analysis(open_run(root), gpu, cache_dir=tmp_path / "c2")
    assert on_gpu.svd_calls == 0
    _agree(first.frame, on_cpu.frame)


def test_the_cli_takes_cuda_n(planted_runs, tmp_path) -> None:
    root = planted_runs("llama-f32")
    runner = CliRunner()
    res = runner.invoke(app, ["analyze", str(root), "--out", str(tmp_path / "m"), "--device",
                              "cuda:0", "--workers", "2", "--ranks", "1,3", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    got = pd.read_parquet(tmp_path / "m" / "metrics.parquet")
    prov = json.loads((tmp_path / "m" / "provenance.json").read_text())
    assert "cuda:0" in json.dumps(prov)
    want = opdlens.analyze(open_run(root), ranks=(1, 3), workers=1)
    assert len(got) == len(want)
    n = torch.cuda.device_count()
    res = runner.invoke(app, ["analyze", str(root), "--out", str(tmp_path / "m2"), "--device",
                              f"cuda:{n}", "-q"])  # fmt: skip
    assert res.exit_code == 2 and f"this machine has {n} CUDA device(s)" in res.stderr
    assert len(res.stderr.strip().splitlines()) == 1 and not (tmp_path / "m2").exists()


def test_out_of_gpu_memory_is_one_line_naming_the_tensor(tmp_path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(0)
    w0 = torch.randn(4096, 2048, generator=g)
    for step, w in ((0, w0), (1, w0 + 0.01 * torch.randn(4096, 2048, generator=g))):
        d = tmp_path / "run" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        save_file({"model.layers.0.mlp.down_proj.weight": w}, d / "model.safetensors")
    torch.cuda.empty_cache()
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.set_per_process_memory_fraction(8 * 2**20 / total, 0)  # this process only
    try:
        with pytest.raises(
            ResourceError, match=r"down_proj.weight'.*fewer --workers.*--device cpu"
        ):
            opdlens.analyze(open_run(tmp_path / "run"), ranks=(1,), workers=1, device="cuda:0")
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0, 0)
        torch.cuda.empty_cache()


def test_peak_gpu_memory_is_a_few_copies_of_the_largest_tensor(tmp_path) -> None:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    shape = (3072, 2048)  # 24 MiB in float32
    w0 = torch.randn(shape, generator=g).to(torch.bfloat16)
    for step in (0, 1, 2, 4):
        d = tmp_path / "run" / f"checkpoint-{step}"
        d.mkdir(parents=True)
        w = w0 if step == 0 else (w0.float() + 0.01 * step * torch.randn(shape, generator=g))
        save_file(
            {"model.layers.0.mlp.up_proj.weight": w.to(torch.bfloat16)}, d / "model.safetensors"
        )
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(0)
    before = torch.cuda.memory_allocated(0)
    opdlens.analyze(open_run(tmp_path / "run"), ranks=(1, 4, 16), workers=1, device="cuda")
    peak = torch.cuda.max_memory_allocated(0) - before
    copy = math.prod(shape) * 4
    assert peak <= 3 * copy + 64 * 2**20, (peak / copy, "float32 copies")


def test_foresee_gram_on_cuda_equals_the_cpu(planted_runs) -> None:
    run = open_run(planted_runs("llama-bf16"))
    cpu = opdlens.foresee(run, workers=1)
    cuda = opdlens.foresee(run, workers=3, device="cuda")
    assert len(cpu) == len(cuda)
    for col in ("pred_distance", "stay_distance", "rel_error"):
        np.testing.assert_allclose(cuda[col], cpu[col], rtol=1e-6, err_msg=col)


GEOMETRY_RANKS = (1, 3, 8)  # 1 and 3: the spiked base's planted directions; 8: its bulk
GEOMETRY_STEPS = (0, 1, 2, 4)


@pytest.fixture(scope="module")
def spiked_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Spiked-base runs, as test_base_geometry.py writes them: llama bf16 and stacked MoE."""
    out = {}
    root = tmp_path_factory.mktemp("spiked-llama")
    checkpoints.write_hf_run(root, "llama", GEOMETRY_STEPS, dtype=torch.bfloat16,
                             update=spiked_update, trainer_files=False)  # fmt: skip
    out["llama"] = root
    root = tmp_path_factory.mktemp("spiked-moe")
    out["moe"] = write_spiked_moe(root, GEOMETRY_STEPS)
    return out


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("kind", ["llama", "moe"])
def test_base_geometry_on_cuda_matches_float64_and_the_cpu(spiked_runs, kind, workers) -> None:
    """--base-geometry on CUDA (W_0's Gram route is torch's eigh there): within the contract of
    float64 full SVDs of W_0 and W_t, and of the CPU's run, sparsity columns equal."""
    root = spiked_runs[kind]
    opts = dict(ranks=GEOMETRY_RANKS, consecutive=True, base_geometry=True)
    cuda = opdlens.analyze(open_run(root), **opts, workers=workers, device="cuda")
    ref = base_reference(load_states(root), _config(root), GEOMETRY_RANKS)
    counts = check_base(cuda, ref, GEOMETRY_RANKS)
    assert counts["energy"] > 20 and counts["rotation"] > 20 and counts["drift"] > 50
    cpu = opdlens.analyze(open_run(root), **opts, workers=1)
    keys = ["span", "step", "tensor", "expert", "part"]
    a = cuda.sort_values(keys, kind="stable").reset_index(drop=True)
    b = cpu.sort_values(keys, kind="stable").reset_index(drop=True)
    pd.testing.assert_frame_equal(a[keys], b[keys])
    for col in ("changed_frac", "changed_frac_tol"):
        pd.testing.assert_series_equal(a[col], b[col], check_exact=True)
    for k in GEOMETRY_RANKS:  # σ_i at every K (Weyl); energies where W_0's top-K is sharp
        for col in (f"spectral_drift_k{k}", f"base_gap_k{k}"):
            np.testing.assert_allclose(a[col], b[col], atol=2e-3, err_msg=col)
        sharp = b[f"base_gap_k{k}"] >= GAP_FLAG
        for side in ("left", "right"):
            col = f"principal_energy_{side}_k{k}"
            np.testing.assert_allclose(a.loc[sharp, col], b.loc[sharp, col], atol=2e-3)


def test_a_users_tf32_setting_does_not_reach_the_sweep(planted_runs) -> None:
    """A training process's TF32 (Trainer(tf32=True)) would round every float32 product to 10
    bits: the numbers still match float64, and the setting is the user's again afterwards."""
    root = planted_runs("llama-f32")
    before = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("high")
    try:
        cuda = opdlens.analyze(open_run(root), ranks=RANKS, workers=2, device="cuda")
        assert torch.get_float32_matmul_precision() == "high"
    finally:
        torch.set_float32_matmul_precision(before)
    compare(cuda, reference(load_states(root), _config(root)))
