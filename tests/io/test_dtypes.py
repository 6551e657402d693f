"""numpy conversions of stored dtypes agree bit for bit with torch's."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from opdlens.io import dtypes

SPECIAL = [0.0, -0.0, 1.0, -1.5, 1e-40, -1e-45, 3.3895314e38, 3.4e38, float("inf"), float("-inf")]


def _floats(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    scales = torch.logspace(-40, 38, n, dtype=torch.float64).float()
    random = torch.randn(n, generator=g) * scales
    # Values exactly halfway between two bf16 numbers, both parities: ties go to even.
    ties = (torch.arange(-64, 64, dtype=torch.int32) * 65536 + 32768 + (1 << 30)).view(
        torch.float32
    )
    return torch.cat([random, torch.tensor(SPECIAL), ties])


@pytest.mark.parametrize("name", ["BF16", "F16", "F64", "F32"])
def test_encode_rounds_like_torch(name: str) -> None:
    x = _floats(20_000, 0)
    want = x.to(dtypes.to_torch(name)).reshape(-1).view(torch.uint8).numpy()
    got = dtypes.encode_float32(x.numpy(), name)
    assert got.dtype == dtypes.storage(name)
    np.testing.assert_array_equal(got.view(np.uint8), want)


def test_encode_bf16_keeps_nan_a_nan() -> None:
    payloads = np.array([0x7FC00000, 0x7F800001, 0xFFFFFFFF, 0x7FFFFFFF], dtype=np.uint32)
    got = dtypes.encode_float32(payloads.view(np.float32), "BF16")
    back = torch.from_numpy(got.view(np.int16)).view(torch.bfloat16).float()
    assert torch.isnan(back).all()


@pytest.mark.parametrize("name", ["BF16", "F16", "F64"])
def test_decode_is_exact(name: str) -> None:
    t = _floats(5000, 1).to(dtypes.to_torch(name))
    raw = t.view(torch.uint8).numpy().view(dtypes.storage(name))
    out = np.empty(raw.shape, np.float32)
    dtypes.decode_float32(raw, name, out)
    np.testing.assert_array_equal(out, t.float().numpy())


def test_torch_names_round_trip() -> None:
    for name in ("BOOL", "U8", "I8", "F8_E5M2", "F8_E4M3", "I16", "U16", "F16", "BF16", "I32",
                 "U32", "F32", "F64", "I64", "U64"):  # fmt: skip
        assert dtypes.from_torch(dtypes.to_torch(name)) == name
        assert dtypes.itemsize(name) == dtypes.to_torch(name).itemsize
    with pytest.raises(ValueError, match="cannot store dtype torch.complex64"):
        dtypes.from_torch(torch.complex64)


def test_bfloat16_overflow_is_detected() -> None:
    fits = np.array([3.38e38, -3.38e38, 1.0], dtype=np.float32)
    past = np.array([1.0, -3.4e38], dtype=np.float32)  # finite in float32, past bfloat16's max
    assert not dtypes.overflowed(dtypes.encode_float32(fits, "BF16", finite=True), "BF16")
    assert dtypes.overflowed(dtypes.encode_float32(past, "BF16", finite=True), "BF16")
    assert dtypes.overflowed(np.array([np.inf], dtype=np.float16), "F16")
