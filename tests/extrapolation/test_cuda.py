"""ablate's rank curve, surgery lowrank and online EffOPD on CUDA equal their float64 / CPU results.

Marked gpu: skipped where torch sees no CUDA device; `scripts/gpu_check.sh` runs them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from opdlens import open_run
from opdlens.extrapolation.ablate import ablate
from opdlens.extrapolation.callback import EffOPD
from opdlens.extrapolation.surgery import surgery_lowrank

from .test_ablate import distance_score, weights
from .test_callback import Toy
from .test_surgery import check_lowrank

pytestmark = pytest.mark.gpu


@pytest.mark.parametrize("keep_norm", [False, True])
def test_lowrank_on_cuda_matches_numpy_svd(random_run: Path, tmp_path: Path, keep_norm) -> None:
    path = surgery_lowrank(open_run(random_run), 5, 2, tmp_path / "l", keep_norm=keep_norm,
                           device="cuda")  # fmt: skip
    check_lowrank(path, random_run, keep_norm)


def test_rank_curve_on_cuda_equals_the_cpu(random_run: Path, tmp_path: Path) -> None:
    run = open_run(random_run)
    cpu = ablate(run, 5, distance_score, mode="drop", ranks=[1, 3], out=tmp_path / "a", keep=True)
    cuda = ablate(run, 5, distance_score, mode="drop", ranks=[1, 3], out=tmp_path / "b",
                  keep=True, device="cuda:0")  # fmt: skip
    np.testing.assert_allclose(cuda.rank_curve["energy_k"], cpu.rank_curve["energy_k"], rtol=1e-9)
    np.testing.assert_allclose(cuda.rank_curve["score"], cpu.rank_curve["score"], rtol=1e-6)
    for k in (1, 3):
        a, b = (
            weights(tmp_path / f"a/candidates/rank-{k}"),
            weights(tmp_path / f"b/candidates/rank-{k}"),
        )
        for name in a:
            np.testing.assert_allclose(b[name], a[name], rtol=0, atol=1e-6 * np.abs(a[name]).max())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_effopd_on_a_cuda_model_decides_as_on_the_cpu(dtype: torch.dtype) -> None:
    torch.manual_seed(0)
    start = Toy(dtype)
    target = {n: p.detach().float() + 0.33 for n, p in start.named_parameters()}

    def score(model: torch.nn.Module) -> float:  # closer to `target` is better
        return -sum(
            float((p.float().cpu() - target[n]).square().sum()) for n, p in model.named_parameters()
        )

    results = []
    for device in ("cpu", "cuda"):
        model = Toy(dtype)
        model.load_state_dict(start.state_dict())
        model.to(device)
        cb = EffOPD()
        cb.start(model)
        with torch.no_grad():
            for p in model.parameters():
                p.add_(0.05)  # one "training step" toward the target
        record = cb.after_step(model, 1, score)
        results.append((record, {n: p.detach().float().cpu() for n, p in model.named_parameters()}))
    (rc, wc), (rg, wg) = results
    assert rg["accepted"] == rc["accepted"] >= 1 and rg["alphas"] == rc["alphas"]
    np.testing.assert_allclose(rg["candidate_scores"], rc["candidate_scores"], rtol=1e-5)
    for name in wc:
        torch.testing.assert_close(wg[name], wc[name], rtol=1e-5, atol=1e-6)
