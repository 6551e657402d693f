"""Each trainer layout, written by real models, reads back tensor for tensor."""

from __future__ import annotations

import builtins
import json

import pytest
import torch
from checkpoints import LAYOUTS, TRAINER_FILES, st_state, write_state_dir, write_verl_run

import opdlens
from opdlens.names import as_matrix

LAYOUT_NAMES = {
    "safetensors": "hf-safetensors",
    "sharded": "hf-safetensors-sharded",
    "bin": "hf-bin",
    "bin-sharded": "hf-bin-sharded",
}


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("arch", ["llama", "gpt2"])
def test_trainer_layouts_read_every_tensor(hf_run, arch, layout):
    root = hf_run(arch, layout)
    run = opdlens.open_run(root)
    assert run.steps == [1, 2, 4]
    assert run.base.path == root / "checkpoint-0"
    assert run.base.layout == LAYOUT_NAMES[layout]
    assert run.missing == {} and run.warnings == []
    for step in (0, 4):
        want = st_state(root / f"checkpoint-{step}")
        names = set(want) - {"lm_head.weight"} if arch == "gpt2" else set(want)
        assert set(run.checkpoint(step).names()) == names
        for name in names:
            got = run.checkpoint(step).tensor(name)
            assert got.dtype == torch.bfloat16
            assert torch.equal(got, want[name]), name
    # The update is the planted one, as (out, in), in float32.
    w0, w4 = st_state(root / "checkpoint-0"), st_state(root / "checkpoint-4")
    for name in run.tensor_names:
        want = as_matrix(w4[name].float() - w0[name].float(), run.module(name))
        torch.testing.assert_close(run.delta(name, 4), want, rtol=0, atol=0)


def test_sharded_checkpoint_reads_from_several_files(hf_run):
    root = hf_run("llama", "sharded")
    ck = opdlens.open_run(root).checkpoint(2)
    index = json.loads((root / "checkpoint-2" / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 1
    assert sorted(f.name for f in ck.files) == shards


def test_trainer_files_are_never_loaded(hf_run, monkeypatch):
    root = hf_run("llama", "bin")
    for f in TRAINER_FILES:  # garbage: any attempt to unpickle them would fail
        assert (root / "checkpoint-1" / f).read_bytes().startswith(b"\x80\x04NOT A PICKLE")
    opened: list[str] = []
    real_open, real_load = builtins.open, torch.load

    def spy_open(file, *a, **k):
        opened.append(str(file))
        return real_open(file, *a, **k)

    def spy_load(f, *a, **k):
        opened.append(str(f))
        return real_load(f, *a, **k)

    monkeypatch.setattr(builtins, "open", spy_open)
    monkeypatch.setattr(torch, "load", spy_load)
    run = opdlens.open_run(root)
    for name in run.tensor_names:
        run.delta(name, 4)
    touched = {p.rsplit("/", 1)[-1] for p in opened if str(root) in p}
    assert touched and touched <= {"pytorch_model.bin", "config.json"}


def test_verl_huggingface_weights(tmp_path):
    root = write_verl_run(tmp_path, "qwen2", steps=(0, 2, 4), weights="hf")
    run = opdlens.open_run(root)
    assert run.steps == [2, 4] and run.base.layout == "verl-hf-safetensors"
    want = st_state(root / "global_step_4" / "actor" / "huggingface")
    for name in run.tensor_names:
        assert torch.equal(run.checkpoint(4).tensor(name), want[name])
    assert run.warnings == []


def test_verl_config_only_huggingface_dir_uses_plain_rank_files(tmp_path):
    # verl's huggingface/ holds config + tokenizer only: the rank files are the weights.
    root = write_verl_run(tmp_path, "llama", steps=(0, 3), weights="plain", vocab_size=101)
    hf = root / "global_step_3" / "actor" / "huggingface"
    assert not list(hf.glob("*.safetensors"))
    run = opdlens.open_run(root)
    assert run.base.layout == "verl-fsdp" and run.steps == [3]
    assert run.config["model_type"] == "llama"
    actor = root / "global_step_3" / "actor"
    ranks = [torch.load(actor / f"model_world_size_2_rank_{r}.pt") for r in range(2)]
    assert ranks[0]["model.embed_tokens.weight"].shape[0] == 51  # uneven split
    for name in run.tensor_names:
        want = (
            torch.cat([ranks[0][name], ranks[1][name]]) if ranks[0][name].dim() else ranks[0][name]
        )
        assert torch.equal(run.checkpoint(3).tensor(name), want), name
    assert run.checkpoint(3).spec("model.embed_tokens.weight").shape == (101, 32)


def test_latest_checkpointed_iteration_names_missing_step(tmp_path):
    root = write_verl_run(tmp_path, "llama", steps=(0, 2), weights="hf")
    (root / "latest_checkpointed_iteration.txt").write_text("6\n")
    run = opdlens.open_run(root)
    assert any("latest_checkpointed_iteration.txt" in w and "6" in w for w in run.warnings)


def _stacked_moe_state(step: int) -> dict[str, torch.Tensor]:
    from checkpoints import planted_update, tiny_model

    model = tiny_model("mixtral", seed=3)
    return {k: planted_update(k, v, step) for k, v in model.state_dict().items()}


def test_moe_stacked_experts_from_in_memory_state_dict(tmp_path):
    # transformers 5 keeps experts stacked in memory (mlp.experts.gate_up_proj, no .weight
    # suffix); a trainer that saves model.state_dict() directly writes them that way.
    from checkpoints import tiny_config

    cfg = tiny_config("mixtral").to_dict()
    states = {s: _stacked_moe_state(s) for s in (0, 5)}
    for s, st in states.items():
        write_state_dir(tmp_path / f"step_{s}", st, config=cfg)
    run = opdlens.open_run(tmp_path)
    name = "model.layers.1.mlp.experts.gate_up_proj"
    info = run.module(name)
    assert (info.layer, info.block, info.kind, info.stacked_experts) == (1, "mlp", "experts", True)
    assert info.proj == "gate_up" and info.fused == ("gate", "up")
    assert run.checkpoint(5).spec(name).shape == (4, 128, 32)  # (experts, 2·inter, hidden)
    torch.testing.assert_close(run.delta(name, 5), states[5][name] - states[0][name])
    down = run.module("model.layers.0.mlp.experts.down_proj")
    assert (down.proj, down.stacked_experts) == ("down_proj", True)


def test_verl_plain_tensor_every_rank_holds_whole_is_not_doubled(tmp_path):
    # FSDP leaves some tensors unsharded (buffers): every rank file then holds the same tensor.
    root = write_verl_run(tmp_path, "llama", steps=(0, 3), weights="plain", vocab_size=101)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, 8, 2).float() / 8))
    for step in (0, 3):
        for r in range(2):
            f = root / f"global_step_{step}" / "actor" / f"model_world_size_2_rank_{r}.pt"
            state = torch.load(f)
            state["model.rotary_emb.inv_freq"] = inv_freq * (step + 1)
            torch.save(state, f)
    run = opdlens.open_run(root)
    name = "model.rotary_emb.inv_freq"
    assert run.checkpoint(3).spec(name).shape == (4,)
    assert torch.equal(run.checkpoint(3).tensor(name), inv_freq * 4)
    # Row blocks that differ are still joined.
    assert run.checkpoint(3).spec("model.embed_tokens.weight").shape == (101, 32)


@pytest.mark.parametrize(
    ("text", "found"),
    [("[1, 2]", "found a JSON array"), ("7", "found a JSON number"), ("null", "found a JSON null"),
     ('{"model_type": "llama",', "not valid JSON"), ("[" * 100_000, "not valid JSON"),
     (b"\xff\xfe{}", "not valid JSON")],
    ids=["array", "number", "null", "cut-short", "deep", "not-utf8"],
)  # fmt: skip
def test_config_that_is_not_an_object_is_refused_in_one_line(hf_run, tmp_path, text, found):
    import shutil

    from typer.testing import CliRunner

    from opdlens.cli import app

    run = tmp_path / "run"
    shutil.copytree(hf_run("llama"), run)
    config = run / "checkpoint-2" / "config.json"
    config.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(opdlens.CheckpointError, match=rf"config\.json: .*{found}.*restore it"):
        opdlens.open_run(run)
    result = CliRunner().invoke(app, ["scan", str(run)])
    assert result.exit_code == 2 and "Traceback" not in result.output
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and str(config) in lines[0] and found in lines[0], result.stderr
