"""Build (or reuse) a Qwen3-0.6B-shaped bf16 run on disk, shared by the benchmarks."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

HIDDEN, INTER, HEADS, KV_HEADS, HEAD_DIM = 1024, 3072, 16, 8, 128
VOCAB = 32768  # the metrics benchmark's default: a smaller embedding keeps its SVDs quick
QWEN3_VOCAB = 151936  # the real Qwen3-0.6B vocabulary
STEPS = (0, 1, 2, 4, 8)


def config(layers: int, vocab: int = VOCAB) -> dict[str, object]:
    """A Qwen3 config.json of the benchmark shape."""
    return {
        "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"], "hidden_size": HIDDEN,
        "intermediate_size": INTER, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "head_dim": HEAD_DIM, "num_hidden_layers": layers, "vocab_size": vocab,
        "tie_word_embeddings": True, "torch_dtype": "bfloat16",
    }  # fmt: skip


def shapes(layers: int, vocab: int = VOCAB) -> dict[str, tuple[int, ...]]:
    """Every tensor name of the model with its shape."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (vocab, HIDDEN)}
    for i in range(layers):
        p = f"model.layers.{i}."
        out |= {
            p + "self_attn.q_proj.weight": (HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.k_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.v_proj.weight": (KV_HEADS * HEAD_DIM, HIDDEN),
            p + "self_attn.o_proj.weight": (HIDDEN, HEADS * HEAD_DIM),
            p + "self_attn.q_norm.weight": (HEAD_DIM,), p + "self_attn.k_norm.weight": (HEAD_DIM,),
            p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
            p + "mlp.down_proj.weight": (HIDDEN, INTER),
            p + "input_layernorm.weight": (HIDDEN,), p + "post_attention_layernorm.weight": (HIDDEN,),
        }  # fmt: skip
    out["model.norm.weight"] = (HIDDEN,)
    return out


def build_run(root: Path, layers: int = 8, vocab: int = VOCAB) -> Path:
    """Write base + 4 checkpoints (single model.safetensors each) unless already there."""
    run = Path(root) / (f"qwen3-shaped-{layers}L" + ("" if vocab == VOCAB else f"-v{vocab}"))
    marker = run / "complete.json"
    if marker.is_file():
        return run
    g = torch.Generator().manual_seed(0)
    names = shapes(layers, vocab)
    base = {n: 0.02 * torch.randn(s, generator=g) for n, s in names.items()}
    # A rank-4 drift per matrix plus small noise: the shape of a real post-training update.
    drift = {}
    for n, s in names.items():
        if len(s) == 2:
            drift[n] = 1e-4 * torch.randn(s[0], 4, generator=g) @ torch.randn(4, s[1], generator=g)
        else:
            drift[n] = 1e-4 * torch.randn(s, generator=g)
    for step in STEPS:
        d = run / f"checkpoint-{step}"
        d.mkdir(parents=True, exist_ok=True)
        state = {n: (base[n] + step * drift[n] + 1e-5 * torch.randn(names[n], generator=g))
                 .to(torch.bfloat16) for n in names}  # fmt: skip
        save_file(state, d / "model.safetensors", metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(config(layers, vocab), indent=2))
        del state
    marker.write_text(json.dumps({"layers": layers, "steps": list(STEPS)}))
    return run
