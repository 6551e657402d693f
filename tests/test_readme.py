"""The README's tours run as written, on the runs its first command (`opdlens demo`) trains."""

from __future__ import annotations

import ast
import json
import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import pytest
import torch
from checkpoints import copy_demo

README = Path(__file__).resolve().parent.parent / "README.md"
# The CLI tour lines no test can run here, each with the reason.
UNTESTED = {
    "--address auto": "needs a running Ray cluster (without one: tests/analysis/test_cluster.py)"
}
if not torch.cuda.is_available():
    UNTESTED["--device cuda"] = "needs a CUDA GPU"
# README says eval.py stands for the user's own evaluation script. This one is cheap (no torch
# import per candidate): it prints the checkpoint's file count, after a line that is no number.
EVAL_PY = """import os, sys
print("evaluating", sys.argv[1])
print(len(os.listdir(sys.argv[1])))
"""


def _section(title: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end >= 0 else len(text)]


def _blocks(text: str, lang: str) -> list[str]:
    return re.findall(rf"^```{lang}\n(.*?)^```", text, flags=re.S | re.M)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, quick_demo: Path) -> Path:
    """`opdlens-demo/` as `opdlens demo --quick --out opdlens-demo` leaves its runs."""
    out = tmp_path_factory.mktemp("readme") / "opdlens-demo"
    copy_demo(quick_demo, out / "runs")
    return out


def _workdir(demo: Path, tmp_path: Path) -> Path:
    """A fresh directory holding `opdlens-demo/` where the README's commands expect it."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    (cwd / "opdlens-demo").symlink_to(demo, target_is_directory=True)
    return cwd


def test_readme_has_the_tours() -> None:
    assert len(_blocks(_section("A tour of the Python API"), "python")) == 2
    trainer = _blocks(_section("EffOPD inside the Trainer / TRL"), "python")
    assert len(trainer) == 1
    assert len(_blocks(_section("During training"), "python")) == 1
    assert len(_blocks(README.read_text(encoding="utf-8"), "python")) == 4  # no other snippet
    assert len(_blocks(_section("A tour of the command line"), "bash")) == 1


@pytest.mark.slow
def test_python_tour_runs_through_stdin(demo: Path, tmp_path: Path) -> None:
    code = _blocks(_section("A tour of the Python API"), "python")[0]  # alone, as typed
    proc = subprocess.run(
        [sys.executable, "-"], input=code, capture_output=True, text=True,
        cwd=_workdir(demo, tmp_path), timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    # The snippet ran to its last line: the evaluation verdict.
    lines = proc.stdout.strip().splitlines()
    assert re.search(r"(no saved step|beats standing still).*best rel_error", lines[-1]), lines
    assert "utility" in proc.stdout and "score_drop" in proc.stdout  # the ablation table
    assert re.search(r"extrapolation along the current update", proc.stdout), proc.stdout[-2000:]
    assert (tmp_path / "cwd/pred-api/extrapolation_errors.csv").is_file()


def test_online_effopd_snippet_runs_alone(tmp_path: Path) -> None:
    code = _blocks(_section("A tour of the Python API"), "python")[1]
    proc = subprocess.run([sys.executable, "-"], input=code, capture_output=True, text=True,
                          cwd=tmp_path, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    history = ast.literal_eval(proc.stdout.strip().splitlines()[-1])  # [(step, accepted), …]
    assert [step for step, _ in history] == [1, 2, 4, 8, 16, 32]
    assert all(isinstance(accepted, int) for _, accepted in history)
    assert not list(tmp_path.iterdir())  # it writes nothing


@pytest.mark.slow
def test_trl_sentence_says_what_a_cpu_needs(tmp_path: Path) -> None:
    """README: DistillationConfig needs bf16=False on a CPU; its default stops there."""
    import torch
    from trl import DistillationConfig

    sentence = _section("EffOPD inside the Trainer / TRL")
    assert "DistillationConfig(..., bf16=False)" in sentence
    assert "Your setup doesn't support bf16/gpu" in sentence
    if torch.cuda.is_available():
        pytest.skip("README's statement is about a machine without a GPU")
    with pytest.raises(ValueError, match="Your setup doesn't support bf16/gpu"):
        DistillationConfig(output_dir=str(tmp_path / "a"), report_to=[])
    assert (
        DistillationConfig(output_dir=str(tmp_path / "b"), report_to=[], bf16=False).bf16 is False
    )
    assert DistillationConfig(output_dir=str(tmp_path / "c"), report_to=[], use_cpu=True).bf16


def _cli_tour() -> tuple[str, list[str]]:
    """The tour's variable assignments and its command lines."""
    lines = [ln for ln in _blocks(_section("A tour of the command line"), "bash")[0].splitlines()
             if ln.strip()]  # fmt: skip
    assert lines[0].startswith("RUN="), lines[0]
    return lines[0], lines[1:]


def _after(commands: list[str]) -> list[list[int]]:
    """For each tour line, the earlier lines whose --out it reads (e.g. `report metrics/`)."""
    outs: dict[str, int] = {}
    needs = []
    for i, command in enumerate(commands):
        words = shlex.split(command, comments=True)
        out = words[words.index("--out") + 1] if "--out" in words else None
        read = {w.split("=", 1)[-1] for w in words[1:]} - {out}
        needs.append(sorted(outs[w] for w in read if w in outs))
        if out is not None:
            outs[out] = i
    return needs


def test_cli_tour_dependencies_are_found() -> None:
    _, commands = _cli_tour()
    needs = dict(zip(commands, _after(commands), strict=True))
    (report,) = [c for c in commands if c.startswith("opdlens report metrics/")]
    (analyze,) = [c for c in commands if "--out metrics/" in c]
    assert [commands[i] for i in needs[report]] == [analyze]
    (with_ablation,) = [c for c in commands if "--ablation OPD=ablate/" in c]
    (ablate,) = [c for c in commands if c.startswith("opdlens ablate")]
    assert [commands[i] for i in needs[with_ablation]] == [ablate]
    (geo_rl,) = [c for c in commands if "--base-from m-geo/" in c]
    (geo,) = [c for c in commands if "--out m-geo/" in c]
    assert [commands[i] for i in needs[geo_rl]] == [geo]
    assert sum(map(bool, needs.values())) == 3  # every other line reads only the demo's runs


@pytest.mark.slow
def test_cli_tour_runs_line_by_line(demo: Path, tmp_path: Path) -> None:
    cwd = _workdir(demo, tmp_path)
    (cwd / "eval.py").write_text(EVAL_PY)
    assignments, commands = _cli_tour()
    skipped = [c for c in commands if any(key in c for key in UNTESTED)]
    assert len(skipped) == len(UNTESTED), skipped  # every other line is run below
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    needs = _after(commands)

    def run(i: int) -> subprocess.CompletedProcess:
        for j in needs[i]:
            futures[j].result()  # started before this line, so never waits on a queued one
        return subprocess.run(
            ["bash", "-c", f"set -eu\n{assignments}\n{commands[i]}"], capture_output=True,
            text=True, cwd=cwd, env=env, timeout=900,
        )  # fmt: skip

    # The lines run in README order, two at a time (most of `watch`'s time is its --idle-exit
    # wait; the machine has two cores); a line that reads another's --out waits for it.
    futures: dict[int, Future] = {}
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i, command in enumerate(commands):
            if command in skipped:
                continue
            assert shlex.split(command, comments=True)[0] == "opdlens", command
            futures[i] = pool.submit(run, i)
    for i, future in futures.items():
        proc, command = future.result(), commands[i]
        assert proc.returncode == 0, f"{command}\n{proc.stderr[-3000:]}"
        assert "Traceback" not in proc.stderr, f"{command}\n{proc.stderr[-3000:]}"
    for output in ("metrics/metrics.parquet", "m/metrics.parquet", "figs/.opdlens",
                   "report/report.html", "pred/extrapolation_errors.csv", "pred2/model.safetensors",
                   "replay/history.csv", "replay2/history.csv", "s-scale/model.safetensors",
                   "s-lowrank/model.safetensors", "s-window/model.safetensors",
                   "foresight/foresight.csv", "live/metrics.parquet", "ablate/ablation.csv", "ablate/rank_curve.csv", "report-abl/report.html", "m-geo-rl/metrics.parquet"):  # fmt: skip
        assert (cwd / output).exists(), output
    # The demo's runs share their base: the second --base-geometry analysis decomposed no W_0.
    prov = json.loads((cwd / "m-geo-rl" / "provenance.json").read_text())
    assert prov["base_from"] and not any(m.startswith("base_w0:") for m in prov["svd_methods"])


@pytest.mark.slow
def test_effopd_trainer_section_runs_as_written(tmp_path: Path) -> None:
    (code,) = _blocks(_section("EffOPD inside the Trainer / TRL"), "python")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("\n1,0,1,2.0,") == 1  # the CSV's first candidate: step 1, anchor 0
    steps = sorted(
        int(p.name.split("-")[1]) for p in (tmp_path / "effopd-run").glob("checkpoint-*")
    )
    assert steps == [0, 1, 2, 4, 8, 10, 16]


@pytest.mark.slow
def test_during_training_section_runs_as_written(tmp_path: Path) -> None:
    pytest.importorskip("tensorboard")  # report_to=["tensorboard"] needs it
    (code,) = _blocks(_section("During training"), "python")
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == 0, out.stderr[-3000:]
    # the Trainer prints each log (ours too) as a dict; the snippet's own lines start with a step
    lines = [ln for ln in out.stdout.splitlines() if re.match(r"\d+ ", ln)]
    assert [int(ln.split()[0]) for ln in lines] == [4, 8, 12, 16]
    assert lines[0].endswith(" nan") and not lines[-1].endswith(" nan")  # α* from the 2nd on
    assert list((tmp_path / "dynamics-run" / "runs").rglob("events.out.tfevents.*"))
