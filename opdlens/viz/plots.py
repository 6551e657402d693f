"""Paper-style figures of the metrics table, spectra and replay results; each returns its Figure."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter
from numpy.typing import ArrayLike

from opdlens.analysis import ILL_DEFINED_GAP
from opdlens.errors import NothingToDrawError, OptionError
from opdlens.viz.style import (
    FLAG_COLOR,
    block_color,
    color_at,
    figure_and_axes,
    linestyle_at,
    new_figure,
    paper_style,
    sequential_colors,
)
from opdlens.viz.training import training_curve

__all__ = [
    "GAP_THRESHOLD",
    "alignment_by_step",
    "allocation_heatmap",
    "allocation_strip",
    "block_norms",
    "energy_by_rank",
    "energy_by_step",
    "error_vs_alpha",
    "replay_scores",
    "spectra",
    "training_curve",
]

GAP_THRESHOLD = ILL_DEFINED_GAP  # design.md's gap rule, defined once in opdlens.analysis
# alignment_by_step greys out a point when ill-defined tensors carry more than this share of ‖Δ‖².
_FLAG_WEIGHT = 0.5
_MAX_STRIP_PANELS = 6
_STRIP_COLUMNS = 3

_ANALYZE_HINT = "Pass the DataFrame returned by Run.analyze."
_BLOCKS = ("attn", "mlp", "embed", "norm", "head", "other")
_KINDS = (
    "embed_tokens", "q_proj", "k_proj", "v_proj", "qkv", "o_proj", "gate_proj", "up_proj",
    "gate_up", "down_proj", "experts", "router", "norm", "lm_head",
)  # fmt: skip
_SHARE_LABEL = r"update share  $\|\Delta\|_F^2 \,/\, \sum \|\Delta\|_F^2$"
_STEP_LABEL = "training step $t$"


def _check_frame(
    df: object, func: str, columns: Sequence[str], arg: str = "df", hint: str = _ANALYZE_HINT
) -> pd.DataFrame:
    if not isinstance(df, pd.DataFrame):
        raise TypeError(
            f"The '{arg}' argument of {func} must be a pandas DataFrame. "
            f"Got {type(df).__name__} instead. {hint}"
        )
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise OptionError(
            f"The '{arg}' argument of {func} needs the columns {list(columns)}; got "
            f"{list(df.columns)} (missing {missing}). {hint}"
        )
    if df.empty:
        raise NothingToDrawError(f"The '{arg}' argument of {func} has no rows. {hint}")
    return df


def _ks(df: pd.DataFrame, prefix: str, func: str) -> list[int]:
    pattern = re.compile(rf"^{prefix}_k(\d+)$")
    ks = sorted(int(m.group(1)) for c in df.columns if (m := pattern.match(str(c))))
    if not ks:
        raise OptionError(
            f"The 'df' argument of {func} needs at least one column named {prefix}_k{{K}} "
            f"(e.g. {prefix}_k4); got {list(df.columns)}. {_ANALYZE_HINT}"
        )
    return ks


def _values(series: pd.Series) -> np.ndarray:
    return series.to_numpy(dtype="float64", na_value=np.nan)


def _runs(df: pd.DataFrame, runs: Sequence[str] | None, func: str) -> list[str]:
    present = [str(r) for r in pd.unique(df["run"])]
    if runs is None:
        return present
    unknown = [r for r in runs if r not in present]
    if unknown or not runs:
        raise OptionError(
            f"The 'runs' parameter of {func} must name runs in df. Got {list(runs)} instead; "
            f"df holds {present}."
        )
    return list(runs)


def _final_steps(df: pd.DataFrame, runs: Sequence[str], step: int | None, func: str) -> dict:
    out = {}
    for run in runs:
        steps = df.loc[df["run"] == run, "step"]
        if step is None:
            out[run] = int(steps.max())
        elif (steps == step).any():
            out[run] = int(step)
        else:
            raise OptionError(
                f"The 'step' parameter of {func} must be a step saved by every run. Got {step} "
                f"instead; run '{run}' has steps {sorted(int(s) for s in steps.unique())}."
            )
    return out


def _ordered(values: Iterable[object], order: Sequence[str]) -> list[str]:
    items = {str(v) for v in values}
    return sorted(items, key=lambda v: (order.index(v) if v in order else len(order), v))


def _weighted(d: pd.DataFrame, value: str, keys: list[str]) -> pd.Series:
    """Mean of `value` weighted by column `w` within each group of `keys`, over finite values."""
    d = d[np.isfinite(d[value]) & (d["w"] > 0)]
    sums = (d[value] * d["w"]).groupby([d[k] for k in keys]).sum()
    return sums / d["w"].groupby([d[k] for k in keys]).sum()


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
    handles += [
        Line2D([], [], color="#333333", linestyle=linestyle_at(i), label=str(run))
        for i, run in enumerate(runs)
    ]
    ax.legend(handles=handles, ncols=2 if len(handles) > 5 else 1, loc="best")


def _share_grid(rows: pd.DataFrame, layers: list[int], kinds: list[str]) -> np.ndarray:
    rows = rows[rows["layer"].notna()]
    keys = [rows["layer"].astype("int64"), rows["kind"].astype(str)]
    table = rows["update_share"].groupby(keys).sum(min_count=1).unstack()
    return table.reindex(index=layers, columns=kinds).to_numpy(dtype="float64", na_value=np.nan)


def _heatmaps(
    panels: list[tuple[str, np.ndarray]], layers: list[int], kinds: list[str], ncols: int = 0
) -> Figure:
    """One heatmap per panel on one colour scale, `ncols` per row (0: all in one row)."""
    ncols = min(len(panels), ncols or len(panels))
    nrows = -(-len(panels) // ncols)
    # Height: rotated kind labels below, the titles above, and room for the colour-bar label
    # (about 1.7 in long) beside images of at least that height, whatever the layer count.
    labels = 0.055 * max((len(k) for k in kinds), default=4)
    image = max(1.8 / nrows, 0.14 * len(layers))
    height = 0.8 + labels + nrows * image + (nrows - 1) * (0.35 + labels)
    fig = new_figure(1.3 + ncols * (0.6 + 0.22 * len(kinds)), height)
    grid = fig.subplots(nrows, ncols, squeeze=False)
    axes = list(grid.flat[: len(panels)])
    for ax in grid.flat[len(panels) :]:
        ax.remove()
    finite = [grid[np.isfinite(grid)] for _, grid in panels]
    vmax = max((float(f.max()) for f in finite if f.size), default=0.0) or 1.0
    cmap = mpl.colormaps["viridis"].with_extremes(bad="#EEEEEE")
    drawn = None
    every = max(1, len(layers) // 12)
    for i, (ax, (title, values)) in enumerate(zip(axes, panels, strict=True)):
        drawn = ax.imshow(
            np.ma.masked_invalid(values), origin="lower", aspect="auto", cmap=cmap,
            vmin=0.0, vmax=vmax, interpolation="nearest",
        )  # fmt: skip
        # Kind names only under the lowest panel of each column, layers only in the first column.
        lowest = i + ncols >= len(panels)
        ax.set_xticks(range(len(kinds)), kinds if lowest else [], rotation=60, ha="right",
                      rotation_mode="anchor")  # fmt: skip
        ax.set_yticks(range(0, len(layers), every), [str(v) for v in layers[::every]])
        if i % ncols:
            ax.tick_params(labelleft=False)
        else:
            ax.set_ylabel("layer")
        ax.grid(False)
        ax.set_title(title)
    assert drawn is not None  # every figure has at least one panel
    fig.colorbar(drawn, ax=axes, label=_SHARE_LABEL, fraction=0.05, pad=0.02)
    return fig


def _grid_axes(df: pd.DataFrame) -> tuple[list[int], list[str]]:
    layered = df[df["layer"].notna()]
    if layered.empty:
        raise NothingToDrawError(f"The 'df' argument has no rows with a layer. {_ANALYZE_HINT}")
    layers = sorted(int(v) for v in layered["layer"].unique())
    return layers, _ordered(layered["kind"].unique(), _KINDS)


def _outside_layers(rows: pd.DataFrame) -> float:
    return float(np.nansum(_values(rows.loc[rows["layer"].isna(), "update_share"])))


def allocation_heatmap(
    df: pd.DataFrame, *, step: int | None = None, runs: Sequence[str] | None = None
) -> Figure:
    """Heatmap of update share over layer × kind, one panel per run, on one colour scale."""
    columns = ["run", "step", "layer", "kind", "update_share"]
    df = _check_frame(df, "allocation_heatmap", columns)
    runs = _runs(df, runs, "allocation_heatmap")
    finals = _final_steps(df, runs, step, "allocation_heatmap")
    layers, kinds = _grid_axes(df[df["run"].isin(runs)])
    with paper_style():
        panels = []
        for run in runs:
            rows = df[(df["run"] == run) & (df["step"] == finals[run])]
            title = f"{run} · step {finals[run]}\noutside layers: {_outside_layers(rows):.1%}"
            panels.append((title, _share_grid(rows, layers, kinds)))
        fig = _heatmaps(panels, layers, kinds)
    return fig


def allocation_strip(
    df: pd.DataFrame, *, run: str | None = None, steps: Sequence[int] | None = None
) -> Figure:
    """Small multiples of the allocation heatmap over steps of one run.

    steps=None takes up to six saved steps spread evenly, always the first and the last.
    """
    columns = ["run", "step", "layer", "kind", "update_share"]
    df = _check_frame(df, "allocation_strip", columns)
    present = _runs(df, None, "allocation_strip")
    if run is None and len(present) > 1:
        raise OptionError(
            f"The 'run' parameter of allocation_strip is needed when df holds several runs; "
            f"pass one of {present}."
        )
    run = _runs(df, [present[0] if run is None else run], "allocation_strip")[0]
    rows = df[df["run"] == run]
    with_share = np.isfinite(_values(rows["update_share"]))
    saved = sorted(int(s) for s in rows.loc[with_share, "step"].unique())
    if steps is None:
        picks = np.linspace(0, len(saved) - 1, min(len(saved), _MAX_STRIP_PANELS))
        steps = [saved[i] for i in sorted({int(round(p)) for p in picks})]
    elif not steps or any(s not in saved for s in steps):
        raise OptionError(
            f"The 'steps' parameter of allocation_strip must list steps of run '{run}' with "
            f"update shares. Got {list(steps)} instead; the run has {saved}."
        )
    layers, kinds = _grid_axes(rows)
    with paper_style():
        panels = [(f"step {s}", _share_grid(rows[rows["step"] == s], layers, kinds)) for s in steps]
        # Three panels a row: the strip stays as wide as the report's column, its labels legible.
        fig = _heatmaps(panels, layers, kinds, ncols=_STRIP_COLUMNS)
        fig.suptitle(f"{run}: update share by layer and module")
    return fig


def block_norms(df: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Update norm of each block (root-sum-square over its tensors) against step, per run."""
    df = _check_frame(df, "block_norms", ["run", "step", "block", "update_norm"])
    runs = _runs(df, None, "block_norms")
    blocks = _ordered(df["block"].unique(), _BLOCKS)
    squares = pd.Series(_values(df["update_norm"]) ** 2, index=df.index)
    norms = np.sqrt(squares.groupby([df["run"], df["step"], df["block"]]).sum())
    with paper_style():
        fig, ax = figure_and_axes(ax)
        _block_lines(ax, _step_curves(norms), runs, blocks)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel(_STEP_LABEL)
        ax.set_ylabel(
            r"update norm of the block" "\n" r"$(\sum_{\mathrm{block}} \|\Delta\|_F^2)^{1/2}$"
        )
    return fig


def _energy_table(df: pd.DataFrame, ks: list[int], keys: list[str]) -> pd.DataFrame:
    d = df[keys].copy()
    d["w"] = _values(df["update_norm"]) ** 2
    columns = {}
    for k in ks:
        d[f"e{k}"] = _values(df[f"energy_k{k}"])
        columns[k] = _weighted(d, f"e{k}", keys)
    return pd.DataFrame(columns)


def _energy_label(k: int | str) -> str:
    return (
        f"energy in the top-{k} directions\n"
        rf"$\sum_{{i \leq {k}}} \sigma_i^2 \,/\, \|\Delta\|_F^2$ ($\|\Delta\|_F^2$-weighted)"
    )


def energy_by_step(df: pd.DataFrame, *, k: int | None = None, ax: Axes | None = None) -> Figure:
    """Energy in the top-K singular directions per block against step (k=None: the middle K)."""
    df = _check_frame(df, "energy_by_step", ["run", "step", "block", "update_norm"])
    ks = _ks(df, "energy", "energy_by_step")
    if k is None:
        k = ks[(len(ks) - 1) // 2]
    elif k not in ks:
        raise OptionError(
            f"The 'k' parameter of energy_by_step must be one of the K in df's energy_k{{K}} "
            f"columns, {ks}. Got {k} instead."
        )
    runs = _runs(df, None, "energy_by_step")
    table = _energy_table(df, [k], ["run", "block", "step"])[k]
    with paper_style():
        fig, ax = figure_and_axes(ax)
        blocks = _ordered(table.index.get_level_values("block").unique(), _BLOCKS)
        _block_lines(ax, _step_curves(table), runs, blocks)
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel(_STEP_LABEL)
        ax.set_ylabel(_energy_label(k))
    return fig


def energy_by_rank(df: pd.DataFrame, *, step: int | None = None, ax: Axes | None = None) -> Figure:
    """Energy in the top-K directions against K per block and run, at the final (or given) step."""
    df = _check_frame(df, "energy_by_rank", ["run", "step", "block", "update_norm"])
    ks = _ks(df, "energy", "energy_by_rank")
    runs = _runs(df, None, "energy_by_rank")
    finals = _final_steps(df, runs, step, "energy_by_rank")
    at_final = df[df["step"] == df["run"].map(finals)]
    table = _energy_table(at_final, ks, ["run", "block"])
    with paper_style():
        fig, ax = figure_and_axes(ax)
        blocks = _ordered(table.index.get_level_values("block").unique(), _BLOCKS)
        curves = {key: (ks, row.to_numpy()) for key, row in table.iterrows()}
        _block_lines(ax, curves, runs, blocks)
        ax.set_xscale("log", base=2)
        ax.set_xticks(ks, [str(k) for k in ks])
        ax.set_ylim(0.0, 1.02)
        ax.set_xlabel("rank $K$")
        ax.set_ylabel(_energy_label("K"))
        ax.set_title(", ".join(f"{r}: step {s}" for r, s in finals.items()))
    return fig


def _alignment_table(df: pd.DataFrame, sides: tuple[str, ...], k: int) -> pd.DataFrame:
    """Weighted alignment, random baseline and ill-defined weight share per (run, step)."""
    d = df[["run", "step"]].copy()
    d["w"] = _values(df["update_norm"]) ** 2
    d["align"] = np.mean([_values(df[f"align_{s}_k{k}"]) for s in sides], axis=0)
    dims = {"left": "rows", "right": "cols"}
    d["random"] = np.mean([np.minimum(k / _values(df[dims[s]]), 1.0) for s in sides], axis=0)
    # A tensor's top-K subspace is ill-defined if its gap is small (or missing) at t or at T.
    gap = _values(df[f"gap_k{k}"])
    expert = df["expert"].astype("string").fillna("") if "expert" in df else ""
    key = pd.Series(df["run"].astype(str) + "|" + df["tensor"].astype(str) + "|" + expert)
    final = df["step"] == df.groupby("run")["step"].transform("max")
    gap_final = key.map(pd.Series(gap[final.to_numpy()], index=key[final].to_numpy()))
    ok = (gap >= GAP_THRESHOLD) & (_values(gap_final) >= GAP_THRESHOLD)
    d["ill"] = np.where(ok, 0.0, 1.0)
    d = d[np.isfinite(d["align"])]
    out = {c: _weighted(d, c, ["run", "step"]) for c in ("align", "random", "ill")}
    return pd.DataFrame(out)


def alignment_by_step(df: pd.DataFrame, *, side: str = "both", ax: Axes | None = None) -> Figure:
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
    df = _check_frame(df, "alignment_by_step", base)
    ks = _ks(df, f"align_{sides[0]}", "alignment_by_step")
    needed = [f"{p}_k{k}" for k in ks for p in [*(f"align_{s}" for s in sides), "gap"]]
    df = _check_frame(df, "alignment_by_step", base + needed)
    runs = _runs(df, None, "alignment_by_step")
    with paper_style():
        fig, ax = figure_and_axes(ax)
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
        ax.set_xlabel(_STEP_LABEL)
        formula = {
            "left": r"$\|U_{t,K}^\top U_{T,K}\|_F^2 / K$",
            "right": r"$\|V_{t,K}^\top V_{T,K}\|_F^2 / K$",
            "both": r"mean of $\|U_{t,K}^\top U_{T,K}\|_F^2 / K$ and the same for $V$",
        }[side]
        weighted = r"($\|\Delta\|_F^2$-weighted)"
        ax.set_ylabel(f"alignment with the final update\n{formula}\n{weighted}")
        baseline = {"left": "K/rows", "right": "K/cols", "both": "mean of K/rows, K/cols"}[side]
        handles = [Line2D([], [], color=color_at(j), label=f"K = {k}") for j, k in enumerate(ks)]
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
    return fig


def spectra(spectra: pd.DataFrame | Mapping[str, object], *, ax: Axes | None = None) -> Figure:
    """Singular values of the final update Δ_T of the given tensors, on a log scale.

    spectra: tidy rows (tensor, index, sigma; opdlens.analysis.spectra) or tensor → values.
    """
    if isinstance(spectra, pd.DataFrame):
        hint = "Pass the spectra DataFrame of opdlens.analysis.spectra."
        frame = _check_frame(spectra, "spectra", ["tensor", "index", "sigma"], "spectra", hint)
        spectra = {
            str(name): _values(rows.sort_values("index")["sigma"])
            for name, rows in frame.groupby("tensor", sort=False)
        }
    if not isinstance(spectra, Mapping) or not spectra:
        raise OptionError(
            "The 'spectra' argument of spectra must be a non-empty mapping of tensor name to "
            f"singular values. Got {type(spectra).__name__} of length "
            f"{len(spectra) if hasattr(spectra, '__len__') else '?'} instead."
        )
    values = {}
    for name, sigma in spectra.items():
        array = np.asarray(sigma, dtype="float64")
        if array.ndim != 1 or not np.isfinite(array).all() or (array < 0).any():
            raise OptionError(
                f"The singular values of '{name}' passed to spectra must be a 1-D array of "
                f"finite, non-negative numbers. Got shape {array.shape} instead."
            )
        values[name] = np.sort(array)[::-1]
    with paper_style():
        fig, ax = figure_and_axes(ax)
        for i, (name, sigma) in enumerate(values.items()):
            ax.plot(np.arange(1, sigma.size + 1), sigma, color=color_at(i), label=name)
        ax.set_yscale("log", nonpositive="mask")
        ax.set_xlabel("index $i$")
        ax.set_ylabel(r"singular value $\sigma_i$ of $\Delta_T$")
        ax.legend(loc="best")
    return fig


def replay_scores(
    history: pd.DataFrame, *, score_label: str = "validation score", ax: Axes | None = None
) -> Figure:
    """Replay score against step: the saved checkpoint, candidates tried, and the accepted path."""
    columns = ["step", "anchor", "candidate", "alpha", "multiple", "score", "accepted"]
    hint = "Pass the history DataFrame returned by the EffOPD replay."
    history = _check_frame(history, "replay_scores", columns, arg="history", hint=hint)
    h = history.sort_values(["step", "candidate"])
    saved = h[h["candidate"] == 0]
    tried = h[h["candidate"] > 0]
    accepted = tried["accepted"].astype(bool).to_numpy()
    # The replay's checkpoint at each step is its last accepted candidate, else the saved one.
    path = pd.concat([saved, tried[accepted]]).groupby("step").tail(1).sort_values("step")
    with paper_style():
        fig, ax = figure_and_axes(ax)
        ax.plot(saved["step"], saved["score"], color=color_at(7), marker="o",
                label="saved checkpoint (candidate 0)")  # fmt: skip
        ax.plot(path["step"], path["score"], color=color_at(0), linestyle="--", marker="o",
                label="after accepted extrapolations")  # fmt: skip
        ax.scatter(tried["step"][accepted], tried["score"][accepted], marker="^", s=30,
                   color=color_at(2), zorder=3, label="accepted candidate")  # fmt: skip
        ax.scatter(tried["step"][~accepted], tried["score"][~accepted], marker="x", s=24,
                   color=color_at(3), zorder=3, label="rejected candidate")  # fmt: skip
        if (h["step"] > 0).all():
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))  # 8, not 8.0
        ax.set_xlabel(_STEP_LABEL)
        ax.set_ylabel(score_label)
        ax.text(0.01, 0.01, "offline replay: training did not continue from accepted candidates",
                transform=ax.transAxes, fontsize=6.5, color="#666666")  # fmt: skip
        ax.legend(loc="best")
    return fig


def error_vs_alpha(errors: pd.DataFrame, *, ax: Axes | None = None) -> Figure:
    """Relative prediction error of one-shot extrapolation against α, one line per target step."""
    hint = "Pass the DataFrame of prediction errors from the extrapolation sweep."
    errors = _check_frame(
        errors, "error_vs_alpha", ["alpha", "target_step", "rel_error"], arg="errors", hint=hint
    )
    targets = errors.sort_values("alpha").groupby("target_step")
    # One colour per target step, from a sequential map: later targets are lighter, none repeats.
    colors = sequential_colors(targets.ngroups)
    with paper_style():
        fig, ax = figure_and_axes(ax)
        for color, (target, rows) in zip(colors, targets, strict=True):
            ax.plot(rows["alpha"], rows["rel_error"], color=color, marker="o",
                    label=f"$s$ = {target}")  # fmt: skip
        ax.axhline(1.0, color="#777777", linestyle="--", linewidth=0.8, label="standing still")
        ax.set_xlabel(r"extrapolation factor $\alpha$")
        ax.set_ylabel(
            "relative error\n"
            r"$\|\theta_{\mathrm{pred}} - \theta_s\| \,/\, \|\theta_t - \theta_s\|$"
        )
        ax.legend(loc="best", title="target step", ncols=2 if targets.ngroups > 6 else 1)
    return fig
