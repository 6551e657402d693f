"""Hostile report inputs (issue 22, items 21, 25, 27): huge logged values, duplicate group runs."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parents[1]))
from cli_errors import cli_fails  # noqa: E402

from opdlens.cli import app  # noqa: E402

Q0 = "model.layers.0.self_attn.q_proj.weight"


def _run(root: Path, seed: int, hidden: int = 8, dtype: torch.dtype = torch.float32) -> Path:
    g = torch.Generator().manual_seed(seed)
    w0, d = torch.randn(hidden, hidden, generator=g), torch.randn(hidden, hidden, generator=g) / 8
    for s in (0, 1, 2, 4):
        ck = root / f"checkpoint-{s}"
        ck.mkdir(parents=True)
        state = {Q0: (w0 + s * d).to(dtype), "model.norm.weight": torch.ones(hidden, dtype=dtype)}
        save_file(state, ck / "model.safetensors")
    return root


def _invoke(args: list[object]):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_a_training_log_with_1e308_still_gives_the_report(tmp_path: Path) -> None:
    run = _run(tmp_path / "run", 0)
    log = tmp_path / "log.jsonl"
    log.write_text("\n".join(json.dumps(r) for r in [
        {"step": 1, "loss": -1e308}, {"step": 2, "loss": 1e308}, {"step": 3, "loss": 0.75},
        {"step": 4, "loss": 0.5}]) + "\n")  # fmt: skip
    result = _invoke(["report", run, "--metrics", log, "--out", tmp_path / "r", "-q",
                      "--workers", "1", "--no-foresight"])  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "2 value(s) beyond ±1e+100, too large for a figure's axis, left out" in result.stderr
    html = (tmp_path / "r" / "report.html").read_text()
    assert "too large for a figure" in html
    assert (tmp_path / "r" / "figures" / "training_and_weights.png").is_file()


@pytest.mark.parametrize("spelling", ["{0}/g/a0/", "{0}/g/./a0", "{0}/g/b/../a0", "{0}/link"])
def test_the_same_run_twice_in_a_group_is_refused(tmp_path: Path, spelling: str) -> None:
    _run(tmp_path / "g" / "a0", 0)
    _run(tmp_path / "g" / "a1", 1)
    (tmp_path / "g" / "b").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "g" / "a0")
    again = spelling.format(tmp_path)
    for cmd in ("report", "figures"):
        cli_fails([cmd, "--group", f"A={tmp_path}/g/a0,{tmp_path}/g/a1", "--group", f"B={again}",
                   "--out", tmp_path / cmd, "-q"], "--group gives the run", "twice")  # fmt: skip
        assert not (tmp_path / cmd).exists()
    cli_fails(["report", tmp_path / "g" / "a0", "--compare", again, "--out", tmp_path / "r"],
              "SOURCE and --compare gives the run")  # fmt: skip


def test_a_group_mixing_architectures_warns(tmp_path: Path) -> None:
    a = [_run(tmp_path / "a0", 0), _run(tmp_path / "a1", 1, hidden=12)]
    b = [_run(tmp_path / "b0", 2), _run(tmp_path / "b1", 3)]
    result = _invoke(["report", "--group", f"A={a[0]},{a[1]}", "--group", f"B={b[0]},{b[1]}",
                      "--out", tmp_path / "r", "-q", "--workers", "1", "--no-foresight"])  # fmt: skip
    assert result.exit_code == 0, result.output
    notes = [ln for ln in result.stderr.splitlines() if "mixes architectures" in ln]
    assert len(notes) == 1 and "group A mixes architectures: A-1 and A-2" in notes[0]


@pytest.mark.filterwarnings("error")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_extrapolate_overflow_is_one_line_without_a_numpy_warning(
    tmp_path: Path, dtype: torch.dtype
) -> None:
    run = _run(tmp_path / "run", 0, dtype=dtype)
    cli_fails(["extrapolate", run, "--step", "2", "--anchor", "1", "--alpha", "1e308", "--out",
               tmp_path / "p", "-q"], "overflows its dtype", "alpha 1e+308")  # fmt: skip
    assert not (tmp_path / "p").exists()
