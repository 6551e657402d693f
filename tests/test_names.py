"""Module classification of every tensor of real architectures, and fused-block splitting."""

from __future__ import annotations

import re

import pytest
import torch
from checkpoints import write_state_dir

import opdlens
from opdlens.errors import FusedSplitError, OptionError
from opdlens.names import as_matrix, canonical_name, classify, split_fused

# Hand-written expectations: name suffix (after the layer index, or the whole name) → (block, kind).
EXPECTED = {
    "self_attn.q_proj.weight": ("attn", "q_proj"), "self_attn.k_proj.weight": ("attn", "k_proj"),
    "self_attn.v_proj.weight": ("attn", "v_proj"), "self_attn.o_proj.weight": ("attn", "o_proj"),
    "self_attn.q_proj.bias": ("attn", "q_proj"), "self_attn.k_proj.bias": ("attn", "k_proj"),
    "self_attn.v_proj.bias": ("attn", "v_proj"), "self_attn.qkv_proj.weight": ("attn", "qkv"),
    "self_attn.q_norm.weight": ("norm", "q_norm"), "self_attn.k_norm.weight": ("norm", "k_norm"),
    "mlp.gate_proj.weight": ("mlp", "gate_proj"), "mlp.up_proj.weight": ("mlp", "up_proj"),
    "mlp.down_proj.weight": ("mlp", "down_proj"), "mlp.gate_up_proj.weight": ("mlp", "gate_up"),
    "input_layernorm.weight": ("norm", "input_layernorm"),
    "input_layernorm.bias": ("norm", "input_layernorm"),
    "post_attention_layernorm.weight": ("norm", "post_attention_layernorm"),
    "post_attention_layernorm.bias": ("norm", "post_attention_layernorm"),
    "attn.c_attn.weight": ("attn", "qkv"), "attn.c_attn.bias": ("attn", "qkv"),
    "attn.c_proj.weight": ("attn", "o_proj"), "attn.c_proj.bias": ("attn", "o_proj"),
    "mlp.c_fc.weight": ("mlp", "up_proj"), "mlp.c_fc.bias": ("mlp", "up_proj"),
    "mlp.c_proj.weight": ("mlp", "down_proj"), "mlp.c_proj.bias": ("mlp", "down_proj"),
    "ln_1.weight": ("norm", "ln_1"), "ln_1.bias": ("norm", "ln_1"),
    "ln_2.weight": ("norm", "ln_2"), "ln_2.bias": ("norm", "ln_2"),
    "attention.query_key_value.weight": ("attn", "qkv"),
    "attention.query_key_value.bias": ("attn", "qkv"),
    "attention.dense.weight": ("attn", "o_proj"), "attention.dense.bias": ("attn", "o_proj"),
    "mlp.dense_h_to_4h.weight": ("mlp", "up_proj"), "mlp.dense_h_to_4h.bias": ("mlp", "up_proj"),
    "mlp.dense_4h_to_h.weight": ("mlp", "down_proj"), "mlp.dense_4h_to_h.bias": ("mlp", "down_proj"),
    "block_sparse_moe.gate.weight": ("mlp", "router"), "mlp.gate.weight": ("mlp", "router"),
    "mlp.shared_expert_gate.weight": ("mlp", "router"),
    "mlp.shared_expert.gate_proj.weight": ("mlp", "gate_proj"),
    "mlp.shared_expert.up_proj.weight": ("mlp", "up_proj"),
    "mlp.shared_expert.down_proj.weight": ("mlp", "down_proj"),
    # not in a layer
    "model.embed_tokens.weight": ("embed", "embed_tokens"), "lm_head.weight": ("head", "lm_head"),
    "model.norm.weight": ("norm", "norm"), "transformer.wte.weight": ("embed", "wte"),
    "transformer.wpe.weight": ("embed", "wpe"), "transformer.ln_f.weight": ("norm", "ln_f"),
    "transformer.ln_f.bias": ("norm", "ln_f"), "gpt_neox.embed_in.weight": ("embed", "embed_in"),
    "embed_out.weight": ("head", "lm_head"),
    "gpt_neox.final_layer_norm.weight": ("norm", "final_layer_norm"),
    "gpt_neox.final_layer_norm.bias": ("norm", "final_layer_norm"),
}  # fmt: skip
_EXPERT = re.compile(
    r"(?:block_sparse_moe|mlp)\.experts\.(\d+)\.(w1|w2|w3|gate_proj|up_proj|down_proj)\.weight"
)
_PROJ = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
ARCHS = ["llama", "qwen2", "qwen3", "mistral", "gemma", "phi3", "gpt2", "gpt_neox", "mixtral",
         "qwen2_moe", "qwen3_moe"]  # fmt: skip


@pytest.mark.parametrize("arch", ARCHS)
def test_every_tensor_of_every_architecture(hf_run, arch):
    run = opdlens.open_run(hf_run(arch, "safetensors", steps=(0, 1)))
    assert run.config["model_type"] == arch
    assert len(run.tensor_names) > 10
    for name in run.tensor_names:
        info = run.module(name)
        m = re.search(r"\.(?:layers|h)\.(\d+)\.(.+)$", name)
        if m is None:
            assert info.layer is None, name
            assert (info.block, info.kind) == EXPECTED[name], name
            continue
        assert info.layer == int(m.group(1)), name
        e = _EXPERT.search(name)
        if e:
            proj = _PROJ.get(e.group(2), e.group(2))
            assert (info.block, info.kind, info.expert, info.proj) == (
                "mlp",
                "experts",
                int(e.group(1)),
                proj,
            )
            assert not info.stacked_experts
            continue
        assert (info.block, info.kind) == EXPECTED[m.group(2)], name
        conv1d = arch == "gpt2" and name.endswith(
            (".c_attn.weight", ".c_proj.weight", ".c_fc.weight")
        )
        assert info.transposed == conv1d, name
        assert (info.fused is not None) == (info.kind in ("qkv", "gate_up")), name
        if info.transposed:  # Conv1D stores (in, out): as_matrix gives (out, in)
            stored = run.checkpoint(1).tensor(name)
            assert as_matrix(stored, info).shape == stored.shape[::-1]


def test_unknown_names_are_other_with_layer():
    info = classify("model.layers.7.adapter.scale")
    assert (info.layer, info.block, info.kind) == (7, "other", "scale")
    assert classify("something_else").block == "other"


@pytest.mark.parametrize(
    "raw",
    ["module.model.layers.0.mlp.up_proj.weight", "_orig_mod.model.layers.0.mlp.up_proj.weight",
     "model.language_model.layers.0.mlp.up_proj.weight",
     "module._orig_mod.model.layers.0.mlp.up_proj.weight",
     "_fsdp_wrapped_module.model.layers.0._fsdp_wrapped_module.mlp.up_proj.weight"],
)  # fmt: skip
def test_canonical_name(raw):
    assert canonical_name(raw) == "model.layers.0.mlp.up_proj.weight"


def _identity_forward(module: torch.nn.Module, n_in: int) -> torch.Tensor:
    with torch.no_grad():
        return module(torch.eye(n_in).unsqueeze(0))[0]  # (in, out) = Wᵀ (+ bias)


def test_split_fused_phi3_qkv_and_gate_up(hf_run):
    from transformers import AutoModelForCausalLM

    root = hf_run("phi3", "safetensors", steps=(0, 1), dtype=torch.float32)
    run = opdlens.open_run(root)
    model = AutoModelForCausalLM.from_pretrained(root / "checkpoint-0", dtype=torch.float32)
    attn = model.model.layers[1].self_attn
    out = _identity_forward(attn.qkv_proj, 32)  # (in, q+k+v)
    query_pos = attn.config.num_attention_heads * attn.head_dim  # the module's own slicing
    kv = attn.num_key_value_heads * attn.head_dim
    want = {"q": out[:, :query_pos], "k": out[:, query_pos : query_pos + kv],
            "v": out[:, query_pos + kv :]}  # fmt: skip
    name = "model.layers.1.self_attn.qkv_proj.weight"
    parts = split_fused(run.weight(name, 0), run.module(name), run.config)
    assert parts["k"].shape == (16, 32)  # 2 kv heads × 8, not a third of 64
    for p in "qkv":
        torch.testing.assert_close(parts[p], want[p].t())
    name = "model.layers.1.mlp.gate_up_proj.weight"
    out = _identity_forward(model.model.layers[1].mlp.gate_up_proj, 32)
    gate, up = out.chunk(2, dim=-1)  # Phi3MLP.forward
    parts = split_fused(run.weight(name, 0), run.module(name), run.config)
    torch.testing.assert_close(parts["gate"], gate.t())
    torch.testing.assert_close(parts["up"], up.t())


def test_split_fused_gpt2_thirds_after_transpose(hf_run):
    from transformers import AutoModelForCausalLM

    root = hf_run("gpt2", "safetensors", steps=(0, 1), dtype=torch.float32)
    run = opdlens.open_run(root)
    model = AutoModelForCausalLM.from_pretrained(root / "checkpoint-0", dtype=torch.float32)
    attn = model.transformer.h[0].attn
    out = _identity_forward(attn.c_attn, 32) - attn.c_attn.bias
    q, k, v = out.split(attn.split_size, dim=-1)  # GPT2Attention.forward
    name = "transformer.h.0.attn.c_attn.weight"
    parts = split_fused(run.weight(name, 0), run.module(name), run.config)
    for p, want in zip("qkv", (q, k, v), strict=True):
        torch.testing.assert_close(parts[p], want.t())


def test_split_fused_gpt_neox_interleaved_per_head(hf_run):
    from transformers import AutoModelForCausalLM

    root = hf_run("gpt_neox", "safetensors", steps=(0, 1), dtype=torch.float32)
    run = opdlens.open_run(root)
    model = AutoModelForCausalLM.from_pretrained(root / "checkpoint-0", dtype=torch.float32)
    attn = model.gpt_neox.layers[1].attention
    lin = attn.query_key_value
    with torch.no_grad():  # GPTNeoXAttention.forward, on the identity input
        qkv = (lin(torch.eye(32).unsqueeze(0)) - lin.bias).view(1, 32, -1, 3 * attn.head_size)
        q, k, v = qkv.transpose(1, 2).chunk(3, dim=-1)  # (1, heads, in, head_size)
    name = "gpt_neox.layers.1.attention.query_key_value.weight"
    parts = split_fused(run.weight(name, 0), run.module(name), run.config)
    for p, want in zip("qkv", (q, k, v), strict=True):
        heads = want[0].permute(0, 2, 1)  # (heads, head_size, in)
        torch.testing.assert_close(parts[p], heads.reshape(-1, 32))
    # Contiguous thirds would be wrong here.
    w = run.weight(name, 0)
    assert not torch.allclose(parts["k"], w[32:64])


@pytest.mark.parametrize(
    "variant",
    [{"new_decoder_architecture": True, "num_kv_heads": 2}, {"multi_query": True},
     {"multi_query": False}],
    ids=["new_decoder_architecture", "multi_query", "per_head"],
)  # fmt: skip
def test_split_fused_falcon_every_variant(tmp_path, variant):
    from transformers import FalconConfig, FalconForCausalLM

    torch.manual_seed(0)
    cfg = FalconConfig(vocab_size=64, hidden_size=32, num_attention_heads=4, num_hidden_layers=2,
                       **variant)  # fmt: skip
    model = FalconForCausalLM(cfg).eval()
    for step in (0, 1):
        model.save_pretrained(tmp_path / "run" / f"checkpoint-{step}")
    run = opdlens.open_run(tmp_path / "run")
    # The reference, from Falcon's documented row layout of query_key_value (out, in), read off
    # the module's public weight rather than any private method of transformers:
    # new_decoder_architecture: (kv groups, that group's queries then its key and its value, head
    # dim); multi_query: (every query head, then one key, then one value, head dim); otherwise
    # (heads, query/key/value, head dim).
    w = model.transformer.h[1].self_attention.query_key_value.weight.detach()  # (out, 32)
    heads, hd = 4, 8
    if variant.get("new_decoder_architecture"):
        kv = variant["num_kv_heads"]
        grouped = w.view(kv, heads // kv + 2, hd, 32)
        want = {"q": grouped[:, :-2], "k": grouped[:, -2], "v": grouped[:, -1]}
    elif variant.get("multi_query"):
        rows = w.view(heads + 2, hd, 32)
        want = {"q": rows[:heads], "k": rows[heads], "v": rows[heads + 1]}
    else:
        rows = w.view(heads, 3, hd, 32)
        want = {"q": rows[:, 0], "k": rows[:, 1], "v": rows[:, 2]}
    name = "transformer.h.1.self_attention.query_key_value.weight"
    parts = split_fused(run.weight(name, 0), run.module(name), run.config)
    assert sorted(parts) == ["k", "q", "v"]
    for p, ref in want.items():
        torch.testing.assert_close(parts[p], ref.reshape(-1, 32), rtol=0, atol=0, msg=p)
    if not variant.get("multi_query"):  # interleaved rows: contiguous blocks would be wrong
        assert not torch.equal(parts["q"], w[: parts["q"].shape[0]])


_PHI3 = {"model_type": "phi3", "hidden_size": 32, "num_attention_heads": 4,
         "num_key_value_heads": 2}  # fmt: skip
_QKV = "model.layers.0.self_attn.qkv_proj.weight"


@pytest.mark.parametrize(
    ("name", "rows", "config", "message"),
    [(_QKV, 50, _PHI3, r"qkv matrix has 50 rows, but config\.json's 4 query heads, 2 key/value "
                       r"heads of size 8 need 64"),
     # Divisible by 3, yet not what the config describes: no guess at equal thirds.
     (_QKV, 63, _PHI3, r"has 63 rows, .* need 64"),
     (_QKV, 50, {}, r"50 rows cannot be split into equal thirds"),
     ("model.layers.0.mlp.gate_up_proj.weight", 63, _PHI3, r"even row count; got 63"),
     ("gpt_neox.layers.0.attention.query_key_value.weight", 50,
      {"model_type": "gpt_neox", "num_attention_heads": 4}, r"50 rows, not divisible by 3 × 4"),
     (_QKV, 64, {**_PHI3, "num_attention_heads": "four"},
      r"config\.json sets num_attention_heads to 'four'; expected a whole number")],
)  # fmt: skip
def test_split_fused_refuses_rows_the_config_does_not_describe(name, rows, config, message):
    info = classify(name, model_type=config.get("model_type"))
    with pytest.raises(FusedSplitError, match=message):
        split_fused(torch.zeros(rows, 32), info, config)


def test_split_fused_of_an_unfused_tensor_is_an_option_error():
    with pytest.raises(OptionError, match="kind 'down_proj' is not fused"):
        split_fused(torch.zeros(4, 4), classify("model.layers.0.mlp.down_proj.weight"))


def test_a_fused_tensor_that_cannot_be_split_is_analysed_whole_with_a_warning(tmp_path):
    torch.manual_seed(0)
    state = {_QKV: torch.randn(50, 32), "model.layers.0.mlp.down_proj.weight": torch.randn(32, 64)}
    for step in (0, 1):
        moved = {k: v + 0.01 * step * torch.randn(v.shape) for k, v in state.items()}
        write_state_dir(tmp_path / "run" / f"checkpoint-{step}", moved, config=_PHI3)
    df = opdlens.analyze(opdlens.open_run(tmp_path / "run"), ranks=(1,), workers=1)
    rows = df[df["tensor"] == _QKV]
    assert len(rows) == 1 and rows["part"].isna().all() and (rows["kind"] == "qkv").all()
    warnings = [w for w in df.attrs["warnings"] if _QKV in w]
    assert len(warnings) == 1, df.attrs["warnings"]
    assert "whole" in warnings[0] and "has 50 rows" in warnings[0]
