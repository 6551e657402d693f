"""Tiny Llama-named runs in HF layout whose weights move along a known low-rank direction."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

STEPS = (0, 1, 2, 4)
HIDDEN, INTER, KV, LAYERS, VOCAB = 32, 64, 16, 3, 100
CONFIG = {"model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": INTER,
          "num_hidden_layers": LAYERS, "num_attention_heads": 4, "num_key_value_heads": 2,
          "vocab_size": VOCAB, "tie_word_embeddings": False}  # fmt: skip


def shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes, as LlamaForCausalLM.save_pretrained writes them."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (KV, HIDDEN),
                p + "self_attn.v_proj.weight": (KV, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTER), p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,)}  # fmt: skip
    return out | {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}


def write_run(root: Path, seed: int, steps: tuple[int, ...] = STEPS) -> Path:
    """W_t = W_0 + t·(rank-1 direction, stronger in the MLPs) + √t·(small dense noise)."""
    g = torch.Generator().manual_seed(seed)
    base, direction, noise = {}, {}, {}
    for name, shape in shapes().items():
        base[name] = torch.randn(shape, generator=g) * 0.05
        scale = 0.02 * (3.0 if ".mlp." in name else 1.0)
        if len(shape) == 2:
            u, v = torch.randn(shape[0], 1, generator=g), torch.randn(1, shape[1], generator=g)
            direction[name] = scale * u * v
        else:
            direction[name] = scale * torch.randn(shape, generator=g)
        noise[name] = 0.002 * torch.randn(shape, generator=g)
    for step in steps:
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        state = {n: base[n] + step * direction[n] + step**0.5 * noise[n] for n in base}
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(CONFIG))
    return root
