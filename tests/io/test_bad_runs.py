"""Bad input: one clear error naming the file and the problem, in Python and on the command line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import (
    copy_run,
    same_weights_run,
    save_model,
    tiny_model,
    write_bin,
    write_state_dir,
)
from cli_errors import scan_fails
from typer.testing import CliRunner

import opdlens
from opdlens.cli import app


class TaggedTensor(torch.Tensor):
    """A custom tensor class inside a pickle: weights_only=True refuses it, trust loads it."""


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """A small valid run to copy and break."""
    return same_weights_run(tmp_path_factory.mktemp("good"), steps=(0, 10, 20))


def _truncate(run: Path) -> Path:
    f = run / "checkpoint-10" / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-100])
    return f


def _corrupt_header(run: Path) -> Path:
    f = run / "checkpoint-10" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[8:12] = b"}{!x"
    f.write_bytes(bytes(data))
    return f


def _huge_header(run: Path) -> Path:
    f = run / "checkpoint-20" / "model.safetensors"
    data = bytearray(f.read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")
    f.write_bytes(bytes(data))
    return f


def _no_model_files(run: Path) -> Path:
    d = run / "checkpoint-10"
    (d / "model.safetensors").unlink()
    return d


def _shape_differs(run: Path) -> Path:
    d = run / "checkpoint-20"
    model = tiny_model("llama", intermediate_size=48)
    shutil.rmtree(d)
    save_model(model, d)
    return d


def _duplicate_step(run: Path) -> Path:
    shutil.copytree(run / "checkpoint-10", run / "step_10")
    return run


CASES = {
    "truncated": (_truncate, ["truncated"], "model.safetensors"),
    "corrupt-header": (_corrupt_header, ["corrupt safetensors header"], "model.safetensors"),
    "header-length": (_huge_header, ["corrupt safetensors header"], "model.safetensors"),
    "no-model-files": (_no_model_files, ["no model weights found"], "checkpoint-10"),
    "shape-differs": (_shape_differs, ["has shape", "but", "in the base"], "checkpoint-20"),
    "duplicate-step": (_duplicate_step, ["step 10 appears twice", "step_10"], "checkpoint-10"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_checkpoint(good, tmp_path, case):
    breaker, words, filename = CASES[case]
    run = copy_run(good, tmp_path)
    breaker(run)
    with pytest.raises(opdlens.CheckpointError) as e:
        opdlens.open_run(run)
    for w in [filename, *words]:
        assert w in str(e.value)
    scan_fails([run], filename, *words)


def test_empty_directory(tmp_path):
    with pytest.raises(opdlens.CheckpointError, match=r"no checkpoints found \(it is empty\)"):
        opdlens.open_run(tmp_path)
    scan_fails([tmp_path], str(tmp_path), "it is empty")


def test_directory_with_no_checkpoints(tmp_path):
    (tmp_path / "notes.txt").write_text("hi")
    with pytest.raises(opdlens.CheckpointError, match=r"no checkpoints found.*notes\.txt"):
        opdlens.open_run(tmp_path)
    scan_fails([tmp_path], "notes.txt", "--checkpoint STEP=PATH")


def test_path_does_not_exist(good, tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(opdlens.CheckpointError, match=r"nope: no such directory"):
        opdlens.open_run(missing)
    scan_fails([missing], "nope", "no such directory")
    with pytest.raises(opdlens.CheckpointError, match=r"nope: no such file or directory"):
        opdlens.open_run(good, base=missing)
    scan_fails([good, "--base", missing], "nope", "no such file or directory")
    scan_fails([good, "--checkpoint", f"30={missing}"], "nope", "no such file or directory")


def test_no_base_says_how_to_give_one(good, tmp_path):
    run = copy_run(good, tmp_path)
    shutil.rmtree(run / "checkpoint-0")
    with pytest.raises(opdlens.CheckpointError, match=r"no base.*Pass --base PATH"):
        opdlens.open_run(run)
    scan_fails([run], "missing: base (step 0)", "--base PATH")
    assert opdlens.open_run(run, base=good / "checkpoint-0").steps == [10, 20]


def test_index_naming_missing_shard(tmp_path):
    model = tiny_model("llama")
    for step in (0, 5, 9):
        save_model(model, tmp_path / f"checkpoint-{step}", "sharded")
    shard = sorted((tmp_path / "checkpoint-9").glob("model-*.safetensors"))[-1]
    shard.unlink()  # still being written
    with pytest.raises(opdlens.IncompleteCheckpointError, match=rf"checkpoint-9.*{shard.name}"):
        opdlens.open_run(tmp_path)
    run = opdlens.open_run(tmp_path, skip_incomplete=True)
    assert run.steps == [5]
    assert any("skipped step 9" in w and shard.name in w for w in run.warnings)
    result = CliRunner().invoke(app, ["scan", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert [c["step"] for c in out["checkpoints"]] == [5]
    assert any(shard.name in w for w in out["warnings"])


def test_pickle_needs_trust(tmp_path):
    model = tiny_model("llama")
    for step in (0, 1):
        save_model(model, tmp_path / f"checkpoint-{step}", "bin")
    state = dict(model.state_dict())
    name = "model.layers.1.mlp.up_proj.weight"
    state[name] = state[name].as_subclass(TaggedTensor)  # a custom trainer's
    write_bin(tmp_path / "checkpoint-1", state)
    f = tmp_path / "checkpoint-1" / "pytorch_model.bin"
    # The message names what was refused (torch's own words vary by version), then the way out.
    refused = r"pytorch_model\.bin: .*refused it: [^.]*GLOBAL test_bad_runs\.TaggedTensor [^.]*\)\. .*--trust-pickle"
    with pytest.raises(opdlens.UnsafePickleError, match=refused):
        opdlens.open_run(tmp_path)
    scan_fails([tmp_path], str(f), "--trust-pickle")
    run = opdlens.open_run(tmp_path, trust_pickle=True)
    assert torch.equal(run.checkpoint(1).tensor(name), state[name])
    result = CliRunner().invoke(app, ["scan", str(tmp_path), "--trust-pickle"])
    assert result.exit_code == 0, result.output


def test_nan_weights_are_readable(tmp_path):
    w = torch.randn(8, 4)
    write_state_dir(tmp_path / "step_0", {"model.layers.0.mlp.up_proj.weight": w})
    bad = w.clone()
    bad[2, 3] = float("nan")
    write_state_dir(tmp_path / "step_1", {"model.layers.0.mlp.up_proj.weight": bad})
    run = opdlens.open_run(tmp_path)
    name = "model.layers.0.mlp.up_proj.weight"
    assert torch.isnan(run.checkpoint(1).tensor(name)[2, 3])
    assert run.check_finite(name, 0) and not run.check_finite(name, 1)
