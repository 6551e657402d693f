"""Extrapolation in every stored float dtype, non-finite inputs, and a write path without torch."""

from __future__ import annotations

import importlib
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from opdlens import OpdlensError, open_run
from opdlens.cli import app
from opdlens.extrapolation.extrapolate import extrapolate

from .conftest import linear_state, shapes, write_run

MATRICES = [n for n, s in shapes().items() if len(s) == 2 and (".self_attn." in n or ".mlp." in n)]
Q0 = "model.layers.0.self_attn.q_proj.weight"


def _random_states(dtype: torch.dtype) -> dict[int, dict[str, torch.Tensor]]:
    g = torch.Generator().manual_seed(3)
    return {s: {n: torch.randn(sh, generator=g).to(dtype) for n, sh in shapes().items()}
            for s in (0, 2, 5)}  # fmt: skip


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.float64, torch.float8_e4m3fn, torch.bfloat16, torch.float32]
)
def test_every_float_dtype_rounds_once_from_the_exact_value(tmp_path: Path, dtype) -> None:
    """The float32 arithmetic is exact for these narrow inputs; float64 is computed in float64."""
    states = _random_states(dtype)
    root = write_run(tmp_path / "run", steps=(0, 2, 5), state=lambda s: states[s])
    path, errors = extrapolate(open_run(root), 5, anchor=2, alpha=1.5, out=tmp_path / "p",
                               evaluate=True)  # fmt: skip
    got = load_file(path / "model.safetensors")
    for name in MATRICES:
        t, a = states[5][name].double(), states[2][name].double()
        want = (t + 1.5 * (t - a)).to(dtype)  # float64, then one rounding
        assert got[name].dtype == dtype, name
        if dtype == torch.float32:  # float32 arithmetic: within a few float32 roundings
            torch.testing.assert_close(got[name], want, rtol=3e-7, atol=1e-6)
        else:
            assert torch.equal(got[name], want), name
    for name in set(shapes()) - set(MATRICES):
        assert torch.equal(got[name], states[5][name]), name
    # The evaluation measures the prediction as written against the only other step (0).
    pred_to_base = sum(float((got[n].double() - states[0][n].double()).square().sum())
                       for n in MATRICES)  # fmt: skip
    overall = errors[errors["scope"] == "overall"]
    assert overall.empty  # no saved step after 5
    per_tensor = errors.attrs["equivalent_step"]
    assert per_tensor in (0, 2, 5) and pred_to_base > 0


def _nan_run(tmp_path: Path, name: str) -> Path:
    def state(s: int) -> dict[str, torch.Tensor]:
        st = linear_state(s, torch.bfloat16)
        if s == 4:
            st[name].view(-1)[2] = float("nan")
        return st

    return write_run(tmp_path / "run", state=state)


def test_non_finite_weights_are_refused_naming_file_and_tensor(tmp_path: Path) -> None:
    root = _nan_run(tmp_path, Q0)
    out = tmp_path / "outs" / "pred"
    with pytest.raises(
        OpdlensError, match=rf"checkpoint-4/model.safetensors: tensor '{Q0}' holds NaN"
    ):
        extrapolate(open_run(root), 4, anchor=2, alpha=1.0, out=out)
    assert not out.parent.exists()  # the folder it created for --out is removed too
    result = CliRunner().invoke(app, ["extrapolate", str(root), "--step", "8", "--anchor", "4",
                                      "--alpha", "1", "--out", str(out), "--quiet"])  # fmt: skip
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"checkpoint-4/model.safetensors: tensor '{Q0}' holds NaN" in result.output
    assert not out.exists()
    # A tensor that is only copied keeps its values: the output is a faithful θ_t there.
    norm = "model.layers.0.input_layernorm.weight"
    path, _ = extrapolate(open_run(_nan_run(tmp_path / "b", norm)), 4, anchor=2, alpha=1.0,
                          out=tmp_path / "ok")  # fmt: skip
    assert torch.isnan(load_file(path / "model.safetensors")[norm][2])


def test_overflowing_the_stored_dtype_is_refused(tmp_path: Path) -> None:
    root = write_run(tmp_path / "run", dtype=torch.float16)
    with pytest.raises(OpdlensError, match=r"overflows its dtype \(float16\) at alpha 1000000.0"):
        extrapolate(open_run(root), 4, anchor=2, alpha=1e6, out=tmp_path / "p")
    assert not (tmp_path / "p").exists()


_WITHOUT_TORCH = """
import sys
from opdlens.cli import main
sys.argv = ["opdlens", *sys.argv[1:]]
try:
    main()
except SystemExit as e:
    assert not e.code, e.code
print("imported:", sorted(m for m in ("torch", "pandas", "matplotlib") if m in sys.modules))
"""

# Command words, options, and the step whose linear state the written q_proj must equal.
_TORCH_FREE = {
    "extrapolate": (["extrapolate"], ["--step", "4", "--anchor", "2", "--alpha", "1"], 6),
    "scale": (["surgery", "scale"], ["--step", "4", "--factor", "0.5"], 2),  # θ_0 + ½(θ_4 − θ_0)
    "window": (["surgery", "window"], ["--step", "4", "--layers", "0-0"], 4),  # layer 0 keeps θ_4
}


@pytest.mark.parametrize(("command", "sharded"), [("extrapolate", False), ("extrapolate", True),
                                                  ("scale", False), ("window", True)])  # fmt: skip
def test_safetensors_write_paths_never_import_torch(tmp_path: Path, command: str, sharded: bool):
    root = write_run(tmp_path / "run", dtype=torch.bfloat16, sharded=sharded)
    words, options, want_step = _TORCH_FREE[command]
    args = [*words, str(root), *options, "--out", str(tmp_path / "pred"), "--quiet"]
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_WITHOUT_TORCH), *args],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().endswith("imported: []")
    files = sorted(p.name for p in (tmp_path / "pred").glob("*.safetensors"))
    got = {}
    for f in files:
        got |= load_file(tmp_path / "pred" / f)
    assert torch.equal(got[Q0], linear_state(want_step, torch.bfloat16)[Q0])
    assert len(files) == (2 if sharded else 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float64])
def test_small_spans_write_the_same_checkpoint_and_errors(tmp_path: Path, monkeypatch, dtype):
    # The module, not the function of the same name that opdlens.extrapolation exports.
    ex = importlib.import_module("opdlens.extrapolation.extrapolate")
    root = write_run(tmp_path / "run", state=lambda s: linear_state(s, dtype, seed=5))
    whole_path, whole = extrapolate(open_run(root), 2, anchor=1, alpha=2.5, out=tmp_path / "a",
                                    evaluate=True)  # fmt: skip
    monkeypatch.setattr(ex, "SPAN", 7)  # many spans per tensor, most ending mid-row
    span_path, spans = extrapolate(open_run(root), 2, anchor=1, alpha=2.5, out=tmp_path / "b",
                                   evaluate=True)  # fmt: skip
    a, b = load_file(whole_path / "model.safetensors"), load_file(span_path / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[n], b[n]) for n in a)
    numeric = ["pred_distance", "stay_distance", "rel_error"]
    np.testing.assert_allclose(spans[numeric].to_numpy(), whole[numeric].to_numpy(), rtol=1e-12)
    assert spans.attrs["equivalent_step"] == whole.attrs["equivalent_step"] == 4  # 2 + 2.5·1
