"""CLI of extrapolate, replay and surgery: outputs written, bad input → one line, exit 2."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

from opdlens.cli import app

runner = CliRunner()
Q0 = "model.layers.0.self_attn.q_proj.weight"


def _state(step: int) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    out = {}
    for name, shape in {
        Q0: (8, 8),
        "model.layers.0.mlp.up_proj.weight": (12, 8),
        "model.norm.weight": (8,),
    }.items():
        w0, d = (
            torch.randint(-8, 8, shape, generator=g) / 8,
            torch.randint(-4, 4, shape, generator=g) / 64,
        )
        out[name] = (w0 + step * d).to(torch.bfloat16)
    return out


@pytest.fixture
def run(tmp_path: Path) -> Path:
    for s in (0, 1, 2, 4):
        d = tmp_path / "run" / f"checkpoint-{s}"
        d.mkdir(parents=True)
        (d / "config.json").write_text(json.dumps({"model_type": "qwen3"}))
        save_file(_state(s), d / "model.safetensors")
    return tmp_path / "run"


def _fails(args: list[str], match: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output, result.stderr
    assert match in lines[0], lines[0]


def test_extrapolate_writes_and_evaluates(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "pred"
    result = runner.invoke(app, ["extrapolate", str(run), "--step", "2", "--anchor", "1", "--alpha", "2",
                                 "--out", str(out), "--evaluate", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "equivalent_step (nearest saved step): 4" in result.stdout
    assert torch.equal(load_file(out / "model.safetensors")[Q0], _state(4)[Q0])
    neg = tmp_path / "neg"
    result = runner.invoke(app, ["extrapolate", str(run), "--step", "2", "--from-base", "--alpha", "-0.5",
                                 "--out", str(neg), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert torch.equal(load_file(neg / "model.safetensors")[Q0], _state(1)[Q0])
    pair = tmp_path / "pair"
    result = runner.invoke(app, ["extrapolate", "--current", str(run / "checkpoint-2"), "--anchor-path",
                                 str(run / "checkpoint-1"), "--alpha", "2", "--out", str(pair), "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert torch.equal(load_file(pair / "model.safetensors")[Q0], _state(4)[Q0])


def test_extrapolate_evaluate_says_when_it_is_no_gain(run: Path, tmp_path: Path) -> None:
    result = runner.invoke(app, ["extrapolate", str(run), "--step", "2", "--anchor", "1", "--alpha", "5",
                                 "--out", str(tmp_path / "far"), "--evaluate", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    # θ_pred = θ_7: step 4 is nearest (3 away) but θ_2 is nearer to it (2 away): rel_error 1.5.
    assert "equivalent_step (nearest saved step)" not in result.stdout
    assert (
        "equivalent_step: no saved step: the prediction is farther from every later saved step "
        "than θ_t is (best rel_error 1.50 at step 4); nearest saved step 4." in result.stdout
    )


def test_extrapolate_bad_input(run: Path, tmp_path: Path) -> None:
    base = ["extrapolate", str(run), "--anchor", "1", "--alpha", "1", "-q"]
    _fails([*base, "--step", "3", "--out", str(tmp_path / "o")], "Step 3 is not a saved step")
    _fails([*base, "--step", "2", "--out", str(run / "inside")], "overlaps the input")
    _fails([*base, "--step", "2", "--out", str(run / "checkpoint-2")], "overlaps the input")
    _fails(["extrapolate", str(run), "--step", "2", "--anchor", "1", "--alpha", "nan", "--out",
            str(tmp_path / "o")], "must be finite")  # fmt: skip
    _fails(
        ["extrapolate", str(run), "--step", "2", "--alpha", "1", "--out", str(tmp_path / "o")],
        "--from-base",
    )
    _fails(["extrapolate", str(tmp_path / "nowhere"), "--step", "2", "--anchor", "1", "--out",
            str(tmp_path / "o")], "nowhere")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_replay_cli(run: Path, tmp_path: Path) -> None:
    out = tmp_path / "replay"
    result = runner.invoke(
        app, ["replay", str(run), "--scorer", "hindsight", "--out", str(out), "-q"]
    )
    assert result.exit_code == 0, result.output
    assert "ORACLE" in result.stdout and "cannot continue training" in result.stdout
    assert (out / "history.csv").is_file() and (out / "history.json").is_file()
    _fails(["replay", str(run), "--scorer", "no_such_module_q:score", "--dry-run", "-q"],
           "Cannot import scorer module 'no_such_module_q'")  # fmt: skip
    _fails(["replay", str(run), "--scorer-cmd", "exit 1 # {checkpoint}", "--dry-run", "-q"],
           "on step 1 as saved")  # fmt: skip
    _fails(["replay", str(run), "--scorer", "hindsight", "-q"], "--out DIR")


def test_replay_prints_a_narrow_summary_and_keeps_the_full_table(tmp_path: Path) -> None:
    root = tmp_path / "long"
    for s in range(0, 17):
        d = root / f"checkpoint-{s}"
        d.mkdir(parents=True)
        save_file(_state(s), d / "model.safetensors")
    out = tmp_path / "replay"
    result = runner.invoke(app, ["replay", str(root), "--scorer", "hindsight", "--out", str(out),
                                 "--max-candidates", "2", "-q"])  # fmt: skip
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = next(ln for ln in lines if ln.lstrip().startswith("step"))
    assert header.split() == ["step", "candidate", "alpha", "score", "accepted", "next_step",
                              "rel_error_next", "equivalent_step"]  # fmt: skip
    assert max(map(len, lines[: lines.index(header) + 16])) <= 100
    # Step 1's saved checkpoint stands still; candidate 1 (θ_3) against step 2: ‖θ3 − θ2‖/‖θ1 − θ2‖ = 1.
    row = lines[lines.index(header) + 2].split()
    assert row[:2] == ["1", "1"] and row[5:] == ["2", "1", "3"]
    full = pd.read_csv(out / "history.csv")
    assert [c for c in full if c.startswith("rel_error_")] == [
        f"rel_error_{s}" for s in range(2, 17)
    ]


def test_surgery_cli(run: Path, tmp_path: Path) -> None:
    for args in (["scale", "--factor", "0.5"], ["lowrank", "--rank", "1", "--keep-norm"],
                 ["window", "--layers", "0-0", "--blocks", "mlp"]):  # fmt: skip
        out = tmp_path / args[0]
        result = runner.invoke(
            app, ["surgery", args[0], str(run), "--step", "4", *args[1:], "--out", str(out), "-q"]
        )
        assert result.exit_code == 0, result.output
        assert (out / "model.safetensors").is_file()
    window = load_file(tmp_path / "window" / "model.safetensors")
    assert torch.equal(window[Q0], _state(0)[Q0])
    _fails(
        [
            "surgery",
            "scale",
            str(run),
            "--step",
            "4",
            "--factor",
            "-1",
            "--out",
            str(tmp_path / "x"),
        ],
        "≥ 0",
    )
    _fails(["surgery", "window", str(run), "--step", "4", "--layers", "a-b", "--out", str(tmp_path / "x")],
           "FIRST-LAST")  # fmt: skip


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--alpha0", "0"], "The 'alpha0' parameter (--alpha0) of EffOPD's schedule must be a finite number > 0"),
        (["--alpha0", "-0.5"], "Got -0.5 instead"),
        (["--max-candidates", "0"], "The 'max_candidates' parameter (--max-candidates) of EffOPD's schedule"),
    ],
)  # fmt: skip
def test_replay_refuses_alpha0_at_most_zero_and_no_candidates(
    run: Path, tmp_path: Path, args: list[str], needle: str
) -> None:
    out = tmp_path / "o"
    _fails(["replay", str(run), "--scorer", "hindsight", "--out", str(out), "-q", *args], needle)
    assert not out.exists()


@pytest.mark.parametrize(
    ("item", "needle"),
    [
        ("two=x", "--checkpoint takes STEP=PATH with a whole-number step in digits 0-9; got 'two=x'"),
        ("99999999999999999999=x", "the step is larger than"),
        ("2", "--checkpoint takes STEP=PATH"),
    ],
)  # fmt: skip
def test_bad_checkpoint_flags_are_option_errors(
    run: Path, tmp_path: Path, item: str, needle: str
) -> None:
    from opdlens import OptionError
    from opdlens.cli._app import parse_checkpoints

    base = ["extrapolate", "--step", "2", "--anchor", "1", "--alpha", "1", "-q"]
    _fails([*base, "--checkpoint", item, "--out", str(tmp_path / "o")], needle)
    with pytest.raises(OptionError, match=needle.replace("(", r"\(").split(" got")[0]):
        parse_checkpoints([item])
    twice = [f"0={run}/checkpoint-0", f"0={run}/checkpoint-1"]
    _fails([*base, *(f"--checkpoint={c}" for c in twice), "--out", str(tmp_path / "o")],
           "--checkpoint gives step 0 twice")  # fmt: skip
    assert not (tmp_path / "o").exists()


def test_bad_step_and_anchor_values_are_option_errors(run: Path, tmp_path: Path) -> None:
    """A step or anchor the run does not hold is a bad option value (also a ValueError)."""
    from opdlens import OptionError, open_run
    from opdlens.extrapolation import extrapolate

    r = open_run(run)
    with pytest.raises(OptionError, match="Step 3 is not a saved step"):
        extrapolate(r, 3, anchor=1, alpha=1.0, out=tmp_path / "o")
    with pytest.raises(OptionError, match="The anchor must be saved before the step"):
        extrapolate(r, 2, anchor=4, alpha=1.0, out=tmp_path / "o")
    with pytest.raises(ValueError, match="Step 3 is not in the run"):
        r.checkpoint(3)
    assert not (tmp_path / "o").exists()
