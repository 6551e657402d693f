"""Planning a safetensors checkpoint: shard files like an input's or by size, headers, slots."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save

from opdlens.io.plan import (
    SINGLE_FILE,
    TensorSpec,
    header_layout,
    lay_out,
    plan_like,
    split_by_size,
)


def test_plan_like_renames_bin_shards() -> None:
    specs = [TensorSpec(n, (2,), torch.float32) for n in ("a", "b", "c")]
    weight_map = {
        "a": "pytorch_model-00001-of-00002.bin",
        "b": "pytorch_model-00002-of-00002.bin",
        "c": "pytorch_model-00001-of-00002.bin",
    }
    plan = plan_like(specs, weight_map)
    assert {k: [s.name for s in v] for k, v in plan.items()} == {
        "model-00001-of-00002.safetensors": ["a", "c"],
        "model-00002-of-00002.safetensors": ["b"],
    }
    assert list(plan_like(specs, None)) == ["model.safetensors"]
    assert list(plan_like(specs[:1], {"a": "pytorch_model.bin"})) == ["model.safetensors"]
    with pytest.raises(ValueError, match="Tensor 'c' is not in the weight map"):
        plan_like(specs, {"a": "x.safetensors", "b": "x.safetensors"})


def test_headers_are_the_bytes_save_file_writes() -> None:
    tensors = {"b.weight": torch.ones(3, 5, dtype=torch.bfloat16), "a.weight": torch.ones(2, 2),
               "ids": torch.arange(3), "mask": torch.ones(7, dtype=torch.bool), "s": torch.tensor(2.5),
               "empty": torch.zeros(0, 4), "é": torch.ones(1, dtype=torch.float16)}  # fmt: skip
    metadata = {"format": "pt"}  # one key: safetensors orders several as a hash map does
    specs = [TensorSpec(n, tuple(t.shape), t.dtype) for n, t in tensors.items()]
    header, offsets = header_layout(specs, metadata)
    reference = save(tensors, metadata=metadata)  # safetensors' own bytes
    assert reference[: len(header)] == header and len(header) % 8 == 0
    data = reference[len(header) :]
    for spec, begin, end in offsets:
        raw = tensors[spec.name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        assert data[begin:end] == raw, spec.name
    assert offsets[-1][2] == len(data)


def test_split_by_size_fills_shards_in_order_up_to_the_cap() -> None:
    specs = [TensorSpec(f"w.{i}", (8, 8), torch.float32) for i in range(5)]  # 256 bytes each
    assert [s.nbytes for s in specs] == [256] * 5
    plan = split_by_size(specs, 600)
    assert {f: [s.name for s in v] for f, v in plan.items()} == {
        "model-00001-of-00003.safetensors": ["w.0", "w.1"],
        "model-00002-of-00003.safetensors": ["w.2", "w.3"],
        "model-00003-of-00003.safetensors": ["w.4"],
    }
    assert list(split_by_size(specs, 100)) == [
        f"model-0000{i}-of-00005.safetensors" for i in range(1, 6)
    ]
    assert split_by_size(specs, None) == split_by_size(specs, 10**9) == {SINGLE_FILE: specs}
    with pytest.raises(ValueError, match=r"'max_shard_bytes' .* must be positive. Got 0 instead"):
        split_by_size(specs, 0)


def test_lay_out_gives_absolute_slots_and_file_sizes() -> None:
    a, b = TensorSpec("a", (4,), "F32"), TensorSpec("b", (2, 2), "BF16")
    slots, headers, sizes = lay_out({"x.safetensors": [b, a]}, {"format": "pt"})
    start = len(headers["x.safetensors"])
    assert (slots["a"].begin, slots["a"].end) == (start, start + 16)  # wider dtypes first
    assert (slots["b"].begin, slots["b"].end) == (start + 16, start + 24)
    assert sizes == {"x.safetensors": start + 24}
    for bad in ["sub/x.safetensors", "x.bin"]:
        with pytest.raises(ValueError, match=f"Shard name '{bad}' .* must be a bare file name"):
            lay_out({bad: [a]}, {})
    with pytest.raises(ValueError, match="'__metadata__' appears twice .* or is the reserved name"):
        lay_out({"x.safetensors": [TensorSpec("__metadata__", (1,), "F32")]}, {})
