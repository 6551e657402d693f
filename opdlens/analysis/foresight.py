"""Foresight (design.md): how close θ_t + α(θ_t − θ_a) lands to each later θ_s, exactly, from Gram matrices."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

import numpy as np

from ..errors import OpdlensError, OptionError
from ..frames import Anchor, select_anchor
from ..names import BLOCKS
from ..progress import Progress
from ..schedule import MAX_MULTIPLE, EffOPDSchedule, check_alpha, replay_schedule
from ..selection import DEFAULT_MODULES, select_tensors
from .findings import closer_word
from .options import AnalyzeOptions

if TYPE_CHECKING:
    import pandas as pd

    from ..run import Run

__all__ = [
    "ALPHAS",
    "COLUMNS",
    "SCOPES",
    "anchor_pairs",
    "effopd_comparison",
    "foresee",
    "foresight_frame",
    "foresight_sentence",
    "grams",
]

ALPHAS = (0.5, 1.0, 2.0, 4.0)
SCOPES = ("tensor", "block", "layer", "overall")  # tensor, overall: as extrapolation_errors.csv
KINDS = ("grid", "optimal", "effopd")
COLUMNS = [
    "step", "anchor", "alpha", "alpha_kind", "candidate", "scope", "tensor", "layer", "block",
    "target_step", "pred_distance", "stay_distance", "rel_error",
]  # fmt: skip


def check_alphas(alphas: Iterable[float]) -> tuple[float, ...]:
    """The grid of α as finite floats, in the given order, each once."""
    if isinstance(alphas, str | bytes) or not isinstance(alphas, Iterable):
        raise OptionError(
            f"The 'alphas' parameter of foresee must be a sequence of real numbers, e.g. "
            f"(0.5, 1, 2, 4). Got {alphas!r} instead."
        )
    grid = tuple(dict.fromkeys(check_alpha(a, "alphas") for a in alphas))
    big = [a for a in grid if abs(a) > MAX_MULTIPLE]
    if big:
        raise OptionError(
            f"The 'alphas' parameter of foresee takes |α| ≤ {MAX_MULTIPLE:g} (α²·‖θ_t − θ_a‖² "
            f"must stay finite in float64). Got {big[0]!r} instead."
        )
    return grid


def check_scopes(scopes: Iterable[str]) -> list[str]:
    """The scopes asked for, each one of SCOPES."""
    items = [scopes] if isinstance(scopes, str) else list(scopes)
    bad = [x for x in items if x not in SCOPES]
    if bad or not items:
        raise OptionError(
            f"The 'scopes' parameter of foresee takes some of {', '.join(SCOPES)}. Got "
            f"{items} instead{f', where {bad} is none of them' if bad else ''}; e.g. --scopes "
            "block,overall."
        )
    return items


def anchor_pairs(steps: Sequence[int], anchor: Anchor = None) -> list[tuple[int, int]]:
    """(t, a) pairs: `previous` saved step, the `base`, one saved step, or (None) previous + EffOPD's.

    Raises:
        OptionError: an anchor that is none of these, or a step that is not saved.
    """
    saved = sorted(s for s in steps if s > 0)
    every = [0, *saved]
    previous = [(t, every[i]) for i, t in enumerate(saved)]
    if anchor is None:
        return sorted(set(previous) | set(replay_schedule(saved)))
    if anchor == "previous":
        return previous
    if anchor == "base":
        return [(t, 0) for t in saved]
    a: int | None = None
    if isinstance(anchor, int) and not isinstance(anchor, bool):
        a = anchor
    elif isinstance(anchor, str) and anchor.strip().isascii() and anchor.strip().isdigit():
        a = int(anchor)
    if a is None:
        raise OptionError(
            f"The 'anchor' parameter of foresee must be 'previous', 'base' or a saved step. Got "
            f"{anchor!r} instead."
        )
    if a not in every or a >= saved[-1]:
        raise OptionError(
            f"The 'anchor' parameter of foresee must be a saved step before the last one "
            f"({every[:-1]}). Got {a} instead."
        )
    return [(t, a) for t in saved if t > a]


def grams(
    run: Run, names: Sequence[str], options: AnalyzeOptions | None = None, *, progress: bool = False
) -> tuple[dict[str, np.ndarray], list[str]]:
    """Each tensor's Gram matrix over [0, *run.steps] (see gram.gram_tensor) and the warnings.

    The tensors run on the executor of `options` (workers, executor, address) like analyze's.
    """
    from .executors import Job, make_iterator  # torch: imported only to compute

    opts = options or AnalyzeOptions(workers=1)
    job = Job(run, opts, None, {}, gram=True)
    out: dict[str, np.ndarray] = {}
    warnings: list[str] = []
    bar = Progress(len(names), "foresee", enabled=progress)
    try:
        largest_first = sorted(names, key=lambda n: -run.base.spec(n).numel)
        for name, result in make_iterator(job, largest_first):
            assert result.gram is not None
            out[name] = result.gram
            warnings += result.warnings
            bar.update()
    finally:
        bar.close()
    return {n: out[n] for n in names}, warnings


def _scopes(run: Run, tensor_grams: dict[str, np.ndarray]) -> tuple[pd.DataFrame, np.ndarray]:
    """Scope labels (scope, tensor, layer, block) and their Gram matrices, summed over tensors."""
    import pandas as pd

    labels: list[tuple[str, str | None, int | None, str | None]] = []
    mats: list[np.ndarray] = []
    blocks: dict[str, np.ndarray] = {}
    layers: dict[int, np.ndarray] = {}
    for name, g in tensor_grams.items():
        info = run.module(name)
        labels.append(("tensor", name, info.layer, info.block))
        mats.append(g)
        blocks[info.block] = blocks.get(info.block, 0) + g
        if info.layer is not None:
            layers[info.layer] = layers.get(info.layer, 0) + g
    for b in sorted(blocks, key=lambda b: (BLOCKS.index(b) if b in BLOCKS else len(BLOCKS), b)):
        labels.append(("block", None, None, b))
        mats.append(blocks[b])
    for layer in sorted(layers):
        labels.append(("layer", None, layer, None))
        mats.append(layers[layer])
    labels.append(("overall", None, None, None))
    mats.append(sum(tensor_grams.values()))  # type: ignore[arg-type]
    meta = pd.DataFrame(labels, columns=["scope", "tensor", "layer", "block"])
    meta = meta.astype({"scope": "string", "tensor": "string", "layer": "Int64", "block": "string"})
    return meta, np.stack(mats)


def foresight_frame(
    meta: pd.DataFrame,
    gram: np.ndarray,
    steps: Sequence[int],
    pairs: Sequence[tuple[int, int]],
    alphas: Sequence[float],
    *,
    effopd: EffOPDSchedule | None = None,
) -> pd.DataFrame:
    """Every (t, a, α, s) row of design.md's foresight for the scopes in `meta`.

    `gram`: (scopes, n, n), G over `steps` = [0, *saved]; rows for the grid `alphas`, α* per scope
    ("optimal") and, at EffOPD's scheduled (t, a), its candidates' cumulative multiples ("effopd").
    """
    import pandas as pd

    pos = {s: i for i, s in enumerate(steps)}
    combos = [(t, a, s) for t, a in pairs for s in steps if s > t]
    if not combos:
        return pd.DataFrame({c: [] for c in COLUMNS})
    t_, a_, s_ = (np.array(x, dtype=np.int64) for x in zip(*combos, strict=True))
    ti, ai, si = (np.array([pos[int(v)] for v in x]) for x in (t_, a_, s_))
    g = gram
    ee = g[:, ti, ti] - 2 * g[:, ti, si] + g[:, si, si]  # ‖θ_t − θ_s‖², (scopes, P)
    dd = g[:, ti, ti] - 2 * g[:, ti, ai] + g[:, ai, ai]  # ‖θ_t − θ_a‖²
    ed = g[:, ti, ti] - g[:, ti, ai] - g[:, si, ti] + g[:, si, ai]  # ⟨θ_t − θ_s, θ_t − θ_a⟩
    with np.errstate(divide="ignore", invalid="ignore"):
        star = np.where(dd > 0, -ed / np.where(dd > 0, dd, 1.0), 0.0)  # d = 0: α* = 0 (min-norm)
    star[np.isnan(dd) | np.isnan(ed)] = np.nan
    parts = []
    grid = np.broadcast_to(np.asarray(alphas, dtype=np.float64), (*ee.shape, len(alphas)))
    parts.append(_rows(meta, (t_, a_, s_), ee, dd, ed, grid, "grid", None))
    parts.append(_rows(meta, (t_, a_, s_), ee, dd, ed, star[..., None], "optimal", None))
    scheduled = set(replay_schedule([s for s in steps if s > 0]))
    mask = np.array([(int(t), int(a)) in scheduled for t, a in zip(t_, a_, strict=True)])
    if mask.any():
        multiples = np.array([m for _, m in (effopd or EffOPDSchedule()).alphas()])
        sub = (t_[mask], a_[mask], s_[mask])
        cand = np.broadcast_to(multiples, (ee.shape[0], int(mask.sum()), len(multiples)))
        parts.append(_rows(meta, sub, ee[:, mask], dd[:, mask], ed[:, mask], cand, "effopd",
                           np.arange(1, len(multiples) + 1)))  # fmt: skip
    df = pd.concat(parts, ignore_index=True)
    rank = {"scope": SCOPES, "alpha_kind": KINDS}
    keys = [df["step"], df["anchor"], df["target_step"]]
    keys += [df[c].map({v: i for i, v in enumerate(r)}) for c, r in rank.items()]
    order = np.lexsort([k.to_numpy() for k in reversed(keys)])
    return df.iloc[order].reset_index(drop=True)[COLUMNS]


def _rows(
    meta: pd.DataFrame, tas: tuple[np.ndarray, np.ndarray, np.ndarray], ee: np.ndarray,
    dd: np.ndarray, ed: np.ndarray, alpha: np.ndarray, kind: str, candidate: np.ndarray | None,
) -> pd.DataFrame:  # fmt: skip
    """Long rows for one alpha_kind; `alpha` is (scopes, P, K)."""
    import pandas as pd

    n_scope, n_pair, k = alpha.shape
    pred = ee[..., None] + 2 * alpha * ed[..., None] + alpha**2 * dd[..., None]
    pred = np.maximum(pred, 0.0)  # float64 rounding can leave −1e-17 where the distance is 0
    stay = np.maximum(ee, 0.0)[..., None]
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(stay > 0, np.sqrt(pred / np.where(stay > 0, stay, 1.0)), np.nan)
    rel[np.isnan(pred)] = np.nan
    s_idx = np.repeat(np.arange(n_scope), n_pair * k)
    p_idx = np.tile(np.repeat(np.arange(n_pair), k), n_scope)
    out = meta.iloc[s_idx].reset_index(drop=True)
    out["step"], out["anchor"], out["target_step"] = (x[p_idx] for x in tas)
    out["alpha"] = alpha.reshape(-1)
    out["alpha_kind"] = pd.array([kind] * len(out), dtype="string")
    cand = np.tile(candidate, n_scope * n_pair) if candidate is not None else None
    out["candidate"] = pd.array(cand if cand is not None else [None] * len(out), dtype="Int64")
    out["pred_distance"] = np.sqrt(pred).reshape(-1)
    out["stay_distance"] = np.broadcast_to(np.sqrt(stay), pred.shape).reshape(-1)
    out["rel_error"] = rel.reshape(-1)
    return out


def foresee(
    run: Run,
    *,
    alphas: Iterable[float] = ALPHAS,
    anchor: Anchor = None,
    modules: Iterable[str] | None = DEFAULT_MODULES,
    tensors: Sequence[str] | None = None,
    scopes: Iterable[str] = SCOPES,
    alpha0: float = 2.0,
    max_candidates: int = 5,
    workers: int | None = None,
    executor: str = "local",
    address: str | None = None,
    device: str = "cpu",
    progress: bool = False,
) -> pd.DataFrame:
    """How close one extrapolation θ_t + α(θ_t − θ_a) lands to every later saved θ_s (design.md).

    One tidy row per (step t, anchor a, α, scope, target_step s) with pred_distance
    ‖θ_t + α(θ_t − θ_a) − θ_s‖, stay_distance ‖θ_t − θ_s‖ and rel_error, their ratio, over the
    tensors of the scope (`tensor`, `block`, `layer`, `overall`; by default the attention and MLP
    matrices, as extrapolate). alpha_kind is `grid` (each of `alphas`), `optimal` (α* of the
    scope, in `alpha`) or `effopd` (candidate k of EffOPD's schedule from α0: `alpha` holds its
    cumulative multiple of θ_t − θ_a). `anchor`: None (the previous saved step, plus EffOPD's
    scheduled pairs), 'previous', 'base' or a saved step. `scopes`: which of SCOPES get rows
    (tensor rows are most of a long run's rows). `workers`, `executor`, `address`: as
    `analyze` runs its tensors (default: one thread per core); `device`: where the float64
    Gram products run ('cpu', 'cuda', 'cuda:N'). frame.attrs["warnings"] lists
    warnings.

    Raises:
        OptionError: a bad alpha, anchor, module, or executor option (also a ValueError).
        OpdlensError: fewer than two saved steps after the base, or no tensor selected.
    """
    grid = check_alphas(alphas)
    effopd = EffOPDSchedule(alpha0, max_candidates)
    if len(run.steps) < 2:
        raise OpdlensError(
            f"foresee needs at least two saved steps after the base (a step and a later one to "
            f"predict); the run has {run.steps}. Add checkpoints (--checkpoint STEP=PATH)."
        )
    pairs = anchor_pairs(run.steps, anchor)
    wanted = check_scopes(scopes)
    opts = AnalyzeOptions(workers=workers, executor=executor, address=address, device=device)
    names = select_tensors(run, modules, tensors)
    from .cluster import ray_session

    with ray_session(opts):
        tensor_grams, warnings = grams(run, names, opts, progress=progress)
    meta, stacked = _scopes(run, tensor_grams)
    keep = meta["scope"].isin(wanted).to_numpy()
    meta, stacked = meta[keep].reset_index(drop=True), stacked[keep]
    df = foresight_frame(meta, stacked, [0, *run.steps], pairs, grid, effopd=effopd)
    df.attrs["warnings"] = list(run.warnings) + warnings
    return df


def effopd_comparison(df: pd.DataFrame) -> pd.DataFrame:
    """Whole model at EffOPD's scheduled steps: each candidate's α and rel_error beside α*'s."""
    keys = [c for c in ("run", "step", "anchor", "target_step") if c in df]
    overall = df[df["scope"] == "overall"]
    eff = overall[overall["alpha_kind"] == "effopd"]
    star = overall[overall["alpha_kind"] == "optimal"][[*keys, "alpha", "rel_error"]]
    star = star.rename(columns={"alpha": "alpha_star", "rel_error": "rel_error_at_alpha_star"})
    out = eff[[*keys, "candidate", "alpha", "rel_error"]].merge(star, on=keys, how="left")
    return out.reset_index(drop=True)


def foresight_sentence(df: pd.DataFrame, *, target: int | None = None) -> str:
    """One line on when one extrapolation along the current update starts beating standing still.

    Whole model, anchor = previous saved step, α = α*, against `target` (default: the last step);
    one clause per run when df has a `run` column.
    """
    if "run" in df:
        return "; ".join(
            f"{run}: {_sentence(sub, target)}" for run, sub in df.groupby("run", sort=False)
        )
    return _sentence(df, target)


def _sentence(df: pd.DataFrame, target: int | None) -> str:
    rows = select_anchor(df[(df["scope"] == "overall") & (df["alpha_kind"] == "optimal")])
    if rows.empty:
        return "no foresight rows with the previous saved step as anchor: nothing to say"
    s = int(rows["target_step"].max()) if target is None else int(target)
    rows = rows[rows["target_step"] == s].sort_values("step")
    if rows.empty:
        return f"no step before step {s} has foresight rows"
    # Along the current update: α* > 0 (then rel_error(α*) < 1 follows, and vice versa).
    good = ((rows["alpha"] > 0) & (rows["rel_error"] < 1)).to_numpy()
    steps = rows["step"].to_numpy()
    along = (
        f"one extrapolation along the current update lands closer to step {s} than standing still"
    )
    if not good.any():
        return (
            f"at no step before step {s} does {along.replace('lands', 'land')} "
            f"(α* ≤ 0 at every step: the best move is back toward the anchor, or nowhere)"
        )
    if not good[-1]:
        last = rows.iloc[-1]
        return (
            f"{along} at {int(good.sum())} of {len(rows)} steps before it, but not at step "
            f"{int(last['step'])}, the last (α* = {_fmt(last['alpha'])})"
        )
    first = int(np.flatnonzero(~good)[-1]) + 1 if not good.all() else 0
    row = rows.iloc[first]
    when = f"from step {int(steps[first])} on," if first < len(rows) - 1 else (
        f"only at step {int(steps[first])}, the last before it,")  # fmt: skip
    along = along.replace("closer", closer_word(float(row["rel_error"])))
    return f"{when} {along} (rel_error {_below_one(row['rel_error'])} at α* = {_fmt(row['alpha'])})"


def _below_one(x: float) -> str:
    """A rel_error < 1 with enough decimals that it does not print as 1.00."""
    for digits in (2, 3, 4):
        text = f"{x:.{digits}f}"
        if float(text) < 1:
            break
    return text


def _fmt(x: object, spec: str = ".2g") -> str:
    v = float(x)  # type: ignore[arg-type]
    return "nan" if math.isnan(v) else format(v, spec)
