"""PEFT LoRA adapters: the update is scale·B@A, factored, and equals peft's own merge."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch
from checkpoints import write_peft_run
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import opdlens
from opdlens.cli import app


def _merged_delta(base_dir, adapter_dir) -> dict[str, torch.Tensor]:
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    w0 = {k: v.clone() for k, v in base.state_dict().items()}
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload().state_dict()
    return {k: merged[k] - w0[k] for k in w0}


@pytest.fixture(scope="module")
def base_dir(hf_run):
    return hf_run("llama", "safetensors", dtype=torch.float32) / "checkpoint-0"


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"use_rslora": True},
        {"rank_pattern": {"down_proj": 2}, "alpha_pattern": {"v_proj": 32}},
    ],
    ids=["plain", "rslora", "patterns"],
)
def test_lora_factored_delta_and_merge(tmp_path, base_dir, kw):
    root = write_peft_run(tmp_path / "run", base_dir, steps=(1, 2), r=4, lora_alpha=8, **kw)
    run = opdlens.open_run(root, base=base_dir)
    assert run.checkpoint(2).layout == "peft-lora"
    raw = load_file(root / "checkpoint-2" / "adapter_model.safetensors")
    targets = [n for n in run.tensor_names if n.endswith(("q_proj.weight", "v_proj.weight",
                                                          "down_proj.weight"))]  # fmt: skip
    assert len(targets) == 6
    merged = _merged_delta(base_dir, root / "checkpoint-2")
    for name in targets:
        mod = "base_model.model." + name.removesuffix(".weight")
        a, b = raw[mod + ".lora_A.weight"], raw[mod + ".lora_B.weight"]
        r = a.shape[0]
        alpha = 32 if "v_proj" in name and "alpha_pattern" in kw else 8
        scale = alpha / r**0.5 if kw.get("use_rslora") else alpha / r
        if "rank_pattern" in kw and "down_proj" in name:
            assert r == 2
        want = scale * b.double() @ a.double()
        f = run.factored_delta(name, 2)
        assert f is not None and f[0].shape[1] == r
        torch.testing.assert_close((f[0].double() @ f[1].double()), want, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(run.delta(name, 2), merged[name], rtol=1e-4, atol=1e-5)
    # Untargeted tensors do not move; their update is exactly zero.
    assert run.factored_delta("model.layers.0.self_attn.k_proj.weight", 2) is None
    assert not run.delta("model.layers.0.self_attn.k_proj.weight", 2).any()
    # Between two adapter steps the factors stack: Δ_2 − Δ_1.
    f = run.factored_delta(targets[0], 2, ref=1)
    want = run.delta(targets[0], 2) - run.delta(targets[0], 1)
    torch.testing.assert_close(f[0] @ f[1], want, rtol=1e-4, atol=1e-5)


def test_lora_base_from_adapter_config(tmp_path, base_dir):
    root = write_peft_run(tmp_path / "run", base_dir, steps=(3,))
    run = opdlens.open_run(root)  # base_model_name_or_path points at base_dir
    assert run.base.path == base_dir
    assert any("adapter_config.json" in w for w in run.warnings)


def test_lora_conv1d_fan_in_fan_out(tmp_path, hf_run):
    base = hf_run("gpt2", "safetensors", dtype=torch.float32) / "checkpoint-0"
    root = write_peft_run(tmp_path / "run", base, steps=(1,), target_modules=["c_attn", "c_fc"],
                          fan_in_fan_out=True)  # fmt: skip
    run = opdlens.open_run(root, base=base)
    merged = _merged_delta(base, root / "checkpoint-1")
    name = "transformer.h.1.attn.c_attn.weight"
    f = run.factored_delta(name, 1)
    assert f[0].shape == (96, 4) and f[1].shape == (4, 32)  # (out, r), (r, in)
    torch.testing.assert_close(f[0] @ f[1], merged[name].t(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(run.delta(name, 1), merged[name].t(), rtol=1e-4, atol=1e-5)


def test_lora_embedding_with_saved_base_layer(tmp_path, base_dir):
    # Targeting embed_tokens makes peft also save embed_tokens.base_layer.weight.
    root = write_peft_run(tmp_path / "run", base_dir, steps=(1,), target_modules=["embed_tokens",
                                                                                  "q_proj"])  # fmt: skip
    run = opdlens.open_run(root, base=base_dir)
    merged = _merged_delta(base_dir, root / "checkpoint-1")
    name = "model.embed_tokens.weight"
    torch.testing.assert_close(run.delta(name, 1), merged[name], rtol=1e-4, atol=1e-5)
    f = run.factored_delta(name, 1)
    assert f is not None
    torch.testing.assert_close(f[0] @ f[1], merged[name], rtol=1e-4, atol=1e-5)


def test_lora_adapter_cannot_be_base(tmp_path, base_dir):
    root = write_peft_run(tmp_path / "run", base_dir, steps=(0, 1))
    with pytest.raises(opdlens.CheckpointError, match="LoRA adapter cannot be the base"):
        opdlens.open_run(root, checkpoints={0: root / "checkpoint-0", 1: root / "checkpoint-1"},
                         base=root / "checkpoint-0")  # fmt: skip


# -- adapter configs that peft would refuse, or read differently -----------------------------


@pytest.fixture(scope="module")
def adapter_run(tmp_path_factory, base_dir):
    """One adapter step (r = 4, lora_alpha = 8 on q_proj, v_proj, down_proj) to copy and edit."""
    return write_peft_run(tmp_path_factory.mktemp("adapter"), base_dir, steps=(1,))


def _edited(adapter_run, tmp_path, edit) -> Path:
    root = Path(shutil.copytree(adapter_run, tmp_path / "run"))
    cfg_path = root / "checkpoint-1" / "adapter_config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg = edit(cfg)
    cfg_path.write_text(cfg if isinstance(cfg, str) else json.dumps(cfg))
    return root


BAD_CONFIGS = {
    "not-an-object": (lambda c: [c], r"expected a JSON object .*found a list"),
    "deep-json": (lambda c: "[" * 100_000 + "]" * 100_000, r"not valid JSON \(RecursionError\)"),
    "rank-pattern-regex": (lambda c: {**c, "rank_pattern": {"down_proj(": 2}},
                           r"rank_pattern key 'down_proj\(' is not a valid regular expression"),
    "alpha-pattern-regex": (lambda c: {**c, "alpha_pattern": {"[v_proj": 32}},
                            r"alpha_pattern key '\[v_proj' is not a valid regular expression"),
    "alpha-pattern-value": (lambda c: {**c, "alpha_pattern": {"v_proj": "32"}},
                            r"'alpha_pattern' must be an object of regular expressions to numbers"),
    "r-zero": (lambda c: {**c, "r": 0}, r"'r' must be a positive integer; found 0"),
    "r-negative": (lambda c: {**c, "r": -4}, r"'r' must be a positive integer; found -4"),
    "r-float": (lambda c: {**c, "r": 4.5}, r"'r' must be a positive integer; found 4\.5"),
    "alpha-null": (lambda c: {**c, "lora_alpha": None}, r"'lora_alpha' must be a number; found "
                   r"null"),
    "alpha-string": (lambda c: {**c, "lora_alpha": "8"}, r"'lora_alpha' must be a number; found "
                     r"\"8\""),
    "rslora-string": (lambda c: {**c, "use_rslora": "yes"}, r"'use_rslora' must be true or false"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_adapter_config(adapter_run, base_dir, tmp_path, case):
    edit, pattern = BAD_CONFIGS[case]
    root = _edited(adapter_run, tmp_path, edit)
    cfg = root / "checkpoint-1" / "adapter_config.json"
    with pytest.raises(opdlens.CheckpointError, match=re.escape(str(cfg)) + ": " + pattern):
        run = opdlens.open_run(root, base=base_dir)
        run.delta("model.layers.0.self_attn.v_proj.weight", 1)  # where the scale is computed
    result = CliRunner().invoke(app, ["scan", str(root), "--base", str(base_dir)])
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(cfg) in lines[0], result.stderr


def test_zero_rank_factors(adapter_run, base_dir, tmp_path):
    root = Path(shutil.copytree(adapter_run, tmp_path / "run"))
    f = root / "checkpoint-1" / "adapter_model.safetensors"
    raw = load_file(f)
    mod = "base_model.model.model.layers.0.self_attn.q_proj"
    raw[mod + ".lora_A.weight"] = raw[mod + ".lora_A.weight"][:0].contiguous()  # (0, in)
    raw[mod + ".lora_B.weight"] = raw[mod + ".lora_B.weight"][:, :0].contiguous()  # (out, 0)
    save_file(raw, f)
    with pytest.raises(opdlens.CheckpointError, match=r"adapter_model\.safetensors: LoRA factors "
                       r"of 'model\.layers\.0\.self_attn\.q_proj\.weight' are A \[0, 32\] and "
                       r"B \[32, 0\]; expected A \(r, in\) and B \(out, r\) with the same "
                       r"r ≥ 1"):  # fmt: skip
        run = opdlens.open_run(root, base=base_dir)
        run.delta("model.layers.0.self_attn.q_proj.weight", 1)


@pytest.mark.parametrize(
    "edit",
    [
        lambda c: {k: v for k, v in c.items() if k != "lora_alpha"},  # peft's default: 8
        lambda c: {**c, "alpha_pattern": {"q_proj|v_proj": 32}},  # peft groups the alternation
    ],
    ids=["alpha-missing", "alpha-alternation"],
)
def test_scale_read_as_peft_reads_it(adapter_run, base_dir, tmp_path, edit):
    root = _edited(adapter_run, tmp_path, lambda c: {**edit(c), "r": 4})
    assert json.loads((root / "checkpoint-1" / "adapter_config.json").read_text())["r"] == 4
    merged = _merged_delta(base_dir, root / "checkpoint-1")
    run = opdlens.open_run(root, base=base_dir)
    for name in ("model.layers.0.self_attn.q_proj.weight", "model.layers.1.self_attn.v_proj.weight",
                 "model.layers.1.mlp.down_proj.weight"):  # fmt: skip
        torch.testing.assert_close(run.delta(name, 1), merged[name], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    ("patterns", "needle"),
    [
        ({"([a-z_.0-9]+)+X": 32}, "backtracks catastrophically"),  # 2^31 paths per module name
        ({"v_proj" * 200: 32}, "is 1200 characters long"),
        ({f"layer{i}": 1 for i in range(10_001)}, "has 10001 keys"),
    ],
    ids=["backtracking", "long-key", "many-keys"],
)
def test_hostile_alpha_patterns_are_refused_in_bounded_time(
    adapter_run, base_dir, tmp_path, monkeypatch, patterns, needle
):
    import time

    from opdlens.io import lora

    monkeypatch.setattr(lora, "_PATTERN_SECONDS", 2)
    root = _edited(adapter_run, tmp_path, lambda c: {**c, "alpha_pattern": patterns})
    cfg = root / "checkpoint-1" / "adapter_config.json"
    start = time.monotonic()
    with pytest.raises(opdlens.CheckpointError, match=re.escape(str(cfg))) as err:
        run = opdlens.open_run(root, base=base_dir)
        run.delta("model.layers.0.self_attn.v_proj.weight", 1)
    assert needle in str(err.value) and time.monotonic() - start < 30
    result = CliRunner().invoke(app, ["analyze", str(root), "--base", str(base_dir),
                                      "--out", str(tmp_path / "out"), "-q"])  # fmt: skip
    assert result.exit_code == 2, result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and needle in lines[0], result.stderr
