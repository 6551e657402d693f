"""`opdlens demo` end to end: train (or reuse) the runs, analyse, extrapolate, replay, draw, report."""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import pandas as pd

from ..analysis.findings import GroupFindings, ablation_sentence
from ..analysis.foresight import foresight_sentence
from ..analysis.foresight_write import write_foresight
from ..analysis.frame import summarize
from ..analysis.lenses import OverlapFinding, lens_lines, overlap_findings
from ..analysis.stats import mean_sd
from ..extrapolation.ablate import Ablation, ablate
from ..extrapolation.extrapolate import ERRORS_FILE, extrapolate
from ..extrapolation.replay import OFFLINE_NOTE, replay
from ..io.paths import write_text_atomic
from ..report.load import load_sources, shown_runs
from ..report.side_inputs import load_online_effopd
from ..report.sources import ReportOptions, SourceOptions, Sources
from ..report.tables import write_tables
from ..run import Run, open_run
from ..schedule import replay_schedule
from ..viz.report import write_report
from .runs import DemoRuns, generate_runs
from .settings import SPARSITY_DTYPE, analyze_options

T = TypeVar("T")

LABELS = ("OPD", "RL")
ALPHAS = (0.5, 1.0, 2.0, 4.0)
ABLATE_RANKS = (1, 2, 4, 8)
WATCH_DIR = "watch"  # `opdlens watch` of the first OPD run while it trains (demo.watching)


@dataclass
class DemoResult:
    """What the demo produced and the numbers its closing summary prints."""

    out_dir: Path
    report: Path
    groups: dict[str, list[str]]  # method → its runs' labels
    findings: GroupFindings  # the claims' numbers per run and per method
    share_by_block: pd.DataFrame  # block × method, update share at the final step, mean ± sd
    replay_steps_saved: int
    replay_accepted: int
    online: dict[str, Any]
    verdict: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    foresight: pd.DataFrame | None = None  # opdlens.foresee of each method's first run, `run` col
    ablation: dict[str, Ablation] = field(default_factory=dict)  # first run's label → ablate
    lenses: GroupFindings | None = None  # lenses.lens_findings: changed_frac, principal energy
    overlap: list[OverlapFinding] = field(default_factory=list)  # each method's seeds' overlap
    lens_verdict: list[str] = field(default_factory=list)  # lenses.lens_lines
    watch_line: str = ""  # watch_sentence: what `opdlens watch` followed while the runs trained

    def foresight_lines(self) -> list[str]:
        """One line per method: when one extrapolation starts beating standing still."""
        if self.foresight is None:
            return []
        return [f"{run}: {foresight_sentence(df.drop(columns='run'))}"
                for run, df in self.foresight.groupby("run", sort=False)]  # fmt: skip

    def timings_line(self) -> str:
        """Where the demo's wall-clock time went, phase by phase, in the order they ran."""
        parts = [f"{name} {_duration(sec)}" for name, sec in self.timings.items()]
        total = _duration(sum(self.timings.values()))
        return f"time by phase (wall clock): {', '.join(parts)}; total {total}"

    def ablation_lines(self) -> list[str]:
        """One line per method: which block's update is worth most."""
        return [f"{run}: {ablation_sentence(a.ablation)}" for run, a in self.ablation.items()]

    @property
    def replicates(self) -> int:
        """Runs per method."""
        return len(next(iter(self.groups.values())))


def _final(df: pd.DataFrame) -> pd.DataFrame:
    cum = df[df["span"] == "cumulative"]
    return cum[cum["step"] == cum["step"].max()]


def steps_saved(history: pd.DataFrame) -> tuple[int, int]:
    """(Σ over scheduled steps of equivalent_step − step for the last accepted candidate, accepted)."""
    acc = history[history["accepted"].fillna(False).astype(bool) & (history["candidate"] > 0)]
    saved = 0
    for step, g in acc.groupby("step"):
        eq = g.sort_values("candidate")["equivalent_step"].iloc[-1]
        if pd.notna(eq):
            saved += max(0, int(eq) - int(step))
    return saved, len(acc)


def run_labels(runs: DemoRuns) -> dict[str, list[tuple[str, Path]]]:
    """Method → (label, run directory) per replicate: OPD, RL alone, else OPD-1, OPD-2, …"""
    out = {}
    for method in LABELS:
        dirs = runs.replicates[method.lower()]
        out[method] = [(method if len(dirs) == 1 else f"{method}-{i + 1}", d)
                       for i, d in enumerate(dirs)]  # fmt: skip
    return out


def share_table(frames: dict[str, pd.DataFrame], groups: dict[str, list[str]]) -> pd.DataFrame:
    """Update share per block at the final step: mean ± sd over each method's runs."""
    shares = pd.concat(
        {run: summarize(_final(frames[run]), by=("block",)).set_index("block")["update_share"]
         for runs in groups.values() for run in runs},
        axis=1,
    ).fillna(0.0)  # fmt: skip
    return pd.DataFrame(
        {g: [mean_sd(shares.loc[b, runs].to_numpy(float)).format() for b in shares.index]
         for g, runs in groups.items()},
        index=shares.index,
    )  # fmt: skip


def _extrapolate(opd: Run, out: Path) -> list[Path]:
    """One-shot extrapolation of the first OPD run at the middle of its schedule, per α."""
    sched = replay_schedule(opd.steps)
    mid_step, mid_anchor = sched[len(sched) // 2]
    files = []
    for alpha in ALPHAS:
        path, _ = extrapolate(
            opd, mid_step, anchor=mid_anchor, alpha=alpha,
            out=out / "extrapolate" / f"alpha-{alpha:g}", evaluate=True, overwrite=True,
        )  # fmt: skip
        files.append(path / ERRORS_FILE)
    return files


def _replay(opd: Run, out: Path, progress: bool) -> pd.DataFrame:
    """EffOPD replay of the first OPD run, scored by held-out accuracy; its history."""
    rep = replay(
        opd, "opdlens.demo:accuracy", out=out / "replay-opd", overwrite=True, progress=progress
    )
    return rep.history


def _shown(labelled: dict[str, list[tuple[str, Path]]]) -> dict[str, tuple[str, Path]]:
    """method → (label, path) of the run that stands for it (the report's shown_runs)."""
    groups = {method: [lab for lab, _ in pairs] for method, pairs in labelled.items()}
    paths = {lab: path for pairs in labelled.values() for lab, path in pairs}
    shown = shown_runs(list(paths), groups)
    return {method: (lab, paths[lab]) for method, lab in zip(groups, shown, strict=True)}


def _foresee(labelled: dict[str, list[tuple[str, Path]]], out: Path) -> pd.DataFrame:
    """opdlens foresee on the first run of each method, written to out/foresight/<method>/."""
    frames = []
    for method, (label, path) in _shown(labelled).items():
        df, _ = write_foresight(open_run(path), out / "foresight" / method.lower(),
                                overwrite=True, workers=1)  # fmt: skip
        frames.append(df.assign(run=label))
    return pd.concat(frames, ignore_index=True)


def _ablate(
    labelled: dict[str, list[tuple[str, Path]]], out: Path, jobs: int, progress: bool
) -> dict[str, Ablation]:
    """opdlens ablate by block with ranks on each method's first run at its final step."""
    result = {}
    for method, (label, path) in _shown(labelled).items():
        run = open_run(path)
        # Re-running the demo resumes: the scores of the same run, step and scorer are reused.
        result[label] = ablate(
            run, run.steps[-1], "opdlens.demo:accuracy", by="block", ranks=ABLATE_RANKS,
            jobs=jobs, out=out / "ablation" / method.lower(), progress=progress,
        )  # fmt: skip
    return result


def _analyse(
    labelled: dict[str, list[tuple[str, Path]]], out: Path, side: SourceOptions, progress: bool
) -> Sources:
    """Analyse every run (metrics, spectra) with the side inputs: replay, extrapolation errors,
    foresight, ablation and the online EffOPD comparison; groups are the methods."""
    pairs = [pair for method in labelled.values() for pair in method]
    groups = {method: [lab for lab, _ in pairs] for method, pairs in labelled.items()}
    options = dataclasses.replace(
        side, paths=tuple(d for _, d in pairs), labels=tuple(lab for lab, _ in pairs),
        groups=groups, replay=out / "replay-opd",
    )  # fmt: skip
    sources = load_sources(options, out / "analysis", progress=progress)
    write_tables(sources, out / "analysis", {"labels": sources.labels, "groups": groups})
    return sources


def _report(sources: Sources, out: Path, quick: bool, seed: int) -> Path:
    """The HTML report, with the groups section, grouped figures and the online EffOPD result."""
    assert sources.groups is not None
    n = len(next(iter(sources.groups.values())))
    seeds = "1 seed per method (--quick)" if n == 1 else f"{n} seeds per method"
    title = f"opdlens demo: OPD vs RL on a tiny addition model, {seeds}"
    record = {"quick": quick, "seed": seed, "replicates": n}
    return write_report(sources, out / "report", ReportOptions(title=title, record=record))


def run_demo(
    out_dir: str | Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    workers: int | None = 1,
) -> DemoResult:
    """Train or reuse the demo runs, then analyse, extrapolate, replay and report on them.

    workers: processes for training the runs and for the analysis.
    """
    out = Path(out_dir).expanduser().resolve()
    t: dict[str, float] = {}

    def timed(name: str, func: Callable[..., T], *args: Any) -> T:
        t0 = time.perf_counter()
        try:
            return func(*args)
        finally:
            t[name] = time.perf_counter() - t0

    runs = timed("train", lambda: generate_runs(out / "runs", quick=quick, seed=seed,
                                                progress=progress, workers=workers or 1,
                                                watch=out / WATCH_DIR))  # fmt: skip
    opd = open_run(runs.opd)
    errors = timed("extrapolate", _extrapolate, opd, out)
    history = timed("replay", _replay, opd, out, progress)
    labelled = run_labels(runs)
    foresight = timed("foresee", _foresee, labelled, out)
    ablation = timed("ablate", _ablate, labelled, out, workers or 1, progress)
    online_run = load_online_effopd(runs.online_path, "OPD, first seed, plain vs online EffOPD")
    side = SourceOptions(
        (), errors=tuple(errors), ablation=ablation, foresight=foresight, online=(online_run,),
        analyze=analyze_options(workers),
        overlap=True,
    )  # fmt: skip
    sources = timed("analyze", _analyse, labelled, out, side, progress)
    report = timed("report", _report, sources, out, quick, seed)
    assert sources.groups is not None and sources.findings is not None  # the methods are groups
    groups, findings = dict(sources.groups), sources.findings
    frames = {rm.label: rm.frame for rm in sources.runs}
    saved, accepted = steps_saved(history)
    online = json.loads(runs.online_path.read_text())
    # With one seed per method there is no pair to compare: the report has no overlap findings.
    pairs = list(sources.overlap_findings) or overlap_findings(sources.overlap, groups)
    assert sources.lens_findings is not None
    result = DemoResult(
        out, report, groups, findings, share_table(frames, groups), saved, accepted, online,
        list(sources.claims), t, foresight, ablation, sources.lens_findings, pairs,
        lens_lines(sources.lens_findings, pairs), watch_sentence(runs, out / WATCH_DIR),
    )  # fmt: skip
    write_text_atomic(out / "demo_summary.txt", format_summary(result))
    return result


def _duration(seconds: float) -> str:
    """'0.4 s', '12 s', '3 min 05 s'."""
    if seconds < 10:
        return f"{seconds:.1f} s"
    whole = round(seconds)
    return f"{whole} s" if whole < 60 else f"{whole // 60} min {whole % 60:02d} s"


def online_sentence(online: dict[str, Any]) -> str:
    """The summary's line on online EffOPD vs plain OPD (online_effopd.json's record)."""
    target = online.get("target_accuracy", math.nan)
    plain, eff = online.get("plain_steps_to_target"), online.get("effopd_steps_to_target")
    curve = online.get("curves", {}).get("plain") or [[0, math.nan]]
    start = curve[0][1]
    head = (
        f"Online EffOPD vs plain OPD (first seed): target {target:.3f} accuracy "
        f"(90% of plain OPD's final, {online.get('plain_final_accuracy', math.nan):.3f})"
    )
    if not target > start:  # also when either is NaN
        return (
            f"{head} is not above the starting accuracy {start:.3f}, so the steps to reach it "
            "measure nothing: no speed-up is stated (plain OPD did not learn enough)."
        )
    if plain is None or eff is None:
        never = " and ".join(n for n, s in (("plain OPD", plain), ("EffOPD", eff)) if s is None)
        return f"{head}: {never} never reached it — no speed-up is stated."
    return (
        f"{head}, from {start:.3f} at step 0: reached at step {plain} by plain OPD and at step "
        f"{eff} with EffOPD — speed-up {plain / eff:.2f}×."
    )


def watch_sentence(runs: DemoRuns, out: Path) -> str:
    """The summary's line on the `opdlens watch` that followed the first OPD run as it trained."""
    from ..follow import LOG_FILE, REPORT_DIR
    from ..provenance import PROVENANCE_JSON

    run = f"{runs.opd.parent.name}/{runs.opd.name}"
    where = f"one line each in {out / LOG_FILE}; its report {out / REPORT_DIR / 'report.html'}"
    if runs.watched is not None:
        w = runs.watched
        early = "" if w.stopped == "until" else f" (it stopped early: {w.stopped})"
        return f"watch followed {run} while it trained: {len(w.steps)} steps{early}, {where}."
    prov = out / PROVENANCE_JSON
    if prov.is_file():
        record = json.loads(prov.read_text(encoding="utf-8"))
        if record.get("run_dir") == str(runs.opd.resolve()):
            steps = record.get("steps", [])
            return (f"watch followed {run} while an earlier demo trained it (its runs are reused): "
                    f"{len(steps)} steps, {where}.")  # fmt: skip
    return (f"watch: {run} was reused, not trained, so there was nothing to follow; a demo that "
            f"trains it follows it with opdlens watch into {out}.")  # fmt: skip


def format_summary(r: DemoResult) -> str:
    """The closing summary the demo prints."""
    n = r.replicates
    seeds = (
        "1 post-training seed per method (--quick): every claim is inconclusive at n = 1"
        if n == 1
        else f"{n} post-training seeds per method from one teacher and student start"
    )
    lines = [
        f"opdlens demo — OPD vs RL from the same student start; {seeds}",
        "",
        "update share by block at the final step" + (" (mean ± sd over seeds):" if n > 1 else ":"),
        r.share_by_block.to_string(),
        "",
        "The paper's claims (a claim holds or does not hold only when the 95 % interval of the "
        "difference of means excludes 0):",
        *(f"  {line}" for line in r.verdict),
        "",
        f"Sparsity, overlap and the base's principal directions (changed_frac and the overlap "
        f"count a weight as changed where W_0 and W_T differ once rounded to {SPARSITY_DTYPE}, "
        "as a checkpoint saved in it would store them; the runs are stored in float32, where "
        "nearly every weight changes):",
        *(f"  {line}" for line in r.lens_verdict),
        "",
    ]
    lines.append(
        f"EffOPD replay on the first OPD run (scorer: held-out accuracy): {r.replay_accepted} candidate(s) accepted, {r.replay_steps_saved} training step(s) saved by the accepted jumps (equivalent_step − step)."
    )
    lines.append(f"  {OFFLINE_NOTE}")
    lines.append(online_sentence(r.online))
    lines += [
        "",
        "Foresight (opdlens foresee, first seed of each method; whole model, anchor = the previous "
        "saved step, α = α*, against the last saved step):",
        *(f"  {line}" for line in r.foresight_lines()),
        "Marginal utility (opdlens ablate --by block at the final step, first seed of each method; "
        "scorer: held-out accuracy):",
        *(f"  {line}" for line in r.ablation_lines()),
        "",
        *([r.watch_line] if r.watch_line else []),
        f"report: {r.report}",
    ]
    return "\n".join(lines)
