"""Tests for the built-in demo: task, model layout, generated runs, accuracy() and reuse."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file

from opdlens.demo import accuracy, generate_runs
from opdlens.demo.model import ModelConfig, TinyLlama, load_model, save_checkpoint
from opdlens.demo.task import EQUALS, PLUS, AdditionTask
from opdlens.demo.train import saved_steps
from opdlens.errors import CheckpointError, OpdlensError
from opdlens.io.paths import read_marker


def _llama_names(layers: int) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{k}_proj.weight" for k in "qkvo"}
        names |= {p + f"mlp.{k}_proj.weight" for k in ("gate", "up", "down")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return names


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("demo")
    start = time.perf_counter()
    result = generate_runs(out, quick=True, progress=False)
    return result, time.perf_counter() - start


def test_task_encodes_reversed_sums() -> None:
    task = AdditionTask(n_digits=2, reverse=True)
    prompt, answer = task.encode(torch.tensor([47, 5]), torch.tensor([85, 0]))
    assert prompt.tolist() == [[4, 7, PLUS, 8, 5, EQUALS], [0, 5, PLUS, 0, 0, EQUALS]]
    assert answer.tolist() == [[2, 3, 1], [5, 0, 0]]  # 132 and 005, least significant first


def test_training_pairs_avoid_held_out_sets() -> None:
    task = AdditionTask(n_digits=2, n_val=300, n_test=400, split_seed=3)
    held = {tuple(p.tolist()) for name in ("val", "test") for p in task.split(name)[0]}
    assert len(held) == 700
    prompts, answers = task.sampler(0).batch(5000)
    assert not held & {tuple(p.tolist()) for p in prompts}
    a = prompts[:, 0] * 10 + prompts[:, 1]
    b = prompts[:, 3] * 10 + prompts[:, 4]
    sums = answers[:, 0] + 10 * answers[:, 1] + 100 * answers[:, 2]
    assert torch.equal(sums, a + b)


def test_model_state_dict_uses_llama_names() -> None:
    cfg = ModelConfig(12, 16, 32, 3, 2, 2, 9)
    assert set(TinyLlama(cfg).state_dict()) == _llama_names(3)


def test_save_checkpoint_writes_atomically_through_the_checkpoint_writer(tmp_path: Path) -> None:
    model = TinyLlama(ModelConfig(12, 16, 32, 3, 2, 2, 9))
    out = save_checkpoint(model, tmp_path / "checkpoint-1", {"role": "test"})
    assert read_marker(out) is not None  # published by CheckpointWriter, marker written last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint-1"]  # no temp left
    loaded, demo = load_model(out)
    assert demo == {"role": "test"}
    want = model.state_dict()
    assert all(torch.equal(v, want[k]) for k, v in loaded.state_dict().items())
    with pytest.raises(CheckpointError, match="already exists"):
        save_checkpoint(model, out, {"role": "test"})


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
            assert set(state) == _llama_names(config["num_hidden_layers"])
            assert config["architectures"] == ["LlamaForCausalLM"]
            assert config["model_type"] == "llama" and config["tie_word_embeddings"] is False
            assert config["opdlens_demo"]["step"] == step
            assert state["lm_head.weight"].shape == (config["vocab_size"], config["hidden_size"])
    assert (result.teacher / "model.safetensors").is_file()


def test_accuracy_matches_metrics_and_teacher_beats_student(runs) -> None:
    result, _ = runs
    metrics = pd.read_csv(result.opd / "metrics.csv").set_index("step")
    last = int(metrics.index[-1])
    assert accuracy(result.opd / "checkpoint-0") == metrics.loc[0, "accuracy"]
    assert accuracy(str(result.opd / f"checkpoint-{last}")) == metrics.loc[last, "accuracy"]
    assert accuracy(result.teacher) > metrics.loc[0, "accuracy"] + 0.3
    rl = pd.read_csv(result.rl / "metrics.csv")
    assert rl.loc[0, "accuracy"] == metrics.loc[0, "accuracy"]  # same student start


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

    monkeypatch.setattr("opdlens.demo.runs.sft", no_training)
    monkeypatch.setattr("opdlens.demo.jobs.post_train", no_training)
    again = generate_runs(result.out_dir, quick=True, progress=False)
    assert again == result
    assert (result.opd / "metrics.csv").stat().st_mtime_ns == stamp


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


def test_generate_runs_refuses_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(OpdlensError, match="not a demo directory"):
        generate_runs(tmp_path, quick=True, progress=False)


@pytest.mark.slow
def test_full_demo_meets_its_accuracy_targets(tmp_path: Path) -> None:
    result = generate_runs(tmp_path, progress=False, workers=2)
    assert [p.name for p in result.replicates["rl"]] == ["rl", "rl-2", "rl-3"]
    finals = [pd.read_csv(p / "metrics.csv")["accuracy"].iloc[-1] for p in result.replicates["opd"]]
    assert len(set(finals)) > 1  # three seeds, three runs
    start = pd.read_csv(result.opd / "metrics.csv")["accuracy"].iloc[0]
    assert accuracy(result.teacher) >= 0.8
    assert 0.1 <= start <= 0.4
    assert pd.read_csv(result.opd / "metrics.csv")["accuracy"].iloc[-1] > start
