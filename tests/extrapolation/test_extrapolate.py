"""One-shot extrapolation: exact against independent arithmetic, layout mirrored, inputs safe."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from opdlens import OpdlensError, open_run
from opdlens.extrapolation.extrapolate import extrapolate, extrapolate_paths
from opdlens.io.writer import is_temp_dir

from .conftest import MATRICES, linear_state, shapes, write_run


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_linear_motion_lands_on_the_later_checkpoint(tmp_path: Path, dtype: torch.dtype) -> None:
    run = open_run(write_run(tmp_path / "run", dtype=dtype))
    path, errors = extrapolate(run, 4, anchor=2, alpha=2.0, out=tmp_path / "pred", evaluate=True)
    got, want = (
        load_file(path / "model.safetensors"),
        load_file(tmp_path / "run/checkpoint-8/model.safetensors"),
    )
    step4 = load_file(tmp_path / "run/checkpoint-4/model.safetensors")
    for name in MATRICES:  # the grid values are exact in bf16: one rounding changes nothing
        assert torch.equal(got[name], want[name]), name
    for name in set(got) - set(MATRICES):  # untouched tensors are byte-exact copies of θ_t
        assert got[name].dtype == step4[name].dtype and torch.equal(got[name], step4[name])
    overall = errors[errors["scope"] == "overall"]
    assert overall["target_step"].tolist() == [8] and overall["rel_error"].iloc[0] == 0.0
    assert errors.attrs["equivalent_step"] == 8


def test_written_tensors_equal_an_independent_computation(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(1)
    states = {s: {n: torch.randn(sh, generator=g).to(torch.bfloat16) for n, sh in shapes().items()}
              for s in (0, 3, 7)}  # fmt: skip
    root = write_run(tmp_path / "run", steps=(0, 3, 7), state=lambda s: states[s])
    path, errors = extrapolate(open_run(root), 7, anchor=3, alpha=-0.75, out=tmp_path / "p")
    assert errors is None  # no evaluation asked: no DataFrame (and no pandas import)
    got = load_file(path / "model.safetensors")
    for name in MATRICES:
        t, a = states[7][name].double(), states[3][name].double()
        want = (t + -0.75 * (t - a)).to(torch.bfloat16)  # float64 then one rounding
        assert torch.equal(got[name], want), name


def test_evaluate_rel_error_and_equivalent_step(linear_run: Path, tmp_path: Path) -> None:
    _, errors = extrapolate(
        open_run(linear_run), 4, anchor=2, alpha=1.0, out=tmp_path / "p", evaluate=True
    )
    # θ_pred = θ_6: ‖θ6 − θ8‖ / ‖θ4 − θ8‖ = 2/4 on every tensor; θ_4 and θ_8 tie, the earlier wins.
    assert errors["rel_error"].tolist() == pytest.approx([0.5] * len(errors))
    assert len(errors) == len(MATRICES) + 1
    assert errors["equivalent_step"].unique().tolist() == [4]


def test_evaluate_says_when_no_later_step_is_nearer_than_standing_still(
    linear_run: Path, tmp_path: Path
) -> None:
    run = open_run(linear_run)
    path, errors = extrapolate(run, 4, anchor=2, alpha=5.0, out=tmp_path / "far", evaluate=True)
    # θ_pred = θ_14: step 8 is the nearest saved step (6 away), but θ_4 is nearer to it (4 away).
    assert errors.attrs["equivalent_step"] == 8
    assert errors.attrs["beats_standing_still"] is False
    assert errors.attrs["best_target_step"] == 8
    assert errors.attrs["best_rel_error"] == pytest.approx(1.5)
    assert errors.attrs["verdict"] == (
        "no saved step: the prediction is farther from every later saved step than θ_t is "
        "(best rel_error 1.50 at step 8)"
    )
    provenance = json.loads((path / "opdlens_provenance.json").read_text())
    assert provenance["evaluation"] == errors.attrs["verdict"]
    assert provenance["equivalent_step"] == "8"
    _, good = extrapolate(run, 4, anchor=2, alpha=2.0, out=tmp_path / "near", evaluate=True)
    assert good.attrs["beats_standing_still"] is True and good.attrs["best_rel_error"] == 0.0
    assert good.attrs["verdict"].startswith("the prediction beats standing still")


def test_sharded_layout_metadata_and_support_files(tmp_path: Path) -> None:
    root = write_run(tmp_path / "run", sharded=True)
    path, _ = extrapolate(open_run(root), 2, from_base=True, alpha=0.5, out=tmp_path / "p")
    src = json.loads((root / "checkpoint-2/model.safetensors.index.json").read_text())["weight_map"]
    out = json.loads((path / "model.safetensors.index.json").read_text())["weight_map"]
    assert out == src
    assert {"config.json", "tokenizer_config.json", "opdlens_provenance.json"} <= {
        p.name for p in path.iterdir()
    }
    assert not (path / "optimizer.pt").exists()
    with safe_open(path / "model-00001-of-00002.safetensors", "pt") as f:
        meta = f.metadata()
    assert (meta["alpha"], meta["step"], meta["anchor"]) == ("0.5", "2", "0")
    assert meta["opdlens_version"] and meta["opdlens_operation"] == "extrapolate"
    assert json.loads((path / "opdlens_provenance.json").read_text())["alpha"] == "0.5"


def test_bin_input_is_written_as_safetensors(tmp_path: Path) -> None:
    for s in (0, 2):
        d = tmp_path / "run" / f"checkpoint-{s}"
        d.mkdir(parents=True)
        (d / "config.json").write_text("{}")
        torch.save(linear_state(s), d / "pytorch_model.bin")
    path, _ = extrapolate(
        open_run(tmp_path / "run"), 2, from_base=True, alpha=1.0, out=tmp_path / "p"
    )
    got = load_file(path / "model.safetensors")
    assert torch.equal(got[MATRICES[0]], linear_state(4)[MATRICES[0]])


def test_two_explicit_checkpoint_directories(linear_run: Path, tmp_path: Path) -> None:
    path = extrapolate_paths(linear_run / "checkpoint-2", linear_run / "checkpoint-1", alpha=2.0,
                             out=tmp_path / "p")  # fmt: skip
    got = load_file(path / "model.safetensors")
    assert torch.equal(got[MATRICES[3]], linear_state(4)[MATRICES[3]])


def test_outputs_overlapping_inputs_are_refused(linear_run: Path, tmp_path: Path) -> None:
    run = open_run(linear_run)
    for bad in (
        linear_run / "pred",
        linear_run / "checkpoint-4",
        linear_run / "checkpoint-8" / "x",
    ):
        with pytest.raises(OpdlensError, match="overlaps the input"):
            extrapolate(run, 4, anchor=2, alpha=1.0, out=bad)
    extrapolate(run, 4, anchor=2, alpha=1.0, out=tmp_path / "p")
    with pytest.raises(OpdlensError, match="already exists"):
        extrapolate(run, 4, anchor=2, alpha=1.0, out=tmp_path / "p")
    extrapolate(run, 4, anchor=2, alpha=2.0, out=tmp_path / "p", overwrite=True)
    assert torch.equal(
        load_file(tmp_path / "p/model.safetensors")[MATRICES[0]], linear_state(8)[MATRICES[0]]
    )


def test_bad_arguments(linear_run: Path, tmp_path: Path) -> None:
    run = open_run(linear_run)
    with pytest.raises(OpdlensError, match="Step 5 is not a saved step"):
        extrapolate(run, 5, anchor=2, alpha=1.0, out=tmp_path / "p")
    with pytest.raises(OpdlensError, match="Step 3 is not in the run"):
        extrapolate(run, 4, anchor=3, alpha=1.0, out=tmp_path / "p")
    with pytest.raises(OpdlensError, match="anchor must be saved before"):
        extrapolate(run, 4, anchor=8, alpha=1.0, out=tmp_path / "p")
    for alpha in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="'alpha' parameter must be finite"):
            extrapolate(run, 4, anchor=2, alpha=alpha, out=tmp_path / "p")
    with pytest.raises(ValueError, match="exactly one of anchor"):
        extrapolate(run, 4, anchor=2, from_base=True, alpha=1.0, out=tmp_path / "p")
    assert not (tmp_path / "p").exists()
    path, _ = extrapolate(run, 4, anchor=2, alpha=-0.5, out=tmp_path / "p")  # interpolates to θ_3
    assert torch.equal(
        load_file(path / "model.safetensors")[MATRICES[1]], linear_state(3)[MATRICES[1]]
    )


_KILLED_CHILD = """
import os, signal, sys
from opdlens import open_run
from opdlens.extrapolation.extrapolate import extrapolate
from opdlens.io.writer import CheckpointWriter
original, count = CheckpointWriter.write, [0]
def write(self, name, tensor):
    original(self, name, tensor)
    count[0] += 1
    if count[0] == 5:
        os.kill(os.getpid(), getattr(signal, sys.argv[3]))
CheckpointWriter.write = write
extrapolate(open_run(sys.argv[1]), 4, anchor=2, alpha=1.0, out=sys.argv[2])
"""


@pytest.mark.parametrize("sig", ["SIGKILL", "SIGINT"])
def test_process_killed_mid_write_leaves_no_output(
    linear_run: Path, tmp_path: Path, sig: str
) -> None:
    out = tmp_path / "outs" / "pred"
    proc = subprocess.run([sys.executable, "-c", textwrap.dedent(_KILLED_CHILD), str(linear_run), str(out), sig],
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    assert proc.returncode == -signal.SIGKILL if sig == "SIGKILL" else proc.returncode != 0
    assert not out.exists()
    left = os.listdir(out.parent) if out.parent.exists() else []
    assert all(is_temp_dir(Path(p)) for p in left)  # only a marked leftover, never `pred`
    if sig == "SIGINT":  # an interrupt cleans up after itself, `outs/` it created included
        assert not out.parent.exists()
