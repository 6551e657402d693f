"""Step directories of every supported trainer, the base, and explicit STEP=PATH mappings."""

from __future__ import annotations

import pytest
import torch
from checkpoints import save_model, st_state, tiny_model

import opdlens


@pytest.fixture(scope="module")
def model():
    return tiny_model("qwen3", dtype=torch.bfloat16)


@pytest.mark.parametrize(
    "pattern",
    ["checkpoint-{step}", "global_step{step}_hf", "qwen3-opd-step-{step}", "step_{step}",
     "step-{step}", "iter_{step}"],
)  # fmt: skip
def test_step_directory_names(tmp_path, model, pattern):
    for step in (0, 10, 200):
        save_model(model, tmp_path / pattern.format(step=step))
    (tmp_path / "logs").mkdir()  # unrelated directories are ignored
    run = opdlens.open_run(tmp_path)
    assert run.steps == [10, 200]
    assert run.base.path == tmp_path / pattern.format(step=0)
    assert run.checkpoint(200).path == tmp_path / pattern.format(step=200)


def test_explicit_checkpoints_and_base(tmp_path, model):
    base = save_model(model, tmp_path / "pretrained")
    a = save_model(model, tmp_path / "somewhere" / "first")
    b = save_model(model, tmp_path / "elsewhere", "bin")
    run = opdlens.open_run(None, base=base, checkpoints={5: a, 50: b})
    assert run.steps == [5, 50] and run.base.path == base and run.base.step is None
    assert run.checkpoint(50).layout == "hf-bin"
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.equal(run.checkpoint(50).tensor(name), st_state(b)[name])


def test_base_option_overrides_step_zero(tmp_path, model):
    for step in (0, 3):
        save_model(model, tmp_path / "run" / f"checkpoint-{step}")
    other = save_model(model, tmp_path / "other")
    run = opdlens.open_run(tmp_path / "run", base=other)
    assert run.base.path == other
    assert any("instead of the run's step-0" in w for w in run.warnings)


def test_final_save_beside_checkpoints_is_reported(tmp_path, model):
    for step in (0, 3):
        save_model(model, tmp_path / f"checkpoint-{step}")
    model.save_pretrained(tmp_path)  # the Trainer's final save into the output dir
    run = opdlens.open_run(tmp_path)
    assert run.steps == [3]
    assert any("model.safetensors beside its checkpoints" in w for w in run.warnings)
