"""A minimal Llama-style decoder (RMSNorm, RoPE, SwiGLU) whose state dict uses Llama names."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from opdlens.errors import CheckpointError
from opdlens.io.paths import output_error
from opdlens.io.weightfiles import read_weight_map
from opdlens.io.writer import CheckpointWriter, TensorSpec
from opdlens.provenance import checkpoint_record

DEMO_SECTION = "opdlens_demo"
# The demo trains, evaluates and saves in float32. float64 cost 4.5x the CPU time and still did
# not make two kernel paths agree; the portable code path does (demo/portable.py).
DTYPE = torch.float32
_SINGLE = "model.safetensors"
_INDEX = "model.safetensors.index.json"


@dataclass(frozen=True)
class ModelConfig:
    """The architecture numbers that config.json records."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    max_position_embeddings: int
    rms_norm_eps: float = 1e-5
    rope_theta: float = 10000.0

    @property
    def head_dim(self) -> int:
        """Width of one attention head."""
        return self.hidden_size // self.num_attention_heads


class RMSNorm(nn.Module):
    """Root-mean-square layer norm with a learned scale."""

    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps))


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


class Attention(nn.Module):
    """Causal multi-head attention with rotary positions and separate q/k/v/o projections."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        self.q_proj = nn.Linear(cfg.hidden_size, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(cfg.hidden_size, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, t, _ = x.shape
        q = self.q_proj(x).view(b, t, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.k_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        v = self.v_proj(x).view(b, t, self.n_kv, self.head_dim).transpose(1, 2)
        q = q * cos + _rotate_half(q) * sin  # (B, H, T, D)
        k = k * cos + _rotate_half(k) * sin
        if self.n_kv != self.n_heads:
            k = k.repeat_interleave(self.n_heads // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_heads // self.n_kv, dim=1)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.o_proj(y.transpose(1, 2).reshape(b, t, -1))


class MLP(nn.Module):
    """SwiGLU feed-forward block."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.up_proj = nn.Linear(cfg.hidden_size, cfg.intermediate_size, bias=False)
        self.down_proj = nn.Linear(cfg.intermediate_size, cfg.hidden_size, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm transformer block: attention then MLP, each with a residual."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg)
        self.input_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)
        self.post_attention_layernorm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        return x + self.mlp(self.post_attention_layernorm(x))


class Decoder(nn.Module):
    """Embedding, decoder layers and final norm (the `model.` prefix of Llama names)."""

    def __init__(self, cfg: ModelConfig) -> None:
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.num_hidden_layers))
        self.norm = RMSNorm(cfg.hidden_size, cfg.rms_norm_eps)


class TinyLlama(nn.Module):
    """Decoder-only language model with an untied lm_head, in `dtype` (float32 by default)."""

    rope_cos: torch.Tensor  # (P, D) buffers, not saved
    rope_sin: torch.Tensor

    def __init__(self, cfg: ModelConfig, dtype: torch.dtype = DTYPE) -> None:
        super().__init__()
        self.config = cfg
        self.model = Decoder(cfg)
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self._init_weights()  # drawn in float32, so a seed gives the same start in any dtype
        self.to(dtype)
        half = torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim
        angles = torch.outer(
            torch.arange(cfg.max_position_embeddings, dtype=torch.float64),
            1.0 / cfg.rope_theta**half,
        )
        angles = torch.cat((angles, angles), dim=-1)  # (P, D)
        self.register_buffer("rope_cos", angles.cos().to(dtype), persistent=False)
        self.register_buffer("rope_sin", angles.sin().to(dtype), persistent=False)

    def _init_weights(self) -> None:
        std = 0.02
        for name, p in self.named_parameters():
            if p.dim() == 2:
                scale = std / math.sqrt(2 * self.config.num_hidden_layers)
                nn.init.normal_(
                    p, std=scale if name.endswith(("o_proj.weight", "down_proj.weight")) else std
                )

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Next-token logits. Shape: tokens (B, T) → (B, T, V)."""
        t = tokens.shape[1]
        cos, sin = self.rope_cos[:t], self.rope_sin[:t]
        x = self.model.embed_tokens(tokens)
        for layer in self.model.layers:
            x = layer(x, cos, sin)
        return self.lm_head(self.model.norm(x))


def hf_config(cfg: ModelConfig, demo: dict[str, Any], dtype: torch.dtype) -> dict[str, Any]:
    """A Hugging Face LlamaForCausalLM config.json with the demo section beside it."""
    out: dict[str, Any] = {"architectures": ["LlamaForCausalLM"], "model_type": "llama"}
    out.update(asdict(cfg))
    out.update(
        head_dim=cfg.head_dim,
        hidden_act="silu",
        tie_word_embeddings=False,
        torch_dtype=str(dtype).removeprefix("torch."),
        attention_bias=False,
        mlp_bias=False,
    )
    out[DEMO_SECTION] = demo
    return out


def save_checkpoint(
    model: TinyLlama, out_dir: Path, demo: dict[str, Any], dtype: torch.dtype = DTYPE
) -> Path:
    """Write model.safetensors + config.json into out_dir, atomically (io.writer.CheckpointWriter)."""
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise CheckpointError(f"Refusing to overwrite {out_dir}: the directory already exists.")
    state = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    specs = [TensorSpec(k, tuple(v.shape), v.dtype) for k, v in state.items()]
    meta = checkpoint_record("demo-checkpoint")
    with CheckpointWriter(out_dir, specs, metadata=meta) as writer:
        for name, tensor in state.items():
            writer.write(name, tensor)
        config = hf_config(model.config, demo, dtype)
        target = writer.extra_file("config.json")
        try:
            target.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
        except OSError as e:
            raise output_error(target, e) from None
    return out_dir


def read_config(checkpoint_dir: Path) -> tuple[ModelConfig, dict[str, Any]]:
    """The architecture and demo section of a demo checkpoint's config.json."""
    path = Path(checkpoint_dir) / "config.json"
    if not path.is_file():
        raise CheckpointError(
            f"{checkpoint_dir} is not a demo checkpoint: it has no config.json. "
            "Pass a directory written by opdlens.demo.generate_runs (or extrapolated from one)."
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path} is not valid JSON ({err}).") from err
    if DEMO_SECTION not in raw:
        raise CheckpointError(
            f"{path} has no '{DEMO_SECTION}' section, so it is not a demo checkpoint and its "
            "held-out set cannot be rebuilt. Use a checkpoint written by opdlens.demo.generate_runs."
        )
    try:
        cfg = ModelConfig(**{f.name: raw[f.name] for f in fields(ModelConfig)})
    except KeyError as err:
        raise CheckpointError(f"{path} lacks the architecture field {err}.") from err
    return cfg, raw[DEMO_SECTION]


def read_state_dict(checkpoint_dir: Path) -> dict[str, torch.Tensor]:
    """All tensors of a single-file or sharded safetensors checkpoint."""
    root = Path(checkpoint_dir)
    if (root / _SINGLE).is_file():
        return load_file(str(root / _SINGLE))
    if not (root / _INDEX).is_file():
        raise CheckpointError(
            f"{root} holds neither {_SINGLE} nor {_INDEX}; expected the safetensors weights "
            "of a demo checkpoint."
        )
    weight_map = read_weight_map(root / _INDEX)
    state: dict[str, torch.Tensor] = {}
    for shard in sorted(set(weight_map.values())):
        if not (root / shard).is_file():
            raise CheckpointError(f"{root / _INDEX} names the shard {shard}, which is missing.")
        state.update(load_file(str(root / shard)))
    return state


def load_model(checkpoint_dir: Path) -> tuple[TinyLlama, dict[str, Any]]:
    """Rebuild a demo model (float32, eval mode) and its demo section from a checkpoint dir."""
    cfg, demo = read_config(checkpoint_dir)
    model = TinyLlama(cfg)
    state = read_state_dict(checkpoint_dir)
    expected = set(model.state_dict())
    missing, extra = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or extra:
        raise CheckpointError(
            f"{checkpoint_dir} does not match its config.json: missing tensors {missing[:5]}, "
            f"unexpected tensors {extra[:5]}."
        )
    try:
        model.load_state_dict({k: v.to(DTYPE) for k, v in state.items()})
    except RuntimeError as err:  # a tensor whose shape disagrees with config.json
        raise CheckpointError(f"{checkpoint_dir} does not match its config.json: {err}") from err
    return model.eval(), demo
