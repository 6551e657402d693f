"""demo.runs: the generated runs (trainer layout, replicates, online comparison), reuse and refusal."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from demo.names import llama_names
from opdlens.demo import accuracy, finished_runs, generate_runs
from opdlens.demo.portable import PORTABLE_CAPABILITIES
from opdlens.demo.runs import MANIFEST
from opdlens.demo.settings import replicate_dir
from opdlens.demo.train import saved_steps
from opdlens.errors import OpdlensError


def test_runs_have_trainer_layout_and_llama_names(runs) -> None:
    result, _ = runs
    for run_dir in (result.opd, result.rl):
        steps = sorted(int(p.name.split("-")[1]) for p in run_dir.glob("checkpoint-*"))
        assert steps == saved_steps(40, 10)
        assert {0, 1, 2, 4, 8, 16, 32} <= set(steps)
        metrics = pd.read_csv(run_dir / "metrics.csv")
        assert metrics["step"].tolist() == steps
        assert list(metrics.columns) == ["step", "accuracy", "loss", "reward", "reverse_kl"]
        for step in (0, steps[-1]):
            ck = run_dir / f"checkpoint-{step}"
            state = load_file(str(ck / "model.safetensors"))
            config = json.loads((ck / "config.json").read_text())
            assert set(state) == llama_names(config["num_hidden_layers"])
            assert config["architectures"] == ["LlamaForCausalLM"]
            assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
            assert config["opdlens_demo"]["step"] == step
            assert state["lm_head.weight"].shape == (config["vocab_size"], config["hidden_size"])
    assert (result.teacher / "model.safetensors").is_file()


def test_quick_runs_both_learn(runs) -> None:
    result, _ = runs
    for run_dir in (result.opd, result.rl):
        acc = pd.read_csv(run_dir / "metrics.csv")["accuracy"]
        # 40 steps: the full runs' first 40 (OPD 0.299 → 0.586, RL → 0.418 here).
        assert acc.iloc[-1] >= acc.iloc[0] + 0.05, (run_dir.name, acc.tolist())


def test_training_ran_on_the_portable_code_path(runs) -> None:
    result, _ = runs
    manifest = json.loads((result.out_dir / MANIFEST).read_text())
    path = manifest["code_path"]
    assert path.pop("cpu_capability") in PORTABLE_CAPABILITIES
    assert path == {"torch": torch.__version__, "threads": "1", "mkl_cbwr": "COMPATIBLE"}


def test_online_comparison_is_recorded(runs) -> None:
    result, _ = runs
    data = json.loads(result.online_path.read_text())
    assert data["target_accuracy"] == pytest.approx(0.9 * data["plain_final_accuracy"])
    assert [h["step"] for h in data["history"]] == [1, 2, 4, 8, 16, 32]
    assert data["curves"]["plain"][-1] == [40, result.online.plain_final_accuracy]
    assert result.online.history == data["history"]


def test_second_call_reuses_runs(runs, monkeypatch: pytest.MonkeyPatch) -> None:
    result, first_seconds = runs
    stamp = (result.opd / "metrics.csv").stat().st_mtime_ns

    def no_training(*args, **kwargs):
        raise AssertionError("generate_runs retrained complete runs")

    monkeypatch.setattr("opdlens.demo.runs.run_portable", no_training)
    monkeypatch.setattr("opdlens.demo.runs.run_jobs", no_training)
    again = generate_runs(result.out_dir, quick=True, progress=False)
    assert again == result
    assert (result.opd / "metrics.csv").stat().st_mtime_ns == stamp


def test_finished_runs_finds_a_finished_demo_and_nothing_else(runs, tmp_path: Path) -> None:
    result, _ = runs
    assert finished_runs(result.out_dir) == result
    cli_out = tmp_path / "opdlens-demo"  # `opdlens demo --out opdlens-demo` puts them in runs/
    cli_out.mkdir()
    (cli_out / "runs").symlink_to(result.out_dir, target_is_directory=True)
    found = finished_runs(cli_out)
    assert found is not None and found.opd == cli_out / "runs" / "opd"
    assert found.online == result.online
    assert finished_runs(tmp_path / "absent") is None and finished_runs(tmp_path) is None
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    manifest = json.loads((result.out_dir / MANIFEST).read_text())
    (unfinished / MANIFEST).write_text(json.dumps({**manifest, "complete": False}))
    assert finished_runs(unfinished) is None
    (unfinished / MANIFEST).write_text("{not json")
    assert finished_runs(unfinished) is None


def test_generate_runs_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OpdlensError, match="not a demo directory"):
        generate_runs(tmp_path, quick=True, progress=False)


# Margins of the full demo's accuracy targets: held-out exact match on 512 problems, so one
# answer is 0.002; each bound sits well inside what a full run reaches (README's table).
TEACHER_MIN = 0.95
START_RANGE = (0.2, 0.4)
LEARNED_BY = 0.15  # every run's last saved step beats the common start by at least this


@pytest.mark.slow
def test_full_demo_meets_its_accuracy_targets(full_demo) -> None:
    runs = full_demo.out_dir / "runs"
    dirs = {k: [runs / replicate_dir(k, r) for r in range(3)] for k in ("opd", "rl")}
    assert [p.name for p in dirs["rl"]] == ["rl", "rl-2", "rl-3"]
    curves = {p.name: pd.read_csv(p / "metrics.csv")["accuracy"] for d in dirs.values() for p in d}
    starts = {c.iloc[0] for c in curves.values()}
    assert len(starts) == 1  # one student start
    start = starts.pop()
    assert accuracy(runs / "teacher") >= TEACHER_MIN
    assert START_RANGE[0] <= start <= START_RANGE[1]
    for name, curve in curves.items():
        assert curve.iloc[-1] >= start + LEARNED_BY, (name, start, curve.tolist())
    finals = [curves[p.name].iloc[-1] for p in dirs["opd"]]
    assert len(set(finals)) > 1  # three seeds, three runs


@pytest.mark.slow
def test_quick_runs_are_the_full_runs_first_40_steps(runs, full_demo) -> None:
    """Two demos trained in separate processes at different times agree bit for bit."""
    quick, _ = runs
    full = full_demo.out_dir / "runs"
    for path in ("teacher", "opd/checkpoint-40", "rl/checkpoint-40"):
        a = load_file(str(quick.out_dir / path / "model.safetensors"))
        b = load_file(str(full / path / "model.safetensors"))
        assert sorted(a) == sorted(b)
        assert all(torch.equal(a[k], b[k]) for k in a), path
