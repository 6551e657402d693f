"""Training curves read from the logs real trainers keep beside their checkpoints."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from checkpoints import write_hf_run
from transformers import TrainerState

import opdlens
from opdlens.io.training_log import (
    NoTrainingLogError,
    TrainingLogError,
    choose_metric,
    log_at_steps,
    read_training_log,
)


def _history(last: int, *, offset: float = 0.0) -> list[dict[str, float]]:
    """What the HF Trainer logs: loss every 2 steps, an evaluation every 4, a closing summary."""
    out: list[dict[str, float]] = []
    for step in range(2, last + 1, 2):
        out.append({"epoch": step / 10, "grad_norm": 1.0 / step, "learning_rate": 1e-4,
                    "loss": 2.0 / step + offset, "step": step})  # fmt: skip
        if step % 4 == 0:
            out.append({"epoch": step / 10, "eval_loss": 1.5 / step + offset,
                        "eval_accuracy": 0.1 * step, "eval_runtime": 0.5, "step": step})  # fmt: skip
    out.append({"epoch": last / 10, "step": last, "total_flos": 1e9, "train_loss": 0.9,
                "train_runtime": 12.5})  # fmt: skip
    return out


def _save_state(directory: Path, last: int, **kw: float) -> None:
    state = TrainerState(global_step=last, max_steps=8, logging_steps=2, eval_steps=4,
                         log_history=_history(last, **kw))  # fmt: skip
    state.save_to_json(str(directory / "trainer_state.json"))


@pytest.fixture(scope="module")
def hf_trainer_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A Trainer-layout run whose checkpoints hold the trainer_state.json the Trainer writes."""
    root = write_hf_run(tmp_path_factory.mktemp("trainer-state"), "llama", steps=(0, 4, 8))
    _save_state(root / "checkpoint-4", 4, offset=100.0)  # older: must lose
    _save_state(root / "checkpoint-8", 8)
    return root


def test_newest_trainer_state_wins(hf_trainer_run: Path) -> None:
    log = opdlens.open_run(hf_trainer_run).training_log()
    assert log.attrs["source"] == str(hf_trainer_run / "checkpoint-8" / "trainer_state.json")
    assert log.attrs["format"] == "trainer_state" and log.attrs["warnings"] == []
    assert log["step"].tolist() == [2, 4, 6, 8] and log["step"].dtype == "int64"
    # The train and eval records of one step are one row.
    assert log.loc[
        log["step"] == 4, ["loss", "eval_loss", "eval_accuracy"]
    ].to_numpy().tolist() == [[0.5, 0.375, 0.4]]
    assert np.isnan(log.loc[log["step"] == 6, "eval_accuracy"]).all()
    assert log.loc[log["step"] == 8, "train_loss"].item() == 0.9
    assert choose_metric(log) == ("eval_accuracy", "accuracy")


def test_run_directory_state_wins_when_newer(hf_trainer_run: Path, tmp_path: Path) -> None:
    state = TrainerState(global_step=9, log_history=[{"step": 9, "loss": 0.01}])
    state.save_to_json(str(tmp_path / "trainer_state.json"))
    checkpoints = {s: hf_trainer_run / f"checkpoint-{s}" for s in (4, 8)}
    log = opdlens.io.training_log.run_training_log(tmp_path, checkpoints)
    assert log.attrs["source"] == str(tmp_path / "trainer_state.json")
    assert log.to_dict("records") == [{"step": 9, "loss": 0.01}]


def test_verl_jsonl_beside_checkpoints(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "data": {"actor/pg_loss": 0.1 * s, "critic/score/mean": s,
                                             "val-core/gsm8k/reward/mean@1": 0.2 + 0.01 * s}})
             for s in (1, 2, 3)]  # fmt: skip
    lines.append(json.dumps({"step": 4, "data": {"actor/pg_loss": "n/a"}}))
    path.write_text("\n".join(lines) + '\n{"step": 5, "data": {"actor/pg_lo')  # still being written
    log = read_training_log(path)
    assert log["step"].tolist() == [1, 2, 3]
    assert log["critic/score/mean"].tolist() == [1.0, 2.0, 3.0]
    warnings = " ".join(log.attrs["warnings"])
    assert "last line is cut short" in warnings
    assert "1 value(s) that are not finite numbers left out" in warnings and "'n/a'" in warnings
    assert choose_metric(log) == ("val-core/gsm8k/reward/mean@1", "accuracy")


def test_demo_metrics_csv_found_in_the_run_directory(tmp_path: Path) -> None:
    root = write_hf_run(tmp_path / "run", "llama", steps=(0, 1, 2), trainer_files=False)
    (root / "metrics.csv").write_text(
        "step,accuracy,loss,reward,reverse_kl\n0,0.1,1.5,0.0,1.5\n1,0.2,1.2,0.1,1.2\n2,0.4,0.9,0.3,0.9\n"
    )
    log = opdlens.open_run(root).training_log()
    assert log.attrs["source"] == str(root / "metrics.csv") and log.attrs["format"] == "csv"
    assert log["accuracy"].tolist() == [0.1, 0.2, 0.4]
    assert choose_metric(log) == ("accuracy", "accuracy")
    joined = log_at_steps(log, [2, 0, 1, 5])
    assert joined["step"].tolist() == [0, 1, 2, 5] and joined["accuracy"].tolist() == [
        0.1, 0.2, 0.4, 0.4
    ]  # fmt: skip


def test_metric_choice_falls_back_to_losses() -> None:
    assert choose_metric(pd.DataFrame(columns=["step", "loss", "eval_loss"])) == (
        "eval_loss", "eval loss"
    )  # fmt: skip
    hf = pd.DataFrame({"step": [1, 2, 3], "loss": [3.0, 2.0, 1.0], "train_loss": [None, None, 2.0]})
    assert choose_metric(hf[["train_loss", "loss", "step"]]) == ("loss", "train loss")
    assert choose_metric(pd.DataFrame(columns=["step", "learning_rate"])) is None


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("trainer_state.json", '{"log_history": [{"step": 1, "loss": 0.5}', r"trainer_state\.json: not JSON"),
        ("trainer_state.json", '{"log_history": {"step": 1}}', "'log_history' must be a list"),
        ("trainer_state.json", "[" * 100_000, r"not JSON|nested too deeply"),
        ("log.jsonl", '{"step": 1, "loss": 1}\nnot json\n{"step": 3, "loss": 1}\n', r"log\.jsonl: line 2 is not a JSON"),
        ("log.jsonl", '[1, 2]\n', r"line 1 is a JSON list"),
        ("log.csv", "epoch,loss\n1,0.5\n", r"log\.csv: the CSV header must name a step column"),
        ("log.csv", "step,loss\nten,0.5\n", r"no record with a whole-number step"),
        ("log.csv", "step,note\n1,fine\n", r"no numeric metric"),
        ("log.txt", "step loss\n", r"unknown metric log format '\.txt'"),
        ("log.csv", b"step,loss\n1,\xff\n", r"log\.csv: not UTF-8"),
    ],
)  # fmt: skip
def test_hostile_logs_one_line(tmp_path: Path, name: str, text: str | bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TrainingLogError, match=message) as info:
        read_training_log(path)
    assert "\n" not in str(info.value) and str(path) in str(info.value)


def test_rows_without_step_are_left_out_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    path.write_text("step,loss\n1,0.5\n-3,0.4\n2.5,0.3\n,0.2\n2,0.1\n3\n")
    log = read_training_log(path)
    assert log.to_dict("records") == [{"step": 1, "loss": 0.5}, {"step": 2, "loss": 0.1}]
    warnings = " ".join(log.attrs["warnings"])
    assert "1 row(s) with a different number of cells" in warnings
    assert "3 record(s) without a whole-number step" in warnings


def test_no_log_or_several_candidates(tmp_path: Path) -> None:
    root = write_hf_run(tmp_path / "run", "llama", steps=(0, 1), trainer_files=False)
    run = opdlens.open_run(root)
    with pytest.raises(NoTrainingLogError, match=r"no training log .* --metrics FILE"):
        run.training_log()
    (root / "a.jsonl").write_text('{"step": 1, "loss": 1}\n')
    (root / "b.csv").write_text("step,loss\n1,2\n")
    with pytest.raises(NoTrainingLogError, match=r"several metric logs \(a\.jsonl, b\.csv\)"):
        run.training_log()
    log = run.training_log(root / "b.csv")  # named explicitly: no ambiguity
    assert log.to_dict("records") == [{"step": 1, "loss": 2.0}]
