"""demo.train: accuracy() of demo checkpoints, sharded too, and what it refuses."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from opdlens.demo import accuracy
from opdlens.errors import CheckpointError


def test_accuracy_matches_metrics_and_teacher_beats_student(runs) -> None:
    result, _ = runs
    metrics = pd.read_csv(result.opd / "metrics.csv").set_index("step")
    last = int(metrics.index[-1])
    assert accuracy(result.opd / "checkpoint-0") == metrics.loc[0, "accuracy"]
    assert accuracy(str(result.opd / f"checkpoint-{last}")) == metrics.loc[last, "accuracy"]
    assert accuracy(result.teacher) > metrics.loc[0, "accuracy"] + 0.3
    rl = pd.read_csv(result.rl / "metrics.csv")
    assert rl.loc[0, "accuracy"] == metrics.loc[0, "accuracy"]  # same student start


def test_accuracy_reads_sharded_checkpoints(runs, tmp_path: Path) -> None:
    result, _ = runs
    source = result.opd / "checkpoint-8"
    state = load_file(str(source / "model.safetensors"))
    names = sorted(state)
    shards = {
        "model-00001-of-00002.safetensors": names[:5],
        "model-00002-of-00002.safetensors": names[5:],
    }
    for shard, keys in shards.items():
        save_file({k: state[k].to(torch.bfloat16) for k in keys}, str(tmp_path / shard))
    index = {"weight_map": {k: s for s, keys in shards.items() for k in keys}}
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(index))
    (tmp_path / "config.json").write_text((source / "config.json").read_text())
    acc = accuracy(tmp_path)
    assert acc == accuracy(tmp_path)  # deterministic
    assert abs(acc - accuracy(source)) < 0.1  # bf16 rounding moves a few answers at most


def test_accuracy_rejects_non_demo_directories(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no config.json"):
        accuracy(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    with pytest.raises(CheckpointError, match="no 'opdlens_demo' section"):
        accuracy(tmp_path)
