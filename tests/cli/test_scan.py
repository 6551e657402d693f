"""`opdlens scan`: the table and the JSON schema, checked against independent sums."""

from __future__ import annotations

import json

import torch
from checkpoints import st_state
from typer.testing import CliRunner

from opdlens.cli import app


def test_scan_json_schema(hf_run):
    root = hf_run("gpt2", "sharded")
    result = CliRunner().invoke(app, ["scan", str(root), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    assert out["base"]["path"] == str(root / "checkpoint-0")
    assert [c["step"] for c in out["checkpoints"]] == [1, 2, 4]
    assert isinstance(out["warnings"], list)
    for c in out["checkpoints"]:
        d = root / f"checkpoint-{c['step']}"
        state = st_state(d)
        state.pop("lm_head.weight", None)
        assert c["path"] == str(d) and c["layout"] == "hf-safetensors-sharded"
        assert c["num_tensors"] == len(state)
        assert c["num_params"] == sum(t.numel() for t in state.values())
        assert c["bytes"] == sum(f.stat().st_size for f in d.glob("*.safetensors"))
        assert c["dtype"] == str(torch.bfloat16).removeprefix("torch.")


def test_scan_table(hf_run):
    root = hf_run("llama", "bin")
    result = CliRunner().invoke(app, ["scan", str(root)])
    assert result.exit_code == 0, result.output
    for word in ("step", "layout", "hf-bin", "checkpoint-4", "bfloat16", "base:"):
        assert word in result.stdout


def test_scan_lists_a_run_without_base_then_says_what_is_missing(hf_run):
    root = hf_run("llama", "safetensors", steps=(1, 2, 4))
    result = CliRunner().invoke(app, ["scan", str(root)])
    assert result.exit_code == 2
    for step in (1, 2, 4):
        assert str(root / f"checkpoint-{step}") in result.stdout
    assert "base: none (no step-0 checkpoint)" in result.stdout
    assert result.stderr.splitlines() == [
        f"opdlens: error: {root}: missing: base (step 0) — pass --base PATH pointing at the "
        "model the run started from."
    ]
    out = json.loads(CliRunner().invoke(app, ["scan", str(root), "--json"]).stdout)
    assert out["base"] is None and [c["step"] for c in out["checkpoints"]] == [1, 2, 4]
    assert out["missing"].startswith("base (step 0)") and out["num_common_tensors"] > 0
    # Given the base, the same run scans cleanly.
    full = hf_run("llama", "safetensors")
    ok = CliRunner().invoke(app, ["scan", str(root), "--base", str(full / "checkpoint-0")])
    assert ok.exit_code == 0, ok.output
    assert f"base: {full / 'checkpoint-0'}" in ok.stdout


def test_scan_lists_a_run_with_only_a_base(hf_run):
    root = hf_run("llama", "safetensors", steps=(0,))
    result = CliRunner().invoke(app, ["scan", str(root), "--json"])
    assert result.exit_code == 2
    out = json.loads(result.stdout)
    assert out["base"]["path"] == str(root / "checkpoint-0") and out["checkpoints"] == []
    assert "missing: checkpoints after the base" in result.stderr
    assert "--checkpoint STEP=PATH" in result.stderr and len(result.stderr.splitlines()) == 1
