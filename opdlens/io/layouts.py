"""Recognise a checkpoint directory's layout and open its weights as a tensor source."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

from ..errors import CheckpointError
from .sources import RANK_FILE, FsdpSource, PickleSource, SafetensorsSource, TensorSource

# Files a trainer leaves beside the weights; recognised so they are never loaded.
NON_WEIGHT_FILES = re.compile(
    r"^(optimizer(\.pt|\.bin)?|scheduler\.pt|rng_state.*\.pth?|trainer_state\.json|"
    r"training_args\.bin|data\.pt|extra_state.*\.pt|optim_world_size_.*\.pt|"
    r"scaler\.pt|latest|zero_to_fp32\.py|.*\.lock)$"
)
_SHARD_ST = re.compile(r"^model-\d+-of-\d+\.safetensors$")
_JSON_TYPES = {list: "array", str: "string", int: "number", float: "number", bool: "boolean",
               type(None): "null"}  # fmt: skip


@dataclass
class Detected:
    """A recognised checkpoint: where its weights are and how they are stored."""

    layout: str
    weights_dir: Path
    files: list[Path]
    config_dir: Path | None


def _config_dir(*candidates: Path) -> Path | None:
    for c in candidates:
        if (c / "config.json").is_file():
            return c
    return None


def detect(directory: Path) -> Detected:
    """Find the weight files of one checkpoint directory; raise if it holds none."""
    d = Path(directory)
    if not d.exists():
        raise CheckpointError(f"{d}: no such file or directory.")
    if not d.is_dir():
        raise CheckpointError(f"{d}: expected a checkpoint directory, got a file.")
    found = _detect_hf(d)
    if found:
        return found
    actor = d / "actor" if (d / "actor").is_dir() else d
    hf = actor / "huggingface"
    if hf.is_dir():
        found = _detect_hf(hf)
        if found:
            found.layout = "verl-" + found.layout
            return found
    ranks = sorted(p for p in actor.iterdir() if RANK_FILE.match(p.name))
    if ranks:
        return Detected("verl-fsdp", actor, ranks, _config_dir(hf, actor, d))
    present = sorted(p.name for p in d.iterdir())
    shown = ", ".join(present[:6]) + (", …" if len(present) > 6 else "") if present else "nothing"
    if present and all(NON_WEIGHT_FILES.match(n) for n in present):
        shown += " — trainer state only, which opdlens never loads"
    raise CheckpointError(
        f"{d}: no model weights found (it holds {shown}); expected model.safetensors, "
        "model.safetensors.index.json, pytorch_model.bin, adapter_model.safetensors or verl "
        "actor/model_world_size_<W>_rank_<R>.pt."
    )


def _detect_hf(d: Path) -> Detected | None:
    cfg = _config_dir(d)
    if (d / "adapter_config.json").is_file() and any(
        (d / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")
    ):
        f = d / "adapter_model.safetensors"
        return Detected("peft-lora", d, [f if f.is_file() else d / "adapter_model.bin"], cfg)
    if (d / "model.safetensors.index.json").is_file():
        return Detected("hf-safetensors-sharded", d, [d / "model.safetensors.index.json"], cfg)
    if (d / "model.safetensors").is_file():
        return Detected("hf-safetensors", d, [d / "model.safetensors"], cfg)
    shards = sorted(p for p in d.iterdir() if _SHARD_ST.match(p.name))
    if shards:  # shards whose index has not been written yet
        return Detected("hf-safetensors-sharded", d, [d / "model.safetensors.index.json"], cfg)
    if (d / "pytorch_model.bin.index.json").is_file():
        return Detected("hf-bin-sharded", d, [d / "pytorch_model.bin.index.json"], cfg)
    if (d / "pytorch_model.bin").is_file():
        return Detected("hf-bin", d, [d / "pytorch_model.bin"], cfg)
    return None


def read_config(det: Detected) -> dict[str, object]:
    """The checkpoint's config.json as a dict, or {} when there is none."""
    if det.config_dir is None:
        return {}
    path = det.config_dir / "config.json"
    try:
        cfg = json.loads(path.read_bytes().decode("utf-8"))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError included
        why = e.msg if isinstance(e, json.JSONDecodeError) else type(e).__name__
        raise CheckpointError(
            f"{path}: not valid JSON ({why}); expected the model's config as a JSON object — "
            "restore it from the base model or delete it."
        ) from None
    if not isinstance(cfg, dict):
        raise CheckpointError(
            f"{path}: expected a JSON object (the model's config), found a JSON "
            f"{_JSON_TYPES.get(type(cfg), type(cfg).__name__)}; restore it from the base model "
            "or delete it."
        )
    text = cfg.get("text_config")
    if isinstance(text, dict):  # multimodal configs keep the language model's fields here
        cfg = {**cfg, **{k: v for k, v in text.items() if k not in cfg or k == "model_type"}}
    return cfg


def open_source(det: Detected, config: dict[str, object], trust_pickle: bool) -> TensorSource:
    """Open the weights of a detected checkpoint, reading headers only."""
    layout = det.layout.removeprefix("verl-")
    if layout == "peft-lora":
        from .lora import LoraSource

        return LoraSource(det.weights_dir, trust_pickle)
    if layout == "hf-safetensors":
        return SafetensorsSource(det.files, config)
    if layout == "hf-safetensors-sharded":
        index = det.files[0]
        if not index.is_file():
            from ..errors import IncompleteCheckpointError

            raise IncompleteCheckpointError(
                f"{det.weights_dir}: safetensors shards but no model.safetensors.index.json; "
                "the checkpoint is incomplete or still being written."
            )
        return SafetensorsSource.from_index(index, config)
    if layout == "hf-bin":
        return PickleSource(det.files, config, trust_pickle)
    if layout == "hf-bin-sharded":
        from .sources import _read_index

        index = det.files[0]
        return PickleSource([index.parent / s for s in _read_index(index)], config, trust_pickle)
    if layout == "fsdp":
        return FsdpSource(det.files, config, trust_pickle)
    raise AssertionError(f"unknown layout {det.layout}")
