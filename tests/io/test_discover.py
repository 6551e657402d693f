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


def _scan(*args: object):
    from typer.testing import CliRunner

    from opdlens.cli import app

    return CliRunner().invoke(app, ["scan", *map(str, args)])


def _one_error_line(result) -> str:
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


def test_steps_are_ascii_digits_only(tmp_path, model):
    for name in ("checkpoint-0", "checkpoint-1", "checkpoint-\u0663", "checkpoint-\uff15"):
        save_model(model, tmp_path / name)  # Arabic-Indic three, fullwidth five
    run = opdlens.open_run(tmp_path)
    assert run.steps == [1]
    ignored = [w for w in run.warnings if "not written in ASCII digits" in w]
    assert len(ignored) == 2 and any("checkpoint-\u0663" in w for w in ignored)
    result = _scan(tmp_path)
    assert result.exit_code == 0, result.output
    assert "checkpoint-\u0663: ignored" in result.stderr


def test_step_name_with_a_trailing_newline_is_not_a_step(tmp_path, model):
    for name in ("checkpoint-0", "checkpoint-3", "checkpoint-3\n"):
        save_model(model, tmp_path / name)
    assert opdlens.open_run(tmp_path).steps == [3]  # not "step 3 appears twice"


@pytest.mark.parametrize("digits", [str(2**63), "9" * 200], ids=["2**63", "200-digits"])
def test_step_beyond_int64_is_refused_naming_the_directory(tmp_path, model, digits):
    for name in ("checkpoint-0", "checkpoint-1", f"checkpoint-{digits}"):
        save_model(model, tmp_path / name)
    with pytest.raises(opdlens.CheckpointError, match=r"is larger than 9223372036854775807"):
        opdlens.open_run(tmp_path)
    line = _one_error_line(_scan(tmp_path))
    assert f"checkpoint-{digits[:12]}" in line and "larger than 9223372036854775807" in line


def test_largest_int64_step_is_accepted(tmp_path, model):
    for step in (0, 2**63 - 1):
        save_model(model, tmp_path / f"checkpoint-{step}")
    assert opdlens.open_run(tmp_path).steps == [2**63 - 1]


@pytest.mark.parametrize(
    ("option", "words"),
    [("\u0663={ck}", "in digits 0-9"), (f"{2**63}={{ck}}", "larger than 9223372036854775807"),
     ("1={ck}", "gives step 1 twice")],
)  # fmt: skip
def test_checkpoint_option_steps(tmp_path, model, option, words):
    ck = save_model(model, tmp_path / "ck")
    extra = ["--checkpoint", f"1={ck}"] if "twice" in words else []
    line = _one_error_line(
        _scan(tmp_path, "--base", ck, *extra, "--checkpoint", option.format(ck=ck))
    )
    assert words in line, line
