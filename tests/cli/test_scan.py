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
