"""Inputs that are symlinks into the output or out of the checkpoint: never overwritten, never
silently copied."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from safetensors.torch import load_file
from typer.testing import CliRunner

from opdlens.cli import app

from .conftest import CONFIG, write_run


def _cli(*argv: object) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, [str(a) for a in argv])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize("sharded", [False, True], ids=["single", "sharded"])
def test_overwrite_refuses_an_output_that_holds_an_input_file(tmp_path: Path, sharded) -> None:
    run1 = write_run(tmp_path / "run1", steps=(0, 4), sharded=sharded)
    pred = tmp_path / "pred"
    rc, _, err = _cli(
        "extrapolate", run1, "--step", "4", "--from-base", "--alpha", "1", "--out", pred, "-q"
    )
    assert rc == 0, err
    runl = write_run(tmp_path / "runL", steps=(0, 8, 16), sharded=sharded)
    victim = sorted(pred.glob("*.safetensors"))[0]
    target = runl / "checkpoint-16" / victim.name
    target.unlink()
    target.symlink_to(Path("../../pred") / victim.name)  # step 16 reads the output's file
    before = {f.name: f.read_bytes() for f in pred.iterdir() if f.is_file()}
    weights = load_file(target)
    rc, _, err = _cli("extrapolate", runl, "--step", "16", "--anchor", "8", "--alpha", "1",
                      "--out", pred, "--overwrite", "-q")  # fmt: skip
    assert rc == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(pred) in lines[0], err
    # A shard named by an index is refused sooner, as a link out of its checkpoint.
    assert ("outside the checkpoint" if sharded else "overlaps the input") in lines[0]
    assert {f.name: f.read_bytes() for f in pred.iterdir() if f.is_file()} == before
    assert all(v.equal(load_file(target)[k]) for k, v in weights.items())


def test_an_input_support_file_in_the_output_is_refused_too(tmp_path: Path) -> None:
    run1 = write_run(tmp_path / "run1", steps=(0, 4))
    pred = tmp_path / "pred"
    assert (
        _cli(
            "extrapolate", run1, "--step", "4", "--from-base", "--alpha", "1", "--out", pred, "-q"
        )[0]
        == 0
    )
    runl = write_run(tmp_path / "runL", steps=(0, 8, 16))
    cfg = runl / "checkpoint-16" / "config.json"
    cfg.unlink()
    cfg.symlink_to(pred / "config.json")
    rc, _, err = _cli("extrapolate", runl, "--step", "16", "--anchor", "8", "--alpha", "1",
                      "--out", pred, "--overwrite", "-q")  # fmt: skip
    assert rc == 2 and "overlaps the input" in err, err


def test_support_files_linked_from_outside_are_flagged_and_code_is_never_copied_unasked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    run = write_run(tmp_path / "run", steps=(0, 4))
    ck = run / "checkpoint-4"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "tokenizer.json").write_text('{"secret": "from outside"}')
    (elsewhere / "modeling_evil.py").write_text("import os; os.system('touch PWNED')\n")
    (ck / "tokenizer.json").symlink_to(elsewhere / "tokenizer.json")
    (ck / "modeling_evil.py").symlink_to(elsewhere / "modeling_evil.py")
    (ck / "modeling_unasked.py").write_text("# a file config.json's auto_map does not name\n")
    (ck / "modeling_mine.py").write_text("class Mine: ...\n")
    config = {**CONFIG, "auto_map": {"AutoModelForCausalLM": "modeling_mine.Mine",
                                     "AutoModel": "modeling_evil.Evil"}}  # fmt: skip
    (ck / "config.json").write_text(json.dumps(config))
    out = tmp_path / "pred"
    rc, _, err = _cli(
        "extrapolate", run, "--step", "4", "--from-base", "--alpha", "1", "--out", out, "-q"
    )
    assert rc == 0, err
    copied = {p.name for p in out.iterdir()}
    assert "modeling_mine.py" in copied  # named by auto_map, inside the checkpoint
    assert "modeling_unasked.py" not in copied  # code nobody asked for
    assert "modeling_evil.py" not in copied  # code from outside the checkpoint: never
    assert (out / "tokenizer.json").read_text() == '{"secret": "from outside"}'
    logged = " ".join(r.getMessage() for r in caplog.records if r.levelname == "WARNING")
    assert "tokenizer.json: a symlink to" in logged and "outside the checkpoint" in logged
    assert "modeling_evil.py: a symlink to" in logged and "was not copied" in logged
    prov = json.loads((out / "opdlens_provenance.json").read_text())
    flagged = " ".join(prov["warnings"])
    assert "tokenizer.json" in flagged and "modeling_evil.py" in flagged
    shutil.rmtree(out)
