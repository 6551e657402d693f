"""`opdlens demo` end to end: train (or reuse) the runs, analyse, extrapolate, replay, draw, report."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from ..analysis.frame import summarize, weighted_mean
from ..analysis.options import AnalyzeOptions
from ..analysis.results import load_sources
from ..extrapolation.extrapolate import ERRORS_FILE, extrapolate
from ..extrapolation.replay import OFFLINE_NOTE, replay, replay_schedule
from ..io.paths import write_text_atomic
from ..run import open_run
from ..viz.report import write_report
from .runs import generate_runs

LABELS = ("OPD", "RL")
ALPHAS = (0.5, 1.0, 2.0, 4.0)


@dataclass
class DemoResult:
    """What the demo produced and the numbers its closing summary prints."""

    out_dir: Path
    report: Path
    share_by_block: pd.DataFrame  # block × run, update share at the final step
    energy_k1: dict[str, float]  # run → energy-weighted energy_k1 of Δ_T over matrices
    alignment_first: dict[str, tuple[int, float]]  # run → (first power-of-two step, align_k1)
    replay_steps_saved: int
    replay_accepted: int
    online: dict[str, Any]
    verdict: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)


def _final(df: pd.DataFrame) -> pd.DataFrame:
    cum = df[df["span"] == "cumulative"]
    return cum[cum["step"] == cum["step"].max()]


def energy_weighted(df: pd.DataFrame, column: str) -> float:
    """Mean of a spectrum metric over matrix rows, weighted by ‖Δ‖_F²."""
    return weighted_mean(df[column], df["update_norm"].astype(float) ** 2)


def first_power_of_two(df: pd.DataFrame) -> int:
    """The first saved step at or after 1 (EffOPD's first extrapolation point)."""
    return int(df.loc[df["step"] >= 1, "step"].min())


def alignment_at(df: pd.DataFrame, step: int, k: int = 1) -> float:
    """Energy-weighted mean of left and right top-k alignment with the final update."""
    cum = df[(df["span"] == "cumulative") & (df["step"] == step)]
    return 0.5 * (
        energy_weighted(cum, f"align_left_k{k}") + energy_weighted(cum, f"align_right_k{k}")
    )


def steps_saved(history: pd.DataFrame) -> tuple[int, int]:
    """(Σ over scheduled steps of equivalent_step − step for the last accepted candidate, accepted)."""
    acc = history[history["accepted"].fillna(False).astype(bool) & (history["candidate"] > 0)]
    saved = 0
    for step, g in acc.groupby("step"):
        eq = g.sort_values("candidate")["equivalent_step"].iloc[-1]
        if pd.notna(eq):
            saved += max(0, int(eq) - int(step))
    return saved, len(acc)


def _verdict(
    frames: dict[str, pd.DataFrame], energy: dict[str, float], align: dict[str, tuple[int, float]]
) -> list[str]:
    """Plain sentences comparing OPD with RL, saying so when the toy does not show the paper's finding."""
    opd, rl = LABELS
    mlp = {
        lab: float(_final(df).loc[_final(df)["block"] == "mlp", "update_share"].sum())
        for lab, df in frames.items()
    }
    claims = [
        (energy[opd] > energy[rl], "concentrate{s} its final update more in its top singular direction than RL",
         f"energy_k1 {energy[opd]:.3f} vs {energy[rl]:.3f}"),
        (mlp[opd] > mlp[rl], "put{s} a larger share of its update norm into the MLPs than RL",
         f"{mlp[opd]:.1%} vs {mlp[rl]:.1%}"),
        (align[opd][1] > align[rl][1], "settle{s} on its final update direction earlier than RL",
         f"top-1 alignment with the final update at the first saved step {align[opd][1]:.3f} vs {align[rl][1]:.3f}"),
    ]  # fmt: skip
    return [
        f"OPD {text.format(s='s') if held else 'does NOT ' + text.format(s='')} ({numbers})."
        for held, text, numbers in claims
    ]


def run_demo(
    out_dir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = 1,
) -> DemoResult:
    """Train or reuse the demo runs, then analyse, extrapolate, replay and report on them."""
    out = Path(out_dir).expanduser().resolve()
    t: dict[str, float] = {}
    t0 = time.perf_counter()
    runs = generate_runs(out / "runs", quick=quick, seed=seed, progress=progress)
    t["train"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    opd = open_run(runs.opd)
    sched = replay_schedule(opd.steps)
    mid_step, mid_anchor = sched[len(sched) // 2]
    error_files = []
    for alpha in ALPHAS:
        path, _ = extrapolate(
            opd,
            mid_step,
            anchor=mid_anchor,
            alpha=alpha,
            out=out / "extrapolate" / f"alpha-{alpha:g}",
            evaluate=True,
            overwrite=True,
        )
        error_files.append(path / ERRORS_FILE)
    t["extrapolate"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    rep = replay(
        opd, "opdlens.demo:accuracy", out=out / "replay-opd", overwrite=True, progress=progress
    )
    t["replay"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    sources = load_sources(
        [runs.opd, runs.rl],
        out / "analysis",
        labels=list(LABELS),
        replay=out / "replay-opd",
        errors=error_files,
        analyze_options=AnalyzeOptions(workers=workers),
        progress=progress,
    )
    t["analyze"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    report = write_report(
        sources,
        out / "report",
        title="opdlens demo: OPD vs RL on a tiny addition model",
        options={"quick": quick, "seed": seed},
    )
    t["report"] = time.perf_counter() - t0

    frames = {rm.label: rm.frame for rm in sources.runs}
    share = pd.concat(
        {
            lab: summarize(_final(df), by=("block",)).set_index("block")["update_share"]
            for lab, df in frames.items()
        },
        axis=1,
    ).fillna(0.0)
    energy = {lab: energy_weighted(_final(df), "energy_k1") for lab, df in frames.items()}
    align = {}
    for lab, df in frames.items():
        s = first_power_of_two(df)
        align[lab] = (s, alignment_at(df, s))
    saved, accepted = steps_saved(rep.history)
    online = json.loads(runs.online_path.read_text())
    result = DemoResult(
        out,
        report,
        share,
        energy,
        align,
        saved,
        accepted,
        online,
        _verdict(frames, energy, align),
        t,
    )
    write_text_atomic(out / "demo_summary.txt", format_summary(result))
    return result


def format_summary(r: DemoResult) -> str:
    """The closing summary the demo prints."""
    lines = [
        "opdlens demo — OPD vs RL from the same student start",
        "",
        "update share by block at the final step:",
    ]
    lines.append(r.share_by_block.to_string(float_format=lambda x: f"{x:.3f}"))
    lines.append("")
    for lab in LABELS:
        s, a = r.alignment_first[lab]
        lines.append(
            f"{lab}: energy_k1 of the final update {r.energy_k1[lab]:.3f}; top-1 alignment with the final update at step {s}: {a:.3f}"
        )
    lines += ["", *r.verdict, ""]
    lines.append(
        f"EffOPD replay on the OPD run (scorer: held-out accuracy): {r.replay_accepted} candidate(s) accepted, {r.replay_steps_saved} training step(s) saved by the accepted jumps (equivalent_step − step)."
    )
    lines.append(f"  {OFFLINE_NOTE}")
    on = r.online
    plain, eff = on.get("plain_steps_to_target"), on.get("effopd_steps_to_target")
    speed = f"{plain / eff:.2f}×" if plain and eff else "n/a (a run never reached the target)"
    lines.append(
        f"Online EffOPD vs plain OPD: steps to reach {on.get('target_accuracy', math.nan):.3f} accuracy (90% of plain OPD's final): plain {plain}, with EffOPD {eff} — speed-up {speed}."
    )
    lines += ["", f"report: {r.report}"]
    return "\n".join(lines)
