"""One update Δ: reading weights (values and digests), and its algebra dense or as factors."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from opdlens.analysis.update import Update, read_stored, read_weight
from opdlens.checkpoint import open_checkpoint
from opdlens.errors import CheckpointError

DTYPES = [torch.float32, torch.bfloat16, torch.float16, torch.float64, torch.float8_e4m3fn]


def _checkpoint(tmp_path: Path, tensors: dict[str, torch.Tensor], name: str = "checkpoint-1"):
    d = tmp_path / name
    d.mkdir()
    save_file(tensors, d / "model.safetensors", metadata={"format": "pt"})
    return open_checkpoint(d, 1, trust_pickle=False)


def test_read_weight_is_exact_float32_and_digests_the_stored_bytes(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    stored = {f"w.{i}": (torch.randn(33, 7, generator=g) * 3).to(d) for i, d in enumerate(DTYPES)}
    stored["ids"] = torch.arange(6).reshape(2, 3)  # not a float: read through the tensor
    ck = _checkpoint(tmp_path, stored)
    digests = set()
    for name, t in stored.items():
        got, digest = read_weight(ck, name)
        assert got.dtype == torch.float32 and torch.equal(got, t.to(torch.float32)), name
        raw, same = read_stored(ck, name)
        assert raw.dtype == t.dtype and same == digest, name  # one key whichever way it is read
        digests.add(digest)
    assert len(digests) == len(stored)
    bf16 = stored["w.1"]
    other = _checkpoint(tmp_path, {"w.1": bf16.view(torch.float16)}, "checkpoint-2")
    assert read_weight(other, "w.1")[1] != read_weight(ck, "w.1")[1]  # same bytes, other dtype


def test_a_weight_cut_short_names_the_file(tmp_path: Path) -> None:
    ck = _checkpoint(tmp_path, {"w": torch.ones(64, 64)})
    path = tmp_path / "checkpoint-1" / "model.safetensors"
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size - 100)
    with pytest.raises(CheckpointError, match=r"model\.safetensors: tensor 'w' is cut short"):
        read_weight(ck, "w")


def _factored(seed: int, rows: int = 12, cols: int = 9, r: int = 3) -> Update:
    g = torch.Generator().manual_seed(seed)
    return Update(b=torch.randn(rows, r, generator=g), a=torch.randn(r, cols, generator=g))


def test_factored_algebra_equals_the_dense_one() -> None:
    f1, f2 = _factored(1), _factored(2)
    d1, d2 = (Update(dense=f.to_dense()) for f in (f1, f2))
    assert f1.shape == d1.shape == (12, 9) and f1.is_matrix
    want = (d1.dense.double() * d2.dense.double()).sum().item()
    for x, y in [(f1, f2), (d1, d2), (f1, d2), (d1, f2)]:
        assert x.inner(y) == pytest.approx(want, rel=1e-6)
    assert f1.frobenius_sq() == pytest.approx(d1.frobenius_sq(), rel=1e-6)
    diff = f1.minus(f2)
    assert diff.dense is None and diff.b.shape == (12, 6)  # stays factored: rank ≤ 3 + 3
    torch.testing.assert_close(diff.to_dense(), d1.dense - d2.dense, rtol=1e-5, atol=1e-5)
    rows = torch.tensor([0, 5, 11])
    torch.testing.assert_close(f1.rows(rows).to_dense(), d1.dense[rows], rtol=1e-5, atol=1e-5)
    s64 = torch.linalg.svdvals(d1.dense.double())
    top = f1.top_k(2)
    torch.testing.assert_close(top.S[:3], s64[:3], rtol=1e-6, atol=1e-9)


@pytest.mark.parametrize("scale", [1e30, 1e-30])
def test_extreme_norms_keep_their_spectrum(scale: float) -> None:
    g = torch.Generator().manual_seed(3)
    base = torch.randn(20, 16, generator=g, dtype=torch.float64)
    dense = Update(dense=(base * scale).float())
    want = torch.linalg.svdvals(base) * scale
    total = dense.frobenius_sq()
    assert total == pytest.approx(float((base**2).sum()) * scale**2, rel=1e-5)
    torch.testing.assert_close(dense.top_k(3, total_sq=total).S[:3], want[:3], rtol=1e-4, atol=0)
    torch.testing.assert_close(dense.spectrum(total).double(), want, rtol=1e-4, atol=0)
