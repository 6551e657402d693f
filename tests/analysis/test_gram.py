"""gram_tensor: each tensor's Gram matrix of updates against numpy float64, by row blocks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.numpy import load_file

import opdlens
from opdlens.analysis.gram import gram_tensor

MLP = "model.layers.1.mlp.down_proj.weight"


def _numpy_gram(run: opdlens.Run, name: str) -> np.ndarray:
    """G over [0, *steps] from the safetensors files read with safetensors.numpy, in float64."""
    steps = [0, *run.steps]
    ws = []
    for s in steps:
        ck = run.checkpoint(s)
        (file,) = ck.files
        ws.append(load_file(file)[name].astype(np.float64).reshape(-1))
    d = np.stack([w - ws[0] for w in ws])
    return d @ d.T


@pytest.mark.parametrize("budget", [1 << 22, 2048])  # one row block; several (span 1024)
def test_gram_matches_numpy_float64(planted_runs, budget: int) -> None:
    run = opdlens.open_run(planted_runs("llama-f32"))
    result = gram_tensor(run, MLP, budget=budget)
    assert result.gram is not None
    np.testing.assert_allclose(result.gram, _numpy_gram(run, MLP), rtol=1e-12, atol=1e-12)
    assert result.gram[0].tolist() == [0.0] * len(result.gram)  # the base's Δ is 0
    assert result.warnings == []


def test_gram_of_pickled_checkpoints_reads_whole_tensors_per_block(hf_run) -> None:
    """.bin files have no byte ranges: each row block re-reads the tensor, and says so."""
    root = hf_run("llama", "bin", dtype=torch.float32, trainer_files=False)
    run = opdlens.open_run(root)
    name = "model.layers.0.mlp.up_proj.weight"
    result = gram_tensor(run, name, budget=2048)
    ws = [torch.load(run.checkpoint(s).files[0])[name].double().reshape(-1)
          for s in [0, *run.steps]]  # fmt: skip
    d = torch.stack([w - ws[0] for w in ws]).numpy()
    np.testing.assert_allclose(result.gram, d @ d.T, rtol=1e-12, atol=1e-12)
    assert any("read it 2 times, once per row block" in w for w in result.warnings)
