"""Tiny Qwen-named runs written with safetensors, whose weights move along known directions."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

HIDDEN, INTER, LAYERS, VOCAB = 16, 24, 3, 32
CONFIG = {"model_type": "qwen3", "hidden_size": HIDDEN, "intermediate_size": INTER,
          "num_hidden_layers": LAYERS, "vocab_size": VOCAB, "tie_word_embeddings": False}  # fmt: skip


def shapes() -> dict[str, tuple[int, ...]]:
    """Tensor names and shapes of the tiny model."""
    out: dict[str, tuple[int, ...]] = {"model.embed_tokens.weight": (VOCAB, HIDDEN)}
    for i in range(LAYERS):
        p = f"model.layers.{i}."
        out |= {p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN), p + "self_attn.k_proj.weight": (8, HIDDEN),
                p + "self_attn.v_proj.weight": (8, HIDDEN), p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (INTER, HIDDEN), p + "mlp.up_proj.weight": (INTER, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, INTER), p + "input_layernorm.weight": (HIDDEN,)}  # fmt: skip
    out |= {"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)}
    return out


# What extrapolation changes by default: the attention and MLP weight matrices.
MATRICES = [n for n, s in shapes().items() if len(s) == 2 and (".self_attn." in n or ".mlp." in n)]


def linear_state(
    step: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """θ_s = θ_0 + s·D on a grid of multiples of 1/64 (exact in bf16 for small s)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, shape in shapes().items():
        w0 = torch.randint(-32, 32, shape, generator=g).float() / 16
        d = torch.randint(-4, 5, shape, generator=g).float() / 64
        state[name] = (w0 + step * d).to(dtype)
    state["model.step_counter"] = torch.tensor([step], dtype=torch.int64)
    return state


def save_state(directory: Path, state: dict[str, torch.Tensor], sharded: bool = False) -> Path:
    """Write a HF-style checkpoint directory (single file, or two shards plus index)."""
    directory.mkdir(parents=True)
    (directory / "config.json").write_text(json.dumps(CONFIG))
    (directory / "tokenizer_config.json").write_text("{}")
    (directory / "optimizer.pt").write_bytes(b"not weights")
    if not sharded:
        save_file(state, directory / "model.safetensors")
        return directory
    names = sorted(state)
    halves = {"model-00001-of-00002.safetensors": names[::2],
              "model-00002-of-00002.safetensors": names[1::2]}  # fmt: skip
    for file, keys in halves.items():
        save_file({k: state[k] for k in keys}, directory / file)
    index = {"metadata": {}, "weight_map": {k: f for f, ks in halves.items() for k in ks}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index))
    return directory


def write_run(
    root: Path, steps=(0, 1, 2, 4, 8), *, dtype: torch.dtype = torch.float32, sharded: bool = False,
    state: Callable[[int], dict[str, torch.Tensor]] | None = None,
) -> Path:  # fmt: skip
    """A run directory with checkpoint-<s>/ for every step."""
    make = state or (lambda s: linear_state(s, dtype))
    for s in steps:
        save_state(root / f"checkpoint-{s}", make(s), sharded)
    return root


@pytest.fixture
def linear_run(tmp_path: Path) -> Path:
    """A float32 run moving exactly linearly: θ_s = θ_0 + s·D, saved at 0, 1, 2, 4, 8."""
    return write_run(tmp_path / "run")


@pytest.fixture
def random_run(tmp_path: Path) -> Path:
    """Full-rank random float32 weights at steps 0 and 5 (test_ablate has its own, float64)."""
    g = torch.Generator().manual_seed(3)
    states = {s: {n: torch.randn(sh, generator=g) for n, sh in shapes().items()} for s in (0, 5)}
    return write_run(tmp_path / "run", steps=(0, 5), state=lambda s: states[s])
