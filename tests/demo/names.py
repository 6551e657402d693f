"""Tensor names a Llama checkpoint of the demo holds."""

from __future__ import annotations


def llama_names(layers: int) -> set[str]:
    names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"}
    for i in range(layers):
        p = f"model.layers.{i}."
        names |= {p + f"self_attn.{k}_proj.weight" for k in "qkvo"}
        names |= {p + f"mlp.{k}_proj.weight" for k in ("gate", "up", "down")}
        names |= {p + "input_layernorm.weight", p + "post_attention_layernorm.weight"}
    return names
