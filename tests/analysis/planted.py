"""Planted updates, tiny runs and an independent float64 reference for the analysis tests."""

from __future__ import annotations

import json
import math
import re
import zlib
from collections.abc import Mapping, Sequence
from pathlib import Path

import checkpoints
import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

RANKS = (1, 3, 8)  # 3 = the planted rank (well separated); 8 = inside the noise floor
STEPS = (0, 1, 2, 4)
GAP_FLAG = 1e-2  # design.md: below this gap the top-K subspace is not well defined


# -- planted updates -------------------------------------------------------------------------


def _gen(name: str, salt: int) -> torch.Generator:
    return torch.Generator().manual_seed(zlib.crc32(name.encode()) * 31 + salt)


def planted(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
    """W_step = W_0 + rank-3 update whose left factor rotates with the step, plus fresh noise."""
    if not w0.is_floating_point() or step == 0:
        return w0.clone()
    g = _gen(name, 0)
    shape = tuple(w0.shape)
    if len(shape) == 1:
        d = 0.01 * step * torch.randn(shape, generator=g)
    else:
        lead, (rows, cols) = shape[:-2], shape[-2:]
        a = torch.randn((*lead, rows, 3), generator=g)
        b = torch.randn((*lead, rows, 3), generator=g)
        c = torch.randn((*lead, cols, 3), generator=g)
        left = a + 0.25 * step * b  # the dominant left subspace turns as training goes on
        d = (left * torch.tensor([3.0, 1.5, 0.7])) @ c.transpose(-1, -2)
        d = d / d.pow(2).mean().sqrt() * 0.01 * step
    noise = 5e-4 * torch.randn(shape, generator=_gen(name, step))
    return (w0.float() + d + noise).to(w0.dtype)


SPIKES = (1.6, 1.0, 0.6)  # well above the bulk edge of a 0.02-std init (about 0.3 here)


def spiked(name: str, w0: torch.Tensor) -> torch.Tensor:
    """W_0 with three planted principal directions per matrix, like a pretrained weight's."""
    if not w0.is_floating_point() or w0.dim() < 2:
        return w0.clone()
    g = torch.Generator().manual_seed(zlib.crc32(name.encode()))
    *lead, rows, cols = w0.shape
    a = torch.linalg.qr(torch.randn((*lead, rows, 3), generator=g, dtype=torch.float64))[0]
    b = torch.linalg.qr(torch.randn((*lead, cols, 3), generator=g, dtype=torch.float64))[0]
    spikes = (a * torch.tensor(SPIKES, dtype=torch.float64)) @ b.transpose(-1, -2)
    return (w0.double() + spikes).to(w0.dtype)


def spiked_update(name: str, w0: torch.Tensor, step: int) -> torch.Tensor:
    """planted's update of a spiked base (`spiked`), for the base-geometry tests."""
    return planted(name, spiked(name, w0), step)


def write_spiked_moe(root: Path, steps: Sequence[int]) -> Path:
    """A qwen3_moe run (stacked (experts, out, in) tensors) of a spiked base, `spiked_update`."""
    model = checkpoints.tiny_model("qwen3_moe")
    base = {k: v.detach().clone() for k, v in model.state_dict().items()}
    states = {s: {n: spiked_update(n, w, s) for n, w in base.items()} for s in steps}
    return write_state_run(root, states, checkpoints.tiny_config("qwen3_moe").to_dict())


SPECTRA = ("rank4+bulk", "powerlaw+bulk")


def planted_spectrum(
    m: int, n: int, kind: str, bulk_share: float, seed: int = 0, *, scale: float = 1.0
) -> torch.Tensor:
    """A training-like update with a known bulk: signal on fixed subspaces plus Gaussian noise.

    kind "rank4+bulk": σ ∝ (1, .75, .5, .25); "powerlaw+bulk": 64 directions with σ_i ∝ i^-1.5.
    The noise holds `bulk_share` of ‖Δ‖_F² (in expectation); `scale` multiplies the signal only,
    and `seed` draws the noise, so two seeds with scales 1 and 1.1 look like consecutive steps.
    Shape: (m, n) float32.
    """
    g = torch.Generator().manual_seed(zlib.crc32(f"{m}x{n}:{kind}".encode()))
    r = {"rank4+bulk": 4, "powerlaw+bulk": 64}[kind]
    r = min(r, m, n)
    sig = torch.tensor([1.0, 0.75, 0.5, 0.25] if r == 4 else [(i + 1) ** -1.5 for i in range(r)])
    u = torch.linalg.qr(torch.randn(m, r, generator=g, dtype=torch.float64))[0]
    v = torch.linalg.qr(torch.randn(n, r, generator=g, dtype=torch.float64))[0]
    signal = (u * sig.double()) @ v.T  # (m, n), ‖signal‖_F = ‖sig‖
    noise_sq = float((sig.double() ** 2).sum()) * bulk_share / (1.0 - bulk_share)
    noise = torch.randn(m, n, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return (scale * signal + noise * math.sqrt(noise_sq / (m * n))).float()


def write_state_run(
    root: Path, states: Mapping[int, Mapping[str, torch.Tensor]], config: Mapping[str, object]
) -> Path:
    """root/checkpoint-<step>/model.safetensors (+ config.json) for each step's state dict."""
    for step, state in states.items():
        checkpoints.write_state_dir(root / f"checkpoint-{step}", state, config=config)
    return root


def small_states(steps: Sequence[int] = STEPS, seed: int = 0) -> dict[int, dict[str, torch.Tensor]]:
    """A hand-made two-layer state dict per step (fast to write, no transformers)."""
    g = torch.Generator().manual_seed(seed)
    base = {
        "model.embed_tokens.weight": 0.02 * torch.randn(40, 16, generator=g),
        "model.norm.weight": 1 + 0.02 * torch.randn(16, generator=g),
        "lm_head.weight": 0.02 * torch.randn(40, 16, generator=g),
    }
    for layer in range(2):
        p = f"model.layers.{layer}."
        base[p + "self_attn.q_proj.weight"] = 0.02 * torch.randn(16, 16, generator=g)
        base[p + "self_attn.o_proj.weight"] = 0.02 * torch.randn(16, 16, generator=g)
        base[p + "mlp.down_proj.weight"] = 0.02 * torch.randn(16, 24, generator=g)
        base[p + "input_layernorm.weight"] = 1 + 0.02 * torch.randn(16, generator=g)
    return {s: {n: planted(n, w, s) for n, w in base.items()} for s in steps}


SMALL_CONFIG = {"model_type": "llama", "hidden_size": 16, "num_attention_heads": 2}


# -- independent float64 reference -----------------------------------------------------------


def load_states(root: Path, base: Path | None = None) -> dict[int, dict[str, torch.Tensor]]:
    """Every step's weights in float64, read with safetensors (LoRA: W_0 + scale·B@A)."""
    out: dict[int, dict[str, torch.Tensor]] = {}
    for d in sorted(root.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1])):
        step = int(d.name.split("-")[1])
        if (d / "adapter_model.safetensors").is_file():
            assert base is not None
            w = {n: t.double() for n, t in load_file(base / "model.safetensors").items()}
            cfg = json.loads((d / "adapter_config.json").read_text())
            scale = cfg["lora_alpha"] / cfg["r"]
            ad = load_file(d / "adapter_model.safetensors")
            for key, a in ad.items():
                if ".lora_A." not in key:
                    continue
                name = key.replace("base_model.model.", "", 1).replace(".lora_A", "")
                b = ad[key.replace("lora_A", "lora_B")]
                w[name] = w[name] + scale * (b.double() @ a.double())
            out[step] = w
        else:
            out[step] = {n: t.double() for n, t in checkpoints.st_state(d).items()}
    if base is not None:
        out[0] = {n: t.double() for n, t in load_file(base / "model.safetensors").items()}
    return dict(sorted(out.items()))


def ref_slices(name: str, x: torch.Tensor, config: Mapping[str, object]) -> list[tuple]:
    """(expert, part, matrix) pieces of one tensor, cut by hand from the config."""
    if name.endswith("experts.gate_up_proj"):
        half = x.shape[1] // 2
        return [
            p for e in range(x.shape[0]) for p in ((e, "gate", x[e, :half]), (e, "up", x[e, half:]))
        ]
    if x.dim() == 3:
        return [(e, None, x[e]) for e in range(x.shape[0])]
    if name.endswith("qkv_proj.weight"):
        hd = int(config["hidden_size"]) // int(config["num_attention_heads"])
        nq, nkv = int(config["num_attention_heads"]) * hd, int(config["num_key_value_heads"]) * hd
        return [(None, "q", x[:nq]), (None, "k", x[nq : nq + nkv]), (None, "v", x[nq + nkv :])]
    if name.endswith("gate_up_proj.weight"):
        half = x.shape[0] // 2
        return [(None, "gate", x[:half]), (None, "up", x[half:])]
    return [(None, None, x)]


def _svd(d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    u, s, vh = torch.linalg.svd(d, full_matrices=False)
    return u, s, vh.T


def reference(
    states: Mapping[int, Mapping[str, torch.Tensor]],
    config: Mapping[str, object],
    ranks: Sequence[int] = RANKS,
    *,
    final: int | None = None,
    consecutive: bool = False,
    names: Sequence[str] | None = None,
) -> pd.DataFrame:
    """design.md's metrics from full float64 SVDs, one row per (update, step, tensor, slice)."""
    steps = [s for s in states if s != 0]
    final = steps[-1] if final is None else final
    w0 = states[0]
    rows = []
    for name in names or list(w0):
        pieces0 = ref_slices(name, w0[name], config)
        dT = {(e, p): (m, _svd(m) if m.dim() == 2 and m.norm() > 0 else None)
              for e, p, m in ref_slices(name, states[final][name] - w0[name], config)}  # fmt: skip
        for step in steps:
            kinds = [("cumulative", states[step][name] - w0[name])]
            if consecutive:
                prev = max([s for s in states if s < step])
                kinds.append(("consecutive", states[step][name] - states[prev][name]))
            for update, delta in kinds:
                for (e, p, d), (_, _, b) in zip(
                    ref_slices(name, delta, config), pieces0, strict=True
                ):
                    rows.append(_ref_row(update, step, name, e, p, d, b, dT[(e, p)], ranks))
    df = pd.DataFrame(rows)
    sq = df["update_norm"] ** 2
    df["update_share"] = sq / sq.groupby([df["span"], df["step"]]).transform("sum")
    return df


def _next(s: torch.Tensor, k: int) -> float:
    return float(s[k]) if s.shape[0] > k else 0.0


def _ref_row(update, step, name, expert, part, d, base, final, ranks) -> dict[str, object]:
    d_final, svd_final = final
    norm, bnorm = float(d.norm()), float(base.norm())
    row = {"span": update, "step": step, "tensor": name, "expert": expert, "part": part,
           "update_norm": norm, "base_norm": bnorm,
           "rel_update_norm": norm / bnorm if bnorm else math.inf}  # fmt: skip
    fn = float(d_final.norm())
    row["cos_to_final"] = float((d * d_final).sum()) / (norm * fn) if norm and fn else math.nan
    if d.dim() != 2 or norm == 0:
        return row
    u, s, v = _svd(d)
    total = norm**2
    row["stable_rank"] = total / float(s[0]) ** 2
    p = s / s.sum()
    p = p[p > 0]
    row["effective_rank"] = math.exp(-float((p * p.log()).sum()))
    for k in ranks:
        if k > min(d.shape):  # design.md: σ_i = 0 beyond min(rows, cols)
            row[f"energy_k{k}"], row[f"gap_k{k}"] = 1.0, 0.0
            continue
        row[f"energy_k{k}"] = float((s[:k] ** 2).sum()) / total
        row[f"gap_k{k}"] = (float(s[k - 1]) - _next(s, k)) / float(s[0])
        if svd_final is None:
            continue
        uT, sT, vT = svd_final
        row[f"gapT_k{k}"] = (float(sT[k - 1]) - _next(sT, k)) / float(sT[0])
        row[f"align_left_k{k}"] = float(((u[:, :k].T @ uT[:, :k]) ** 2).sum()) / k
        row[f"align_right_k{k}"] = float(((v[:, :k].T @ vT[:, :k]) ** 2).sum()) / k
    return row


MERGE_KEYS = ["span", "step", "tensor", "expert", "part"]


def merged(df: pd.DataFrame, ref: pd.DataFrame, how: str, indicator: bool = False) -> pd.DataFrame:
    """`df` beside `ref` (suffix _ref) on MERGE_KEYS, experts as floats and missing parts None."""
    got, r = df.copy(), ref.copy()
    for x in (got, r):
        x["expert"] = x["expert"].astype("float64")
        x["part"] = x["part"].astype(object).where(x["part"].notna(), None)
    return got.merge(r, on=MERGE_KEYS, how=how, suffixes=("", "_ref"), indicator=indicator)


def compare(
    df: pd.DataFrame, ref: pd.DataFrame, ranks: Sequence[int] = RANKS, final: int | None = None
) -> dict[str, int]:
    """Check every metric column of ``df`` against ``ref``; returns how many checks each ran."""
    keys = MERGE_KEYS
    m = merged(df, ref, how="outer", indicator=True)
    assert (m["_merge"] == "both").all(), m.loc[m["_merge"] != "both", keys + ["_merge"]]
    counts = {"rows": len(m), "aligned": 0, "flagged": 0}
    final = m.loc[m["span"] == "cumulative", "step"].max() if final is None else final
    slice_keys = ["tensor", "expert", "part"]
    at_final = m.loc[(m["span"] == "cumulative") & (m["step"] == final)]
    for k in ranks:
        # Merged on columns: an index level that is all NaN (no experts) breaks pandas < 3.
        gaps = at_final[[*slice_keys, f"gap_k{k}"]].rename(columns={f"gap_k{k}": f"final_gap_k{k}"})
        m = m.merge(gaps, on=slice_keys, how="left")

    def close(col: str, rel: float = 0.0, abs_: float = 0.0) -> None:
        if col + "_ref" not in m.columns:
            return  # not in this reference
        a, b = m[col].astype("float64"), m[col + "_ref"].astype("float64")
        both = b.notna()
        assert (a[~both].isna()).all(), f"{col}: values where the reference has none"
        bad = ~((a[both] - b[both]).abs() <= abs_ + rel * b[both].abs())
        assert not bad.any(), (col, m.loc[both][bad][keys + [col, col + "_ref"]].head())

    for col in ("update_norm", "base_norm", "rel_update_norm"):
        close(col, rel=1e-5)
    close("update_share", abs_=1e-6)
    close("cos_to_final", abs_=1e-5)
    close("stable_rank", rel=1e-3)
    if "effective_rank_ref" in m.columns:
        close("effective_rank", rel=1e-3)
    for k in ranks:
        close(f"energy_k{k}", abs_=1e-3)
        close(f"gap_k{k}", abs_=1e-3)
        for side in ("left", "right"):
            col = f"align_{side}_k{k}"
            a, b = m[col], m[col + "_ref"]
            assert a[b.isna()].isna().all()
            defined = b.notna()
            sharp = defined & (m[f"gap_k{k}_ref"] >= GAP_FLAG) & (m[f"gapT_k{k}"] >= GAP_FLAG)
            err = (a - b).abs()
            assert (err[sharp] <= 1e-2).all(), m.loc[
                sharp & (err > 1e-2), keys + [col, col + "_ref"]
            ]
            # Near-ties: the value may differ, but the rows must say so through a small gap_k
            # (at step t, or in the final step's row that the alignment is taken against).
            loose = defined & ~sharp & (err > 1e-2)
            flagged = (m[f"gap_k{k}"] < GAP_FLAG) | (m[f"final_gap_k{k}"] < GAP_FLAG)
            assert flagged[loose].all(), m.loc[loose & ~flagged, keys + [col, col + "_ref"]]
            counts["aligned"] += int(sharp.sum())
            counts["flagged"] += int((defined & ~sharp).sum())
    return counts


# -- --base-geometry's reference ------------------------------------------------------------

_EXPERT = re.compile(r"\.experts\.(\d+)\.")


def _geometry_columns(k: int) -> list[str]:
    sides = [f"principal_{m}_{s}_k{k}" for m in ("energy", "rotation") for s in ("left", "right")]
    return [*sides, f"spectral_drift_k{k}", f"spectral_drift_mean_k{k}", f"base_gap_k{k}"]


def base_reference(
    states: Mapping[int, Mapping[str, torch.Tensor]],
    config: Mapping[str, object],
    ranks: Sequence[int] = RANKS,
) -> pd.DataFrame:
    """--base-geometry's columns from numpy float64 full SVDs of W_0 and W_t, per slice cut by hand.

    A per-expert tensor on disk (`experts.<E>.…`) is one matrix whose row names expert E.
    """
    rows = []
    for name, w0 in states[0].items():
        if w0.dim() < 2:
            continue
        named = _EXPERT.search(name)
        named_e = int(named.group(1)) if named and w0.dim() == 2 else None
        base = {(e, p): m.numpy() for e, p, m in ref_slices(name, w0, config)}
        prev = base
        for step in sorted(states)[1:]:
            now = {(e, p): m.numpy() for e, p, m in ref_slices(name, states[step][name], config)}
            for (e, p), w0m in base.items():
                wt = now[(e, p)]
                u0, s0, v0h = np.linalg.svd(w0m, full_matrices=False)
                ut, st, vth = np.linalg.svd(wt, full_matrices=False)
                for span, d in (("cumulative", wt - w0m), ("consecutive", wt - prev[(e, p)])):
                    e_row = named_e if e is None else e
                    row = {"span": span, "step": step, "tensor": name, "expert": e_row, "part": p}
                    sq = float((d**2).sum())
                    for k in ranks:
                        if k > len(s0):  # K above min(rows, cols): no top-K, gap 0 (gap_k's rule)
                            row.update(dict.fromkeys(_geometry_columns(k), math.nan))
                            row[f"base_gap_k{k}"], row[f"wt_gap_k{k}"] = 0.0, 0.0
                            continue
                        row[f"principal_energy_left_k{k}"] = (
                            float(((u0[:, :k].T @ d) ** 2).sum()) / sq
                        )
                        row[f"principal_energy_right_k{k}"] = (
                            float(((d @ v0h[:k].T) ** 2).sum()) / sq
                        )
                        s1 = np.append(s0, 0.0)
                        row[f"base_gap_k{k}"] = (s1[k - 1] - s1[k]) / s0[0]
                        row[f"wt_gap_k{k}"] = (
                            np.append(st, 0.0)[k - 1] - np.append(st, 0.0)[k]
                        ) / st[0]
                        rel = np.abs(st[:k] - s0[:k]) / s0[:k]
                        row[f"spectral_drift_k{k}"] = (
                            rel.max() if span == "cumulative" else math.nan
                        )
                        row[f"spectral_drift_mean_k{k}"] = (
                            rel.mean() if span == "cumulative" else math.nan
                        )
                        rl = 1 - float(((u0[:, :k].T @ ut[:, :k]) ** 2).sum()) / k
                        rr = 1 - float(((v0h[:k] @ vth[:k].T) ** 2).sum()) / k
                        row[f"principal_rotation_left_k{k}"] = (
                            rl if span == "cumulative" else math.nan
                        )
                        row[f"principal_rotation_right_k{k}"] = (
                            rr if span == "cumulative" else math.nan
                        )
                    rows.append(row)
            prev = now
    return pd.DataFrame(rows)


def check_base(df: pd.DataFrame, ref: pd.DataFrame, ranks: Sequence[int] = RANKS) -> dict[str, int]:
    """Every geometry column within the contract; returns how many values each check covered."""
    m = merged(df, ref, how="inner")
    assert len(m) == len(ref)  # every matrix slice has its row
    counts = {"energy": 0, "rotation": 0, "drift": 0}
    for k in ranks:
        sharp = m[f"base_gap_k{k}_ref"] >= GAP_FLAG
        np.testing.assert_allclose(m[f"base_gap_k{k}"], m[f"base_gap_k{k}_ref"], atol=1e-3)
        for side in ("left", "right"):
            col = f"principal_energy_{side}_k{k}"
            err = (m[col] - m[col + "_ref"]).abs()
            assert (err[sharp] <= 1e-3).all(), m.loc[sharp & (err > 1e-3), MERGE_KEYS + [col]]
            counts["energy"] += int(sharp.sum())
            col = f"principal_rotation_{side}_k{k}"
            both = sharp & (m[f"wt_gap_k{k}"] >= GAP_FLAG) & m[col + "_ref"].notna()
            err = (m[col] - m[col + "_ref"]).abs()
            assert (err[both] <= 1e-2).all(), m.loc[both & (err > 1e-2), MERGE_KEYS + [col]]
            assert m.loc[m[col + "_ref"].isna(), col].isna().all()  # consecutive, K > cap: NaN
            counts["rotation"] += int(both.sum())
        for col in (f"spectral_drift_k{k}", f"spectral_drift_mean_k{k}"):
            # σ_i are defined whatever the gaps (Weyl): checked on every row.
            ok = m[col + "_ref"].notna()
            assert m.loc[~ok, col].isna().all()
            np.testing.assert_allclose(m.loc[ok, col], m.loc[ok, col + "_ref"], atol=1e-3)
            counts["drift"] += int(ok.sum())
    return counts
