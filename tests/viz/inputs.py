"""The foresight rows and `opdlens ablate` outputs that figures and reports take, built for tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from safetensors.numpy import load_file

from opdlens import open_run
from opdlens.extrapolation.ablate import ablate


def mlp_energy(path: Path) -> float:
    """A scorer that depends on the weights only: Σ of the squared MLP weights."""
    total = 0.0
    for f in sorted(Path(path).glob("*.safetensors")):
        for name, w in load_file(str(f)).items():
            if ".mlp." in name:
                total += float((w.astype(np.float64) ** 2).sum())
    return total


def write_ablation(run_dir: Path, out: Path) -> Path:
    """`opdlens ablate RUN --step <last> --by block --ranks 1,2 --out OUT` with mlp_energy."""
    run = open_run(run_dir)
    ablate(run, run.steps[-1], mlp_energy, by="block", ranks=(1, 2), out=out)
    return out
