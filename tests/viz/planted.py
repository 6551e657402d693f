"""A planted metrics frame for the plot tests: two runs, three layers, known shapes."""

from __future__ import annotations

import numpy as np
import pandas as pd

RUNS = ("opd", "rl")
STEPS = (1, 2, 4, 8)
KS = (1, 4, 16)
LAYER_KINDS = {
    "q_proj": ("attn", 64, 64),
    "k_proj": ("attn", 16, 64),
    "v_proj": ("attn", 16, 64),
    "o_proj": ("attn", 64, 64),
    "gate_proj": ("mlp", 128, 64),
    "up_proj": ("mlp", 128, 64),
    "down_proj": ("mlp", 64, 128),
    "norm": ("norm", 64, 1),
}
OTHER = {
    "model.embed_tokens.weight": ("embed", "embed_tokens", 256, 64),
    "model.norm.weight": ("norm", "norm", 64, 1),
    "lm_head.weight": ("head", "lm_head", 256, 64),
}


def tensor_rows() -> list[dict]:
    rows = []
    for layer in range(3):
        for kind, (block, r, c) in LAYER_KINDS.items():
            name = f"model.layers.{layer}.{kind}.weight"
            rows.append(dict(tensor=name, layer=layer, block=block, kind=kind, rows=r, cols=c))
    for name, (block, kind, r, c) in OTHER.items():
        rows.append(dict(tensor=name, layer=pd.NA, block=block, kind=kind, rows=r, cols=c))
    return rows


def kinds_order(kinds: set[str]) -> list[str]:
    order = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj", "norm"]
    return [k for k in order if k in kinds]


def metrics_frame() -> pd.DataFrame:
    """Seeded metrics rows for RUNS × STEPS × tensors, with update_share filled in."""
    rng = np.random.default_rng(0)
    records = []
    for run in RUNS:
        for step in STEPS:
            for base in tensor_rows():
                # 1-D tensors (norms) have cols = 1 and no spectrum metrics.
                flat = base["cols"] == 1
                rec = dict(base, run=run, step=step, expert=pd.NA)
                rec["numel"] = rec["rows"] if flat else rec["rows"] * rec["cols"]
                rec["update_norm"] = rng.uniform(0.1, 2.0) * step**0.5
                rec["base_norm"] = rng.uniform(5, 10)
                rec["rel_update_norm"] = rec["update_norm"] / rec["base_norm"]
                energies = np.sort(rng.uniform(0.2, 1.0, len(KS)))
                for k, e in zip(KS, energies, strict=True):
                    rec[f"energy_k{k}"] = np.nan if flat else e
                    rec[f"align_left_k{k}"] = np.nan if flat else rng.uniform(0, 1)
                    rec[f"align_right_k{k}"] = np.nan if flat else rng.uniform(0, 1)
                    # K=16 is ill-defined everywhere; K=1 never; K=4 at random.
                    gap = {1: 0.5, 4: rng.choice([1e-3, 0.3]), 16: 1e-4}[k]
                    rec[f"gap_k{k}"] = np.nan if flat else gap
                rec["stable_rank"] = np.nan if flat else rng.uniform(1, 5)
                rec["cos_to_final"] = rng.uniform(0, 1)
                records.append(rec)
    df = pd.DataFrame.from_records(records)
    sq = df["update_norm"] ** 2
    df["update_share"] = sq / sq.groupby([df["run"], df["step"]]).transform("sum")
    df["step"] = df["step"].astype("int64")
    df["layer"] = df["layer"].astype("Int64")
    df["expert"] = df["expert"].astype("Int64")
    for col in ("rows", "cols", "numel"):
        df[col] = df[col].astype("int64")
    return df
