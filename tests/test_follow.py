"""`opdlens.watch` (opdlens/follow.py) following runs while checkpoints land, against a fresh `analyze`."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import pytest
from incremental_reference import assert_equals_analyze, by_slice

import opdlens
from opdlens import WatchOptions, watch
from opdlens.analysis.options import AnalyzeOptions
from opdlens.errors import OptionError
from opdlens.follow import WatchResult

RANKS = (1, 4)
HERE = Path(__file__).parent


def _opts() -> AnalyzeOptions:
    return AnalyzeOptions(ranks=RANKS, workers=1)


def assert_matches_analyze(got: pd.DataFrame, run_dir: Path, base: Path | None = None) -> None:
    """watch's metrics equal a fresh analyze (provisional columns: its align_* at the end)."""
    want = opdlens.analyze(opdlens.open_run(run_dir, base), ranks=RANKS, workers=1)
    assert_equals_analyze(got, want, RANKS)


def _copy_slowly(src: Path, dest: Path, pause: float) -> None:
    """Copy a checkpoint directory the way a trainer writes it: weights in two halves, with a
    pause between, and trainer_state.json last."""
    dest.mkdir(parents=True)
    files = sorted(src.iterdir(), key=lambda p: p.name == "trainer_state.json")
    for f in files:
        data = f.read_bytes()
        with (dest / f.name).open("wb") as out:
            out.write(data[: len(data) // 2])
            out.flush()
            time.sleep(pause)
            out.write(data[len(data) // 2 :])


def _trainer(src: Path, dest: Path, pause: float) -> threading.Thread:
    def write() -> None:
        for d in sorted(src.iterdir(), key=lambda p: int(p.name.split("-")[1])):
            _copy_slowly(d, dest / d.name, pause)
            time.sleep(pause)

    t = threading.Thread(target=write, daemon=True)
    t.start()
    return t


def test_watch_follows_checkpoints_as_they_land(hf_run, tmp_path: Path) -> None:
    src = hf_run("llama")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    writer = _trainer(src, run_dir, pause=0.3)
    lines: list[str] = []
    result = watch(
        run_dir, tmp_path / "out", _opts(), WatchOptions(interval=0.1, until=4, report=False),
        say=lines.append,
    )  # fmt: skip
    writer.join(30)
    assert result.stopped == "until"
    assert result.steps == [1, 2, 4]
    # A look before the writer's first directory adds a "waiting for" note: steps only here.
    steps = [ln for ln in lines if ln.startswith("step ")]
    assert [ln.split(":")[0] for ln in steps] == ["step 1", "step 2", "step 4"]
    assert "α* —" in steps[0] and "α* —" not in steps[1]
    saved = pd.read_parquet(tmp_path / "out" / "metrics.parquet")
    assert_matches_analyze(saved, src)
    fore = pd.read_parquet(tmp_path / "out" / "foresight.parquet")
    assert fore[["step", "anchor", "target_step"]].values.tolist() == [[1, 0, 2], [2, 1, 4]]
    prov = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert prov["steps"] == [1, 2, 4] and prov["latest_step"] == 4


def test_resume_deleted_checkpoint_and_idle_exit(hf_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run_dir)
    out = tmp_path / "out"
    first = watch(run_dir, out, _opts(), WatchOptions(interval=0.05, until=2, report=False),
                  say=lambda _: None)  # fmt: skip
    assert first.steps == [1, 2]
    shutil.rmtree(run_dir / "checkpoint-1")  # the trainer's save_total_limit at work
    lines: list[str] = []
    second = watch(run_dir, out, _opts(), WatchOptions(interval=0.05, idle_exit=0.02,
                                                       report=False), say=lines.append)  # fmt: skip
    assert second.stopped == "idle" and second.steps == [1, 2, 4]
    assert lines[0].startswith("resuming") and any("step 1: its checkpoint is gone" in ln
                                                  for ln in lines)  # fmt: skip
    # No foresight for step 4: its anchor (step 1) is gone.
    assert any("no foresight for step 4" in ln for ln in lines)
    saved = pd.read_parquet(out / "metrics.parquet")
    assert sorted(saved["step"].unique()) == [1, 2, 4]
    assert_matches_analyze(saved, hf_run("llama"))


def test_resume_refuses_other_options_or_another_run(hf_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run_dir)
    out = tmp_path / "out"
    watch(run_dir, out, _opts(), WatchOptions(interval=0.05, until=1, report=False),
          say=lambda _: None)  # fmt: skip
    with pytest.raises(OptionError, match=r"other options: ranks=\[1, 4\] \(now \[2\]\);"):
        watch(run_dir, out, AnalyzeOptions(ranks=(2,), workers=1),
              WatchOptions(interval=0.05, until=1, report=False), say=lambda _: None)  # fmt: skip
    other = tmp_path / "other"
    shutil.copytree(hf_run("llama"), other)
    with pytest.raises(OptionError, match="not .*other"):
        watch(other, out, _opts(), WatchOptions(interval=0.05, until=1, report=False),
              say=lambda _: None)  # fmt: skip


def test_interrupt_leaves_valid_outputs_and_a_live_report_reloads(hf_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run_dir)
    out = tmp_path / "out"
    seen: list[str] = []

    def say(line: str) -> None:
        seen.append(line)
        if line.startswith("step 2"):
            page = (out / "report" / "report.html").read_text()
            assert '<meta http-equiv="refresh"' in page  # step 1's live report
            # A live page is redrawn at every step: only the PNGs it embeds are saved.
            assert {p.suffix for p in (out / "report" / "figures").iterdir()} == {".png"}
            raise KeyboardInterrupt

    result = watch(run_dir, out, _opts(), WatchOptions(interval=0.05), say=say)
    assert result.stopped == "interrupted" and result.steps == [1, 2]
    page = (out / "report" / "report.html").read_text()
    assert "refresh" not in page and "step 2" in page
    figures = {p.suffix for p in (out / "report" / "figures").iterdir()}
    assert figures == {".png", ".pdf", ".svg"}
    assert json.loads((out / ".opdlens").read_text())["complete"] is True
    prov = json.loads((out / "provenance.json").read_text())
    assert prov["steps"] == [1, 2]


def test_ctrl_c_that_a_native_read_turns_into_another_error_still_stops_cleanly(
    hf_run, tmp_path: Path, monkeypatch
) -> None:
    """A real SIGINT during step 2's reads, which the reader reports as a ValueError (as
    safetensors' get_tensor did in CI): watch stops as interrupted, outputs complete."""
    import signal

    from opdlens.analysis import incremental

    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run_dir)
    out = tmp_path / "out"
    real = incremental.alignment_with

    def interrupted_read(*args, **kwargs):
        if set(args[0]["step"]) != {2}:  # only step 2's alignment with step 1
            return real(*args, **kwargs)
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            raise ValueError(
                "could not determine the shape of object type 'UntypedStorage'"
            ) from None
        return real(*args, **kwargs)

    monkeypatch.setattr(incremental, "alignment_with", interrupted_read)
    result = watch(run_dir, out, _opts(), WatchOptions(interval=0.05, report=False))
    assert result.stopped == "interrupted" and result.steps == [1, 2]
    assert json.loads((out / ".opdlens").read_text())["complete"] is True
    assert json.loads((out / "provenance.json").read_text())["steps"] == [1, 2]
    # Without a Ctrl-C the same error is a bug and keeps its traceback.
    monkeypatch.setattr(incremental, "alignment_with", lambda *a, **k: int("x"))
    with pytest.raises(ValueError, match="invalid literal"):
        watch(run_dir, tmp_path / "out2", _opts(), WatchOptions(interval=0.05, report=False))


@pytest.mark.parametrize("layout", ["verl-hf", "verl-plain", "peft"])
def test_watch_reads_the_layouts_analyze_reads(hf_run, tmp_path: Path, layout: str) -> None:
    base = None
    if layout == "peft":
        base = hf_run("llama") / "checkpoint-0"
        run_dir = checkpoints.write_peft_run(tmp_path / "run", base, steps=(1, 2))
        last = 2
    else:
        weights = layout.split("-")[1]
        run_dir = checkpoints.write_verl_run(tmp_path / "run", "llama", steps=(0, 2, 4),
                                             weights=weights)  # fmt: skip
        last = 4
    result = watch(run_dir, tmp_path / "out", _opts(),
                   WatchOptions(interval=0.05, until=last, report=False, base=base),
                   say=lambda _: None)  # fmt: skip
    assert result.steps[-1] == last
    assert_matches_analyze(result.frame, run_dir, base=base)


def test_a_checkpoint_deleted_between_the_look_and_the_read_is_skipped(
    hf_run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import opdlens.io.complete as complete

    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run_dir)
    real = complete.complete_steps
    looks = []

    def look(*args, **kwargs):
        found = real(*args, **kwargs)
        looks.append(sorted(found[0]))
        if 2 in found[0] and (run_dir / "checkpoint-2").exists():
            shutil.rmtree(run_dir / "checkpoint-2")  # the trainer's rotation, just after the look
        return found

    monkeypatch.setattr(complete, "complete_steps", look)
    lines: list[str] = []
    result = watch(run_dir, tmp_path / "out", _opts(),
                   WatchOptions(interval=0.05, until=4, report=False), say=lines.append)  # fmt: skip
    assert result.steps == [1, 4]
    assert any(2 in seen for seen in looks)


def test_a_stop_event_ends_a_watch_whose_trainer_failed(hf_run, tmp_path: Path) -> None:
    """A trainer wrote steps 0 and 1, then died: setting `stop` ends the watch (waiting for
    step 4) within one poll, and its outputs are valid up to step 1."""
    src, run_dir, out = hf_run("llama"), tmp_path / "run", tmp_path / "out"
    for step in (0, 1):
        shutil.copytree(src / f"checkpoint-{step}", run_dir / f"checkpoint-{step}")
    stop = threading.Event()
    lines: list[str] = []
    got: dict[str, object] = {}

    def follow() -> None:
        got["result"] = watch(run_dir, out, _opts(), WatchOptions(interval=0.2, until=4,
                              report=False), say=lines.append, stop=stop)  # fmt: skip

    thread = threading.Thread(target=follow)
    thread.start()
    deadline = time.monotonic() + 60
    while not lines and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [ln.split(":")[0] for ln in lines] == ["step 1"]
    time.sleep(0.5)  # polls that find nothing new: watch keeps waiting for step 4
    assert thread.is_alive()
    stop.set()
    thread.join(5)
    assert not thread.is_alive()
    result = got["result"]
    assert isinstance(result, WatchResult)
    assert result.stopped == "stopped" and result.steps == [1]
    assert json.loads((out / ".opdlens").read_text())["complete"] is True
    assert json.loads((out / "provenance.json").read_text())["steps"] == [1]
    saved = pd.read_parquet(out / "metrics.parquet")
    want = opdlens.analyze(opdlens.open_run(src), ranks=RANKS, workers=1)
    want = want[want["step"] == 1]
    for col in ("update_norm", "base_norm"):
        np.testing.assert_allclose(by_slice(saved)[col], by_slice(want)[col], rtol=1e-5)


def test_watch_options_are_checked() -> None:
    for bad in ({"interval": 0}, {"interval": float("nan")}, {"until": 0}, {"idle_exit": -1.0}):
        with pytest.raises(OptionError):
            WatchOptions(**bad)


@pytest.mark.slow
def test_watch_follows_a_real_trainer_in_a_subprocess(tmp_path: Path) -> None:
    """The issue's invariant: a Trainer trains in another process while watch follows it; when
    it ends, watch's metrics equal a fresh analyze of the same run."""
    run_dir = tmp_path / "run"
    script = HERE / "watch_trainer.py"
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]),
    }
    trainer = subprocess.Popen([sys.executable, str(script), str(run_dir)], cwd=HERE, env=env)
    try:
        lines: list[str] = []
        result = watch(run_dir, tmp_path / "out", _opts(),
                       WatchOptions(interval=0.2, until=12, idle_exit=3.0), say=lines.append)  # fmt: skip
        assert trainer.wait(timeout=300) == 0
    finally:
        trainer.kill()
    assert result.stopped == "until" and result.steps == [3, 6, 9, 12]
    assert len([ln for ln in lines if ln.startswith("step ")]) == 4  # notes aside (waiting …)
    assert_matches_analyze(result.frame, run_dir)
    assert (tmp_path / "out" / "report" / "report.html").is_file()


def test_watch_says_what_it_waits_for(hf_run, tmp_path: Path, monkeypatch) -> None:
    import opdlens.follow

    lines: list[str] = []
    quick = WatchOptions(interval=0.05, idle_exit=0.01, report=False)
    result = watch(tmp_path / "not-yet", tmp_path / "out", _opts(), quick, say=lines.append)
    assert result.stopped == "idle" and result.steps == []
    assert lines == [f"note: waiting for {tmp_path / 'not-yet'}: no such directory yet."]
    # A checkpoint whose shard stays short: said once, with the reason, after the patience.
    monkeypatch.setattr(opdlens.follow, "PENDING_NOTE_S", 0.0)
    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run_dir)
    shard = run_dir / "checkpoint-4" / "model.safetensors"
    shard.write_bytes(shard.read_bytes()[:-100])
    lines.clear()
    result = watch(run_dir, tmp_path / "out2", _opts(), quick, say=lines.append)
    assert result.steps == [1, 2]
    said = [ln for ln in lines if "step 4 is still incomplete" in ln]
    assert len(said) == 1 and "model.safetensors" in said[0] and "truncated" in said[0]


@pytest.mark.gpu
def test_watch_on_cuda_gives_the_numbers_of_the_cpu(hf_run, tmp_path: Path) -> None:
    run_dir = tmp_path / "run"
    shutil.copytree(hf_run("phi3"), run_dir)
    frames = []
    for device in ("cpu", "cuda"):
        opts = AnalyzeOptions(ranks=RANKS, workers=1, device=device)
        follow = WatchOptions(interval=0.05, until=4, report=False)
        result = watch(run_dir, tmp_path / device, opts, follow, say=lambda _: None)
        assert result.steps == [1, 2, 4]
        frames.append(by_slice(result.frame))
    cpu, gpu = frames
    np.testing.assert_allclose(cpu["update_norm"], gpu["update_norm"], rtol=1e-5)
    for col in ("energy_k1", "energy_k4", "align_latest_left_k4", "align_latest_right_k1"):
        np.testing.assert_allclose(cpu[col], gpu[col], atol=1e-2, equal_nan=True, err_msg=col)
