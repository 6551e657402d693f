"""Parameter names: strip wrapper prefixes, classify into (layer, block, kind), slice fused blocks."""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .errors import FusedSplitError, OptionError

if TYPE_CHECKING:
    import torch

# Wrappers that training frameworks put around a model; removed wherever they occur.
_WRAPPER_PARTS = ("_orig_mod.", "_fsdp_wrapped_module.", "_checkpoint_wrapped_module.", "module.")
# Leading prefixes rewritten so one parameter has one name across trainers and model classes.
_PREFIX_REWRITES = (
    ("base_model.model.", ""),  # PEFT
    ("model.language_model.", "model."),  # multimodal wrappers in newer transformers
    ("language_model.model.", "model."),
    ("language_model.lm_head.", "lm_head."),
)


def canonical_name(name: str) -> str:
    """Return the name with trainer/compile/FSDP/PEFT wrapper prefixes removed."""
    changed = True
    while changed:
        changed = False
        for part in _WRAPPER_PARTS:
            if name.startswith(part):
                name, changed = name[len(part) :], True
            elif "." + part in name:
                name, changed = name.replace("." + part, "."), True
        for old, new in _PREFIX_REWRITES:
            if name.startswith(old):
                name, changed = new + name[len(old) :], True
    return name


# Every block `classify` returns, in the order tables and plots show them.
BLOCKS = ("attn", "mlp", "embed", "norm", "head", "other")


@dataclass(frozen=True)
class ModuleInfo:
    """Where a tensor sits in the model (design.md: layer, block, kind)."""

    layer: int | None
    block: str  # attn, mlp, embed, norm, head, other
    kind: str
    expert: int | None = None  # for per-expert tensors (experts.<E>.w1)
    proj: str | None = None  # for experts/shared experts: gate_proj, up_proj, down_proj, gate_up
    transposed: bool = False  # stored as (in, out) (GPT-2 Conv1D): flip to get (out, in)
    stacked_experts: bool = False  # one tensor (experts, out, in) per layer
    fused: tuple[str, ...] | None = None  # logical parts of a fused tensor, e.g. ("q", "k", "v")


_LAYER = re.compile(r"(?:^|\.)(?:layers|h|layer|blocks|block|decoder_layers)\.(\d+)\.")
_EXPERT = re.compile(r"\.experts\.(\d+)\.")

_ATTN_KIND = {
    "q_proj": "q_proj",
    "k_proj": "k_proj",
    "v_proj": "v_proj",
    "o_proj": "o_proj",
    "out_proj": "o_proj",
    "dense": "o_proj",
    "c_proj": "o_proj",
    "wo": "o_proj",
    "wq": "q_proj",
    "wk": "k_proj",
    "wv": "v_proj",
    "qkv_proj": "qkv",
    "c_attn": "qkv",
    "query_key_value": "qkv",
    "Wqkv": "qkv",
    "query": "q_proj",
    "key": "k_proj",
    "value": "v_proj",
}
_MLP_KIND = {
    "gate_proj": "gate_proj",
    "up_proj": "up_proj",
    "down_proj": "down_proj",
    "gate_up_proj": "gate_up",
    "c_fc": "up_proj",
    "c_proj": "down_proj",
    "dense_h_to_4h": "up_proj",
    "dense_4h_to_h": "down_proj",
    "fc1": "up_proj",
    "fc2": "down_proj",
    "w1": "gate_proj",  # Mixtral experts: w1 gate, w3 up, w2 down
    "w3": "up_proj",
    "w2": "down_proj",
}
_CONV1D = {"c_attn", "c_proj", "c_fc"}  # GPT-2 style Conv1D weights, stored (in, out)
_EMBED = {"embed_tokens", "wte", "wpe", "embed_in", "word_embeddings", "embed_positions",
          "position_embeddings", "tok_embeddings"}  # fmt: skip
_HEAD = {"lm_head", "embed_out", "output"}
_ATTN_SCOPES = ("self_attn", "attn", "attention", "self_attention")
_MLP_SCOPES = ("mlp", "block_sparse_moe", "feed_forward", "ffn", "moe")


def classify(name: str, *, model_type: str | None = None) -> ModuleInfo:
    """Classify a canonical parameter name into layer, block and kind."""
    parts = name.split(".")
    m = _LAYER.search(name)
    layer = int(m.group(1)) if m else None
    # The module name is the last component before weight/bias, or the last one (MoE 3-D params).
    leaf = parts[-1]
    module = parts[-2] if leaf in ("weight", "bias") and len(parts) > 1 else leaf
    scopes = set(parts[:-1])
    arch = architecture(model_type)

    if module in _EMBED or (layer is None and module in ("embeddings", "embedding")):
        return ModuleInfo(layer, "embed", module)
    if module in _HEAD and layer is None:
        return ModuleInfo(None, "head", "lm_head")
    if "norm" in module.lower() or module.startswith("ln_") or module in ("ln", "ln_f"):
        return ModuleInfo(layer, "norm", module)

    e = _EXPERT.search("." + name)
    mlp_scope = any(s in scopes for s in _MLP_SCOPES)
    if mlp_scope and "experts" in parts:
        proj = _MLP_KIND.get(module)
        stacked = e is None and leaf != "bias"
        return ModuleInfo(
            layer, "mlp", "experts", expert=int(e.group(1)) if e else None, proj=proj,
            stacked_experts=stacked, fused=("gate", "up") if proj == "gate_up" else None,
        )  # fmt: skip
    if mlp_scope and module in ("gate", "router", "shared_expert_gate", "wg"):
        return ModuleInfo(layer, "mlp", "router")
    if mlp_scope and module in _MLP_KIND:
        kind = _MLP_KIND[module]
        transposed = module in _CONV1D and leaf == "weight" and arch.conv1d
        fused: tuple[str, ...] | None = ("gate", "up") if kind == "gate_up" else None
        proj = kind if any(s.startswith("shared_expert") for s in scopes) else None
        return ModuleInfo(layer, "mlp", kind, proj=proj, transposed=transposed, fused=fused)
    if any(s in scopes for s in _ATTN_SCOPES) and module in _ATTN_KIND:
        kind = _ATTN_KIND[module]
        transposed = module in _CONV1D and leaf == "weight" and arch.conv1d
        fused = ("q", "k", "v") if kind == "qkv" else None
        return ModuleInfo(layer, "attn", kind, transposed=transposed, fused=fused)
    return ModuleInfo(layer, "other", module)


@dataclass(frozen=True)
class Architecture:
    """What still differs between architectures once parameter names are canonical."""

    conv1d: bool = False  # c_attn / c_fc / c_proj weights stored (in, out), GPT-2's Conv1D
    qkv: str = (
        "blocks"  # fused qkv rows: "blocks" (all q, k, v), "per_head" ([q_h, k_h, v_h]), "falcon"
    )


# One row per architecture that deviates from the default (Llama-like) layout.
ARCHITECTURES: dict[str, Architecture] = {
    "gpt2": Architecture(conv1d=True),
    "gpt_bigcode": Architecture(conv1d=True),
    "imagegpt": Architecture(conv1d=True),
    "decision_transformer": Architecture(conv1d=True),
    "gpt_neox": Architecture(qkv="per_head"),
    "bloom": Architecture(qkv="per_head"),
    "falcon": Architecture(qkv="falcon"),
}
# Without a config.json, c_attn / c_fc / c_proj names imply GPT-2's Conv1D.
_NO_CONFIG = Architecture(conv1d=True)


def architecture(model_type: object) -> Architecture:
    """The table row of config.json's `model_type` (the default layout for unlisted ones)."""
    if model_type is None:
        return _NO_CONFIG
    return ARCHITECTURES.get(str(model_type), Architecture())


def as_matrix(tensor: torch.Tensor, info: ModuleInfo) -> torch.Tensor:
    """Return a 2-D tensor as (out, in), flipping Conv1D storage.

    Shape: (out, in) or (in, out) when ``info.transposed``; returns (out, in).
    """
    return tensor.t() if info.transposed and tensor.dim() == 2 else tensor


def split_fused(
    matrix: torch.Tensor, info: ModuleInfo, config: Mapping[str, object] | None = None
) -> dict[str, torch.Tensor]:
    """Split a fused (out, in) matrix into its logical blocks (q/k/v or gate/up).

    Shape: matrix (out, in), already oriented with ``as_matrix``; returns views of it.

    Raises:
        FusedSplitError: the row count fits no split that the config (or its absence) describes.
    """
    if not info.fused:
        raise OptionError(f"A tensor of kind '{info.kind}' is not fused; nothing to split.")
    out = matrix.shape[0]
    cfg = dict(config or {})
    if info.fused == ("gate", "up"):
        if out % 2:
            raise FusedSplitError(f"A fused gate_up matrix needs an even row count; got {out}.")
        return {"gate": matrix[: out // 2], "up": matrix[out // 2 :]}
    heads = _config_int(cfg, "num_attention_heads", "n_head")
    layout = architecture(cfg.get("model_type")).qkv
    if layout == "falcon":
        return _split_falcon(matrix, cfg)
    if layout == "per_head":
        # GPT-NeoX: rows are grouped per head as [q_h, k_h, v_h].
        if not heads:
            raise FusedSplitError(
                "Splitting GPT-NeoX query_key_value needs num_attention_heads from config.json."
            )
        if out % (3 * heads):
            raise FusedSplitError(
                f"query_key_value has {out} rows, not divisible by 3 × {heads} heads."
            )
        hd = out // (3 * heads)
        per_head = matrix.reshape(heads, 3, hd, -1)
        return {p: per_head[:, i].reshape(heads * hd, -1) for i, p in enumerate(("q", "k", "v"))}
    kv_heads = _config_int(cfg, "num_key_value_heads") or heads
    hd = _config_int(cfg, "head_dim") or (_config_int(cfg, "hidden_size") // heads if heads else 0)
    if heads and kv_heads and hd:
        nq, nkv = heads * hd, kv_heads * hd
        if nq + 2 * nkv != out:  # the config's geometry is the only one to trust
            raise FusedSplitError(
                f"A fused qkv matrix has {out} rows, but config.json's {heads} query heads, "
                f"{kv_heads} key/value heads of size {hd} need {nq + 2 * nkv}."
            )
        return {"q": matrix[:nq], "k": matrix[nq : nq + nkv], "v": matrix[nq + nkv :]}
    if out % 3:
        raise FusedSplitError(
            f"A fused qkv matrix with {out} rows cannot be split into equal thirds; "
            "give the config (num_attention_heads, num_key_value_heads)."
        )
    t = out // 3
    return {"q": matrix[:t], "k": matrix[t : 2 * t], "v": matrix[2 * t :]}


def _split_falcon(matrix: torch.Tensor, cfg: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Falcon's query_key_value, whose row layout depends on the variant (FalconAttention)."""
    heads = _config_int(cfg, "num_attention_heads", "n_head")
    if not heads:
        raise FusedSplitError(
            "Splitting Falcon query_key_value needs num_attention_heads from config.json."
        )
    hd = _config_int(cfg, "hidden_size") // heads
    rows, cols = matrix.shape
    if cfg.get("new_decoder_architecture"):
        # Per key/value group: its query heads, then one key head, then one value head.
        kv = _config_int(cfg, "num_kv_heads", "n_head_kv") or heads
        layout, want = "new_decoder_architecture", (heads + 2 * kv) * hd
        if rows == want and heads % kv == 0:
            g = matrix.reshape(kv, heads // kv + 2, hd, cols)
            return {"q": g[:, :-2].reshape(-1, cols), "k": g[:, -2].reshape(-1, cols),
                    "v": g[:, -1].reshape(-1, cols)}  # fmt: skip
    elif cfg.get("multi_query", True):  # FalconConfig's default
        # All query heads, then the one shared key head, then the one value head.
        layout, want = "multi_query", (heads + 2) * hd
        if rows == want:
            q = heads * hd
            return {"q": matrix[:q], "k": matrix[q : q + hd], "v": matrix[q + hd :]}
    else:
        # Per head [q_h, k_h, v_h], as in GPT-NeoX.
        layout, want = "per-head", 3 * heads * hd
        if rows == want:
            per_head = matrix.reshape(heads, 3, hd, cols)
            return {p: per_head[:, i].reshape(heads * hd, cols) for i, p in enumerate("qkv")}
    raise FusedSplitError(
        f"Falcon query_key_value has {rows} rows; the {layout} layout of this config.json "
        f"needs {want}."
    )


def _config_int(cfg: Mapping[str, object], *keys: str) -> int:
    """The first of `keys` that config.json sets (non-zero), as a whole number; 0 if none is."""
    for key in keys:
        value = cfg.get(key)
        if not value:
            continue
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise FusedSplitError(
                f"config.json sets {key} to {value!r}; expected a whole number ≥ 0. Fix the "
                "config, or analyse fused tensors whole (--no-split-fused)."
            )
        return value
    return 0
