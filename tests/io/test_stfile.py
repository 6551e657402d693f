"""Reading safetensors tensors converted to another dtype in pieces equals a plain read."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from opdlens.io import stfile


@pytest.mark.parametrize(
    "dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float64, torch.float8_e4m3fn]
)
def test_read_as_float32_in_pieces_equals_plain_read(tmp_path, monkeypatch, dtype) -> None:
    g = torch.Generator().manual_seed(0)
    tensors = {"w": torch.randn(37, 53, generator=g).to(dtype), "b": torch.randn(11).to(dtype),
               "s": torch.tensor(1.5).to(dtype)}  # fmt: skip
    path = tmp_path / "model.safetensors"
    save_file(tensors, path)
    monkeypatch.setattr(stfile, "PIECE", 64)  # many pieces, the last one partial
    f = stfile.SafetensorsFile(path)
    for key, t in tensors.items():
        got = f.read_as(key, torch.float32)
        assert got.dtype == torch.float32 and got.shape == t.shape
        assert torch.equal(got, t.float())
        # The numpy reads the torch-free write path uses: float32 values and stored bytes.
        values = f.read_float32(key)
        assert values.dtype == np.float32 and values.shape == tuple(t.shape)
        np.testing.assert_array_equal(values, t.float().numpy())
        raw = f.read_array(key)
        assert raw.shape == tuple(t.shape)
        assert raw.tobytes() == t.reshape(-1).view(torch.uint8).numpy().tobytes()
        # A flat span of it, as the span-wise arithmetic reads it.
        stop = min(t.numel(), 40)
        np.testing.assert_array_equal(f.read_float32(key, (3 % stop, stop)),
                                      t.float().reshape(-1)[3 % stop : stop].numpy())  # fmt: skip
        assert f.read_array(key, (0, stop)).tobytes() == raw.reshape(-1)[:stop].tobytes()
    with pytest.raises(ValueError, match=r"span \(5, 12\) lies outside tensor 'b' of 11"):
        f.read_float32("b", (5, 12))


def test_read_pieces_hashes_every_byte_once_and_names_a_cut_tensor(tmp_path, monkeypatch) -> None:
    import xxhash

    from opdlens.errors import CheckpointError

    w = torch.randn(37, 53, generator=torch.Generator().manual_seed(1)).to(torch.bfloat16)
    path = tmp_path / "model.safetensors"
    save_file({"w": w}, path)
    entry = stfile.SafetensorsFile(path).entries["w"]
    monkeypatch.setattr(stfile, "PIECE", 100)  # 50 bf16 values a piece, the last one partial
    seen, hashed = [], xxhash.xxh3_128()
    got = np.empty(w.numel(), np.uint16)
    for start, piece in stfile.read_pieces(
        path, entry.begin, w.numel(), np.uint16, key="w", hash_piece=hashed.update
    ):
        seen.append((start, piece.size))
        got[start : start + piece.size] = piece
    raw = w.reshape(-1).view(torch.uint16).numpy()
    assert seen == [(s, min(50, w.numel() - s)) for s in range(0, w.numel(), 50)]
    np.testing.assert_array_equal(got, raw)
    assert hashed.digest() == xxhash.xxh3_128(raw.tobytes()).digest()
    into = np.empty(w.numel(), np.uint16)  # read straight into a caller's array: no copy
    for start, piece in stfile.read_pieces(
        path, entry.begin, w.numel(), np.uint16, key="w", into=into
    ):
        assert np.shares_memory(piece, into[start:])
    np.testing.assert_array_equal(into, raw)
    with open(path, "r+b") as f:
        f.truncate(entry.end - 10)
    cut = stfile.read_pieces(path, entry.begin, w.numel(), np.uint16, key="w")
    with pytest.raises(CheckpointError, match=rf"{entry.end - 10} of {entry.end} bytes"):
        list(cut)
