"""compare reads each checkpoint's copy of a tensor once, and its masks still compare stored values."""

from __future__ import annotations

import zlib
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import checkpoints
import numpy as np
import pytest
import torch

import opdlens
from opdlens.run import Run


def update_of(seed: int) -> Callable[[str, torch.Tensor, int], torch.Tensor]:
    """W = W_0 + a change on ~20 % of the weights, and on another 20 % one of 1e-12 relative,
    which float64 stores but a float32 reading (and bf16, f32 storage) rounds away."""

    def update(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
        if step == 0 or not w0.is_floating_point():
            return w0.clone()
        g = torch.Generator().manual_seed(zlib.crc32(name.encode()) + seed)
        big = torch.rand(w0.shape, generator=g) < 0.2
        tiny = torch.rand(w0.shape, generator=g) < 0.2
        d = 0.05 * torch.randn(w0.shape, generator=g, dtype=torch.float64)
        w = w0.double() + big * d + tiny * 1e-12 * w0.double()
        return w.to(w0.dtype)

    return update


def count_reads(run: Run) -> Counter[tuple[int, str]]:
    """Count every read of a tensor's values from `run`'s checkpoints, by (step, name).

    Wraps the three ways opdlens gets at a tensor's stored data through a `Checkpoint`: its
    values (`tensor`, `array`) and its byte range (`byte_range`, which `read_weight` streams).
    """
    reads: Counter[tuple[int, str]] = Counter()
    cks = {id(ck): (step, ck) for step, ck in [(0, run.base), *run.checkpoints.items()]}
    for step, ck in cks.values():
        for method in ("tensor", "array", "byte_range"):

            def wrapped(name: str, *args, _inner=getattr(ck, method), _step=step, **kwargs):
                reads[(_step, name)] += 1
                return _inner(name, *args, **kwargs)

            setattr(ck, method, wrapped)
    return reads


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Callable[[torch.dtype], list[Path]]:
    """runs(dtype) → three runs (seeds 1–3) of tiny llama in `dtype`, each from its own base copy."""
    made: dict[torch.dtype, list[Path]] = {}

    def make(dtype: torch.dtype) -> list[Path]:
        if dtype not in made:
            made[dtype] = [
                checkpoints.write_hf_run(
                    tmp_path_factory.mktemp(f"{str(dtype)[6:]}-{seed}"),
                    "llama",
                    (0, 2),
                    dtype=dtype,
                    update=update_of(seed),
                    trainer_files=False,
                )  # fmt: skip
                for seed in (1, 2, 3)
            ]
        return made[dtype]

    return make


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float64], ids=str)
def test_each_checkpoint_is_read_once_per_tensor(runs: Callable, dtype: torch.dtype) -> None:
    a, b = (opdlens.open_run(p) for p in runs(dtype)[:2])
    reads_a, reads_b = count_reads(a), count_reads(b)
    df = opdlens.compare(a, b, ranks=(1,), scopes="tensor", workers=1)
    names = list(df["tensor"].unique())
    assert names == a.tensor_names
    for reads in (reads_a, reads_b):  # W_0 of each run's own base, and W_2: one read each
        assert reads == Counter({(s, n): 1 for n in names for s in (0, 2)})
    # The masks compare the stored values: float64's 1e-12 changes count, which a float32
    # reading would round away; Δ and cos agree with float64 by hand.
    w0, wa, wb = (checkpoints.st_state(p / f"checkpoint-{s}") for p, s in
                  ((runs(dtype)[0], 0), (runs(dtype)[0], 2), (runs(dtype)[1], 2)))  # fmt: skip
    for row in df.itertuples():
        f0, fa, fb = (t[row.tensor].double().numpy() for t in (w0, wa, wb))
        ma, mb = fa != f0, fb != f0
        assert (row.changed_a, row.changed_b) == (int(ma.sum()), int(mb.sum()))
        assert row.changed_both == int((ma & mb).sum())
        da, db = (fa - f0).ravel(), (fb - f0).ravel()
        cos = float(da @ db / (np.linalg.norm(da) * np.linalg.norm(db)))
        assert row.cos == pytest.approx(cos, abs=1e-5)
    if dtype == torch.float64:
        f32 = w0[names[-1]].float() != wa[names[-1]].float()
        assert df.iloc[-1]["changed_a"] > int(f32.sum())  # the stored values, not float32's
