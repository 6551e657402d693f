"""analyze / compare --sparsity-dtype: changes counted as a narrower checkpoint would store them,
against numpy on the float32 checkpoint files (rounded to bf16 bit by bit, to f16 by numpy)."""

from __future__ import annotations

import json
import zlib
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.numpy import load_file
from typer.testing import CliRunner

import opdlens
from opdlens import open_run
from opdlens.analysis.sparsity import changed_mask, count_changed
from opdlens.cli import app
from opdlens.errors import OptionError

STEPS = (0, 1, 2)
NAME = "model.layers.0.mlp.down_proj.weight"


def moved(name: str, w0: torch.Tensor, step: int, salt: int = 0) -> torch.Tensor:
    """A third of the elements move by ~1e-2 (bf16 and f16 show it), a third by ~1e-4·|w|
    (round back in bf16, mostly in f16 too), the rest stay; element 0 is +0 then −0."""
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + salt)
    r = torch.rand(w0.shape, generator=g)
    big = 1e-2 * torch.randn(w0.shape, generator=g)
    tiny = 1e-4 * w0.abs() * torch.rand(w0.shape, generator=g)
    w = w0 + step * torch.where(r < 1 / 3, big, torch.where(r < 2 / 3, tiny, torch.zeros(())))
    w.view(-1)[0] = 0.0 if step == 0 else -0.0
    return w


def bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 → bfloat16 by round-to-nearest-even on the bits, −0 folded onto +0 (no NaN here)."""
    u = x.astype(np.float32).view(np.uint32).astype(np.uint64)
    bits = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint32)
    return np.where((bits & 0x7FFF) == 0, 0, bits)


def numpy_changed(a: np.ndarray, b: np.ndarray, dtype: str) -> int:
    if dtype == "bfloat16":
        return int(np.count_nonzero(bf16_bits(a) != bf16_bits(b)))
    return int(np.count_nonzero(a.astype(np.float16) != b.astype(np.float16)))


def state(root: Path, step: int) -> dict[str, np.ndarray]:
    return load_file(str(root / f"checkpoint-{step}" / "model.safetensors"))


@pytest.fixture(scope="module")
def f32_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return checkpoints.write_hf_run(
        tmp_path_factory.mktemp("f32"), "llama", STEPS, "safetensors", torch.float32,
        update=moved, trainer_files=False,
    )  # fmt: skip


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_counts_match_numpy_on_float32_files(f32_run: Path, dtype: str) -> None:
    df = opdlens.analyze(open_run(f32_run), ranks=(1,), consecutive=True, workers=1,
                         sparsity_dtype=dtype)  # fmt: skip
    plain = opdlens.analyze(open_run(f32_run), ranks=(1,), consecutive=True, workers=1)
    states = {s: state(f32_run, s) for s in STEPS}
    checked = 0
    for (span, step, tensor), row in df.set_index(["span", "step", "tensor"]).iterrows():
        ref = 0 if span == "cumulative" else STEPS[STEPS.index(step) - 1]
        a, b = states[ref][tensor], states[step][tensor]
        assert row["changed_count"] == numpy_changed(a, b, dtype), (span, step, tensor)
        assert row["changed_frac"] == row["changed_count"] / a.size
        # the tolerance column stays on the stored float32 values
        assert row["changed_tol_count"] == int(np.count_nonzero(np.abs(b - a) > 1e-5))
        checked += 1
    assert checked == len(plain) > 0
    final = (df["span"] == "cumulative") & (df["step"] == 2) & (df["tensor"] == NAME)
    view, stored = df.loc[final, "changed_frac"].item(), plain.loc[final, "changed_frac"].item()
    # float32 counts the tiny third as changed; the narrower view rounds most of it back
    assert stored > 0.6 and 0.3 < view < 0.5 if dtype == "bfloat16" else view < stored


def test_cli_records_the_dtype_in_provenance(f32_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["analyze", str(f32_run), "--out", str(out), "--ranks", "1", "--workers", "1",
            "--sparsity-dtype", "bfloat16", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["options"]["sparsity_dtype"] == "bfloat16"
    df = pd.read_parquet(out / "metrics.parquet")
    row = df[(df["span"] == "cumulative") & (df["step"] == 2) & (df["tensor"] == NAME)].iloc[0]
    assert row["changed_count"] == numpy_changed(state(f32_run, 0)[NAME], state(f32_run, 2)[NAME],
                                                 "bfloat16")  # fmt: skip


def test_default_compares_as_stored(f32_run: Path) -> None:
    df = opdlens.analyze(open_run(f32_run), ranks=(1,), workers=1, tensors=[NAME])
    a, b = state(f32_run, 0)[NAME], state(f32_run, 2)[NAME]
    assert df.loc[df["step"] == 2, "changed_count"].item() == int(np.count_nonzero(a != b))


def test_a_dtype_wider_than_stored_is_refused(tmp_path: Path) -> None:
    root = checkpoints.write_hf_run(tmp_path / "f16", "llama", (0, 1), "safetensors",
                                    torch.float16, update=moved, trainer_files=False)  # fmt: skip
    with pytest.raises(OptionError, match=r"--sparsity-dtype bfloat16 is wider than '.*' as "
                       r"stored in .*checkpoint-0 \(F16\)"):  # fmt: skip
        opdlens.analyze(open_run(root), sparsity_dtype="bfloat16")
    result = CliRunner().invoke(app, ["analyze", str(root), "--out", str(tmp_path / "o"),
                                      "--sparsity-dtype", "float32"])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert "--sparsity-dtype float32 is wider than" in result.stderr
    assert not (tmp_path / "o").exists()
    # the stored dtype itself is allowed: rounding to it changes nothing
    same = opdlens.analyze(open_run(root), ranks=(1,), workers=1, sparsity_dtype="float16")
    plain = opdlens.analyze(open_run(root), ranks=(1,), workers=1)
    pd.testing.assert_series_equal(same["changed_count"], plain["changed_count"])


@pytest.mark.parametrize("bad", ["int8", "bf16", 16])
def test_an_unknown_dtype_is_an_option_error(f32_run: Path, bad: object) -> None:
    with pytest.raises(OptionError, match="'sparsity_dtype' parameter of analyze must be one of"):
        opdlens.analyze(open_run(f32_run), sparsity_dtype=bad)


def test_compare_counts_masks_in_the_view(f32_run: Path, tmp_path: Path) -> None:
    other = checkpoints.write_hf_run(
        tmp_path / "b", "llama", STEPS, "safetensors", torch.float32,
        update=lambda n, w, s: moved(n, w, s, salt=1), trainer_files=False,
    )  # fmt: skip
    got = opdlens.compare(open_run(f32_run), open_run(other), ranks=(1,), workers=1,
                          sparsity_dtype="bfloat16", scopes="tensor")  # fmt: skip
    row = got.set_index("tensor").loc[NAME]
    w0, wa, wb = state(f32_run, 0)[NAME], state(f32_run, 2)[NAME], state(other, 2)[NAME]
    ma, mb = bf16_bits(wa) != bf16_bits(w0), bf16_bits(wb) != bf16_bits(w0)
    assert row["changed_a"] == np.count_nonzero(ma) and row["changed_b"] == np.count_nonzero(mb)
    assert row["changed_both"] == np.count_nonzero(ma & mb)
    assert row["jaccard"] == pytest.approx(np.count_nonzero(ma & mb) / np.count_nonzero(ma | mb))
    with pytest.raises(OptionError, match="sparsity_tol .* or sparsity_dtype .* not both"):
        opdlens.compare(open_run(f32_run), open_run(other), sparsity_tol=1e-5,
                        sparsity_dtype="bfloat16")  # fmt: skip


def test_count_changed_view_rounds_both_sides() -> None:
    base = torch.tensor([1.0, 1.0, 1.0, 0.0, 3.0])
    # 1 + 2^-9 rounds back to 1 in bf16 (8 bits); 1 + 2^-7 does not; +0 vs −0; 3.005 rounds back to 3
    cur = torch.tensor([1.0 + 2**-9, 1.0 + 2**-7, 1.0, -0.0, 3.005])
    assert changed_mask(base, cur, view=torch.bfloat16).tolist() == [False, True, False, False,
                                                                      False]  # fmt: skip
    got = count_changed(base, cur, 1e-3, view=torch.bfloat16)
    assert (got.changed, got.changed_tol, got.numel) == (1, 3, 5)


def test_compare_cli_takes_the_dtype_and_refuses_it_with_a_tolerance(
    f32_run: Path, tmp_path: Path
) -> None:
    out = tmp_path / "cmp"
    args = ["compare", str(f32_run), str(f32_run), "--out", str(out), "--ranks", "1",
            "--workers", "1", "--quiet"]  # fmt: skip
    result = CliRunner().invoke(app, [*args, "--sparsity-dtype", "bfloat16"])
    assert result.exit_code == 0, result.output
    assert json.loads((out / "provenance.json").read_text())["options"]["sparsity_dtype"] == (
        "bfloat16"
    )
    df = pd.read_parquet(out / "compare.parquet")
    overall = df[df["scope"] == "overall"].iloc[0]
    masks = {
        k: bf16_bits(v) != bf16_bits(state(f32_run, 0)[k]) for k, v in state(f32_run, 2).items()
    }
    assert overall["changed_a"] == sum(int(m.sum()) for m in masks.values())
    bad = CliRunner().invoke(app, [*args[:4], str(tmp_path / "x"), "--sparsity-dtype", "bfloat16",
                                   "--sparsity-tol", "1e-5"])  # fmt: skip
    assert bad.exit_code == 2 and "not both" in bad.stderr and "Traceback" not in bad.output
