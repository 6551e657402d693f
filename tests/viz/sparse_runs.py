"""Tiny bf16 runs from one base that each change a known subset of the weights (part shared)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from viz.runs import CONFIG, shapes

STEPS = (0, 2, 4)


def base_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {n: (torch.randn(s, generator=g) * 0.05).to(torch.bfloat16) for n, s in shapes().items()}


def write_sparse_run(root: Path, seed: int, shared: float = 0.1, own: float = 0.1) -> Path:
    """Each step moves the elements of a mask: `shared` of them the same in every run (seed 0's
    draw), `own` drawn per run; the moves are far above bf16 rounding (+0.01 · step)."""
    base = base_weights()
    shared_g = torch.Generator().manual_seed(1000)
    own_g = torch.Generator().manual_seed(2000 + seed)
    masks = {n: (torch.rand(w.shape, generator=shared_g) < shared)
             | (torch.rand(w.shape, generator=own_g) < own) for n, w in base.items()}  # fmt: skip
    for step in STEPS:
        d = root / f"checkpoint-{step}"
        d.mkdir(parents=True)
        state = {
            n: (w.float() + 0.01 * step * masks[n]).to(torch.bfloat16) for n, w in base.items()
        }
        save_file(state, str(d / "model.safetensors"), metadata={"format": "pt"})
        (d / "config.json").write_text(json.dumps(CONFIG))
    return root
