"""How the update moves over training: block norms, low-rank energy, alignment with Δ_T."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.lines import Line2D
from numpy.typing import ArrayLike

from opdlens.analysis import ILL_DEFINED_GAP
from opdlens.errors import OptionError
from opdlens.frames import (
    STEP_LABEL,
    check_frame,
    final_steps,
    ks_of,
    ordered,
    run_names,
    values_of,
    weighted_mean,
)
from opdlens.names import BLOCKS
from opdlens.viz.style import (
    FLAG_COLOR,
    block_color,
    color_at,
    figure_and_axes,
    linestyle_at,
    paper_style,
)

__all__ = ["GAP_THRESHOLD", "alignment_by_step", "block_norms", "energy_by_rank", "energy_by_step"]

GAP_THRESHOLD = ILL_DEFINED_GAP  # design.md's gap rule, defined once in opdlens.analysis
# alignment_by_step greys out a point when ill-defined tensors carry more than this share of ‖Δ‖².
_FLAG_WEIGHT = 0.5


def _step_curves(values: pd.Series) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    """(run, block) → (steps, values) from a Series indexed by run, step and block."""
    curves = {}
    for key, series in values.groupby(level=["run", "block"]):
        series = series.droplevel(["run", "block"]).sort_index()
        curves[key] = (series.index.to_numpy(), series.to_numpy())
    return curves


def _block_lines(
    ax: Axes,
    curves: Mapping[tuple[str, str], tuple[ArrayLike, ArrayLike]],
    runs: Sequence[str],
    blocks: Sequence[str],
) -> None:
    """One line per (run, block): colour by block, line style by run, and a legend of both."""
    for i, run in enumerate(runs):
        for block in blocks:
            if (run, block) in curves:
                x, y = curves[(run, block)]
                ax.plot(
                    x, y, color=block_color(block), linestyle=linestyle_at(i), marker="o",
                    label=f"{run} · {block}",
                )  # fmt: skip
    handles = [Line2D([], [], color=block_color(b), label=b) for b in blocks]
    if len(runs) > 1:  # one run: its name is the panel's title, not a legend entry
        handles += [
            Line2D([], [], color="#333333", linestyle=linestyle_at(i), label=str(run))
            for i, run in enumerate(runs)
        ]
    ax.legend(handles=handles, ncols=2 if len(handles) > 5 else 1, loc="best")


def block_norms(df: pd.DataFrame, *, ax: Axes | None = None) -> Axes:
    """Update norm of each block (root-sum-square over its tensors) against step, per run."""
    df = check_frame(df, "block_norms", ["run", "step", "block", "update_norm"])
    runs = run_names(df, None, "block_norms")
    blocks = ordered(df["block"].unique(), BLOCKS)
    squares = pd.Series(values_of(df["update_norm"]) ** 2, index=df.index)
    norms = np.sqrt(squares.groupby([df["run"], df["step"], df["block"]]).sum())
    with paper_style():
        _, ax = figure_and_axes(ax)
        _block_lines(ax, _step_curves(norms), runs, blocks)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(
            r"update norm of the block" "\n" r"$(\sum_{\mathrm{block}} \|\Delta\|_F^2)^{1/2}$"
        )
    return ax


def _energy_table(df: pd.DataFrame, ks: list[int], keys: list[str]) -> pd.DataFrame:
    d = df[keys].copy()
    d["w"] = values_of(df["update_norm"]) ** 2
    columns = {}
    for k in ks:
        d[f"e{k}"] = values_of(df[f"energy_k{k}"])
        columns[k] = weighted_mean(d[f"e{k}"], d["w"], [d[c] for c in keys])
    return pd.DataFrame(columns)


def _energy_label(k: int | str) -> str:
    return (
        f"energy in the top-{k} directions\n"
        rf"$\sum_{{i \leq {k}}} \sigma_i^2 \,/\, \|\Delta\|_F^2$ ($\|\Delta\|_F^2$-weighted)"
    )


def energy_by_step(df: pd.DataFrame, *, k: int | None = None, ax: Axes | None = None) -> Axes:
    """Energy in the top-K singular directions per block against step (k=None: the middle K)."""
    df = check_frame(df, "energy_by_step", ["run", "step", "block", "update_norm"])
    ks = ks_of(df, "energy", "energy_by_step")
    if k is None:
        k = ks[(len(ks) - 1) // 2]
    elif k not in ks:
        raise OptionError(
            f"The 'k' parameter of energy_by_step must be one of the K in df's energy_k{{K}} "
            f"columns, {ks}. Got {k} instead."
        )
    runs = run_names(df, None, "energy_by_step")
    table = _energy_table(df, [k], ["run", "block", "step"])[k]
    with paper_style():
        _, ax = figure_and_axes(ax)
        blocks = ordered(table.index.get_level_values("block").unique(), BLOCKS)
        _block_lines(ax, _step_curves(table), runs, blocks)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(STEP_LABEL)
        ax.set_ylabel(_energy_label(k))
    return ax


def energy_by_rank(df: pd.DataFrame, *, step: int | None = None, ax: Axes | None = None) -> Axes:
    """Energy in the top-K directions against K per block and run, at the final (or given) step."""
    df = check_frame(df, "energy_by_rank", ["run", "step", "block", "update_norm"])
    ks = ks_of(df, "energy", "energy_by_rank")
    runs = run_names(df, None, "energy_by_rank")
    finals = final_steps(df, runs, step, "energy_by_rank")
    at_final = df[df["step"] == df["run"].map(finals)]
    table = _energy_table(at_final, ks, ["run", "block"])
    with paper_style():
        _, ax = figure_and_axes(ax)
        blocks = ordered(table.index.get_level_values("block").unique(), BLOCKS)
        curves = {key: (ks, row.to_numpy()) for key, row in table.iterrows()}
        _block_lines(ax, curves, runs, blocks)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("rank $K$")
        ax.set_ylabel(_energy_label("K"))
        ax.set_title(", ".join(f"{r}: step {s}" for r, s in finals.items()))
    return ax


def _alignment_table(df: pd.DataFrame, sides: tuple[str, ...], k: int) -> pd.DataFrame:
    """Weighted alignment, random baseline and ill-defined weight share per (run, step)."""
    d = df[["run", "step"]].copy()
    d["w"] = values_of(df["update_norm"]) ** 2
    d["align"] = np.mean([values_of(df[f"align_{s}_k{k}"]) for s in sides], axis=0)
    dims = {"left": "rows", "right": "cols"}
    d["random"] = np.mean([np.minimum(k / values_of(df[dims[s]]), 1.0) for s in sides], axis=0)
    # A tensor's top-K subspace is ill-defined if its gap is small (or missing) at t or at T.
    gap = values_of(df[f"gap_k{k}"])
    expert = df["expert"].astype("string").fillna("") if "expert" in df else ""
    key = pd.Series(df["run"].astype(str) + "|" + df["tensor"].astype(str) + "|" + expert)
    final = df["step"] == df.groupby("run")["step"].transform("max")
    gap_final = key.map(pd.Series(gap[final.to_numpy()], index=key[final].to_numpy()))
    ok = (gap >= GAP_THRESHOLD) & (values_of(gap_final) >= GAP_THRESHOLD)
    d["ill"] = np.where(ok, 0.0, 1.0)
    d = d[np.isfinite(d["align"])]
    out = {
        c: weighted_mean(d[c], d["w"], [d["run"], d["step"]]) for c in ("align", "random", "ill")
    }
    return pd.DataFrame(out)


def alignment_by_step(df: pd.DataFrame, *, side: str = "both", ax: Axes | None = None) -> Axes:
    """Alignment of the top-K singular subspaces with the final update against step, per K.

    side="both" averages the left (U) and right (V) alignments. The dashed line per K is
    the alignment of a random K-dimensional subspace, K/rows (K/cols for V). A point is drawn
    hollow grey when tensors whose gap_k{K} is below GAP_THRESHOLD at that step or at the final
    step (an ill-defined top-K subspace) carry more than half of the ‖Δ‖² behind it.
    """
    if side not in ("left", "right", "both"):
        raise OptionError(
            f"The 'side' parameter of alignment_by_step must be 'left', 'right' or 'both'. "
            f"Got {side!r} instead."
        )
    sides = ("left", "right") if side == "both" else (side,)
    base = ["run", "step", "tensor", "rows", "cols", "update_norm"]
    df = check_frame(df, "alignment_by_step", base)
    ks = ks_of(df, f"align_{sides[0]}", "alignment_by_step")
    needed = [f"{p}_k{k}" for k in ks for p in [*(f"align_{s}" for s in sides), "gap"]]
    df = check_frame(df, "alignment_by_step", base + needed)
    runs = run_names(df, None, "alignment_by_step")
    with paper_style():
        _, ax = figure_and_axes(ax)
        for j, k in enumerate(ks):
            table = _alignment_table(df, sides, k)
            for i, run in enumerate(runs):
                if run not in table.index.get_level_values("run"):
                    continue
                rows = table.xs(run, level="run").sort_index()
                steps = rows.index.to_numpy()
                ax.plot(
                    steps, rows["align"].to_numpy(), color=color_at(j), linestyle=linestyle_at(i),
                    marker="o", label=f"{run} · K={k}",
                )  # fmt: skip
                flagged = (rows["ill"] > _FLAG_WEIGHT).to_numpy()
                if flagged.any():
                    ax.scatter(
                        steps[flagged], rows["align"].to_numpy()[flagged], s=22, zorder=3,
                        facecolors="white", edgecolors=FLAG_COLOR, hatch="////", linewidths=0.9,
                    )  # fmt: skip
            ax.axhline(
                float(table["random"].mean()), color=color_at(j), linestyle="--",
                linewidth=0.8, alpha=0.8,
            )  # fmt: skip
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(STEP_LABEL)
        formula = {
            "left": r"$\|U_{t,K}^\top U_{T,K}\|_F^2 / K$",
            "right": r"$\|V_{t,K}^\top V_{T,K}\|_F^2 / K$",
            "both": r"mean of $\|U_{t,K}^\top U_{T,K}\|_F^2 / K$ and the same for $V$",
        }[side]
        weighted = r"($\|\Delta\|_F^2$-weighted)"
        ax.set_ylabel(f"alignment with the final update\n{formula}\n{weighted}")
        baseline = {"left": "K/rows", "right": "K/cols", "both": "mean of K/rows, K/cols"}[side]
        handles = [Line2D([], [], color=color_at(j), label=f"K = {k}") for j, k in enumerate(ks)]
        if len(runs) > 1:  # one run: its name is the panel's title, not a legend entry
            handles += [
                Line2D([], [], color="#333333", linestyle=linestyle_at(i), label=run)
                for i, run in enumerate(runs)
            ]
        handles += [
            Line2D([], [], color="#777777", linestyle="--", linewidth=0.8,
                   label=f"random subspace, {baseline}"),
            Line2D([], [], linestyle="", marker="o", markerfacecolor="white",
                   markeredgecolor=FLAG_COLOR, label=f"gap$_K$ < {GAP_THRESHOLD:g}: ill-defined"),
        ]  # fmt: skip
        ax.legend(handles=handles, ncols=2, loc="best")
    return ax
