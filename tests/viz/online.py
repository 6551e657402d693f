"""A real EffOPD history on a tiny Llama: the candidates CSV and the demo's online_effopd.json."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch
from checkpoints import tiny_model

from opdlens.demo.runs import OnlineComparison
from opdlens.extrapolation.callback import EffOPD, write_candidates_csv


def effopd_history(steps: int = 4) -> EffOPD:
    """EffOPD deciding at steps 1, 2, 4 of a drift toward a target (score: −distance to it)."""
    torch.manual_seed(0)
    model = tiny_model("llama", seed=0)
    params = dict(model.named_parameters())
    target = {n: p.detach() + 0.05 * torch.randn_like(p) for n, p in params.items()}

    def score(m: torch.nn.Module) -> float:
        ps = dict(m.named_parameters())
        return -float(sum(((ps[n] - target[n]) ** 2).sum() for n in ps))

    cb = EffOPD(max_candidates=3)
    cb.start(model)
    for step in range(1, steps + 1):
        with torch.no_grad():
            for n, p in params.items():
                p.add_(0.1 * (target[n] - p))
        cb.after_step(model, step, score)
    return cb


def write_candidates(path: Path) -> list[dict[str, Any]]:
    """EffOPDCallback's CSV of a real history at `path`; its rows."""
    rows = effopd_history().candidate_rows()
    write_candidates_csv(rows, path)
    return rows


def write_online_json(path: Path) -> dict[str, Any]:
    """The demo's online_effopd.json, as runs.generate_runs writes it, for a real history."""
    plain = [[0, 0.1], [5, 0.2], [10, 0.3]]
    eff = [[0, 0.1], [5, 0.3], [10, 0.32]]
    comparison = OnlineComparison(0.27, 10, 5, 0.3, 0.32, effopd_history().history)
    record = {**asdict(comparison), "target_fraction": 0.9, "curves": {"plain": plain,
              "effopd": eff}}  # fmt: skip
    path.write_text(json.dumps(record, indent=2) + "\n")
    return record
