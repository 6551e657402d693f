"""Follow a run directory while a trainer writes it: analyse each checkpoint once it is complete.

Each new step is analysed alone through the factor cache and appended to metrics.parquet; the
provisional align_latest_* columns, foresight from the previous save and the report are then
rewritten. Every file is replaced atomically and provenance.json last, so the outputs are valid
up to the last step it lists whenever watch stops (or is killed), and a second watch resumes.
"""

from __future__ import annotations

import math
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._workers import ctrl_c_noted
from .analysis.options import AnalyzeOptions
from .errors import OpdlensError, OptionError, OutputError, PartialRunError

if TYPE_CHECKING:
    import pandas as pd

    from .run import Run

LOG_FILE = "watch.log"
REPORT_DIR = "report"
REFRESH_S = 30  # the live report reloads itself this often
PENDING_NOTE_S = 120.0  # a step pending this long (at least 5 looks) is reported, with why


@dataclass(frozen=True)
class WatchOptions:
    """How `watch` follows a run: poll interval (s), report, and when it stops."""

    interval: float = 30.0
    report: bool = True
    until: int | None = None  # stop once a step ≥ until is complete (steps after it are not read)
    idle_exit: float | None = None  # minutes without a new complete step
    base: str | Path | None = None
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.interval, (int, float)) and math.isfinite(self.interval)):
            raise OptionError(f"--interval takes seconds > 0; got {self.interval!r}.")
        if self.interval <= 0:
            raise OptionError(f"--interval takes seconds > 0; got {self.interval}.")
        if self.until is not None and self.until < 1:
            raise OptionError(f"--until takes a step ≥ 1; got {self.until}.")
        if self.idle_exit is not None and not (
            math.isfinite(self.idle_exit) and self.idle_exit > 0
        ):
            raise OptionError(f"--idle-exit takes minutes > 0; got {self.idle_exit}.")


@dataclass
class WatchResult:
    """What a watch left in its output directory, and why it stopped."""

    out: Path
    steps: list[int]
    frame: pd.DataFrame
    foresight: pd.DataFrame
    stopped: str  # 'until', 'idle', 'stopped' (the stop event) or 'interrupted'
    notes: list[str] = field(default_factory=list)


def watch(
    run_dir: str | Path,
    out: str | Path,
    options: AnalyzeOptions | None = None,
    following: WatchOptions | None = None,
    *,
    progress: bool = False,
    say: Callable[[str], None] | None = None,
    stop: threading.Event | None = None,
) -> WatchResult:
    """Analyse every checkpoint of `run_dir` as it becomes complete, until `following` says stop.

    Writes metrics.parquet/.csv (analyze's columns, but align_latest_* in place of the
    final-update ones), foresight.parquet/.csv, provenance.json and, with `report`,
    report/report.html, which reloads itself while watch runs. `say` gets one line per new step
    (default: stdout, and out/watch.log when stdout is not a terminal). Ctrl-C stops it cleanly;
    so does setting `stop` from another thread (e.g. when the training it follows fails): watch
    returns once the poll under way is done, with stopped 'stopped'.

    Raises:
        OptionError: a bad option, or `out` was watched with other options or another run.
        OpdlensError: the run cannot be analysed (e.g. no base: pass `base`).
    """
    from .io.paths import output_dir

    opts = options or AnalyzeOptions()
    follow = following or WatchOptions()
    run_path = Path(run_dir).expanduser().resolve()
    with output_dir(out, "watch", inputs=[run_path]) as path:
        w = _Watcher(run_path, path, opts, follow, progress, say, stop)
        stopped = w.loop()
        w.finish()
    return WatchResult(path, w.state.steps, w.state.frame, w.state.foresight, stopped, w.notes)


@dataclass
class _State:
    """What a watch has written so far: the single source of truth is provenance.json."""

    steps: list[int]
    paths: dict[int, str]
    frame: pd.DataFrame
    foresight: pd.DataFrame
    inputs: list[dict[str, Any]]
    warnings: list[str]


class _Watcher:
    def __init__(
        self, run_dir: Path, out: Path, options: AnalyzeOptions, follow: WatchOptions,
        progress: bool, say: Callable[[str], None] | None, stop: threading.Event | None = None,
    ) -> None:  # fmt: skip
        from .io.complete import Settling

        self.run_dir, self.out, self.opts, self.follow = run_dir, out, options, follow
        self.progress = progress
        self.stop = stop
        self.say = say or _Printer(out / LOG_FILE)
        self.settling = Settling()
        self.notes: list[str] = []
        self._noted: set[str] = set()
        self._skipped: set[int] = set()
        self._pending_since: dict[int, float] = {}
        self.state = _resume(out, run_dir, options)
        self.last_new = time.monotonic()
        self.reported = False

    # -- the loop ------------------------------------------------------------------------
    def loop(self) -> str:
        if self.state.steps:
            self.say(f"resuming {self.out}: steps {self.state.steps} already analysed")
        with ctrl_c_noted() as ctrl_c:
            return self._loop(ctrl_c)

    def _loop(self, ctrl_c: threading.Event) -> str:
        try:
            while True:
                if self._poll():
                    return "until"
                idle = time.monotonic() - self.last_new
                limit = None if self.follow.idle_exit is None else self.follow.idle_exit * 60
                if limit is not None and idle >= limit:
                    return "idle"
                wait = (
                    self.follow.interval
                    if limit is None
                    else min(self.follow.interval, limit - idle)
                )
                if self.stop is None:
                    time.sleep(max(wait, 0.0))
                elif self.stop.wait(max(wait, 0.0)):
                    return "stopped"
        except KeyboardInterrupt:
            ctrl_c.clear()  # handled here: an error after it (writing the report) is a bug
            return "interrupted"
        except Exception:
            # Ctrl-C inside a native read surfaces as another error (safetensors' get_tensor
            # raised ValueError: "could not determine the shape of object type ...Storage").
            if ctrl_c.is_set():
                ctrl_c.clear()
                return "interrupted"
            raise

    def _poll(self) -> bool:
        """Analyse what became complete; True once a step ≥ --until is complete."""
        from .io.complete import complete_steps

        complete, pending = complete_steps(self.run_dir, self.settling)
        self._waiting(complete, pending)
        for step in self.state.steps:
            if step not in complete and step not in pending:
                self._note(f"step {step}: its checkpoint is gone (deleted by the trainer?); "
                           "its metrics are kept.")  # fmt: skip
        until = self.follow.until
        new = [s for s in sorted(complete) if s > 0 and s not in self.state.steps]
        new = [s for s in new if until is None or s <= until]
        if new:
            run = self._open(complete, pending)
            for step in new:
                if run is None:
                    break
                try:
                    self._analyse(run, step)
                except (OpdlensError, OSError):
                    if run.checkpoint(step).path.is_dir():
                        raise
                    self._note(f"step {step}: its checkpoint was deleted while watch read it "
                               "(by the trainer?); skipped.")  # fmt: skip
                    self._skipped.add(step)
                    continue
                self.last_new = time.monotonic()
        left = [s for s in new if s not in self.state.steps and s not in self._skipped]
        return until is not None and any(s >= until for s in complete) and not left

    def _waiting(self, complete: dict[int, Path], pending: dict[int, str]) -> None:
        """Say once that the run has no checkpoint yet, and once per step that stays pending
        long after the look that first saw it (with the reason)."""
        if not complete and not pending:
            what = "no such directory yet" if not self.run_dir.exists() else "no checkpoint yet"
            self._note(f"waiting for {self.run_dir}: {what}.")
        now = time.monotonic()
        patience = max(5 * self.follow.interval, PENDING_NOTE_S)
        for step, reason in pending.items():
            first = self._pending_since.setdefault(step, now)
            if now - first >= patience:
                self._note(f"step {step} is still incomplete after {now - first:.0f} s: {reason}")
                self._pending_since[step] = math.inf  # said once
        for step in [s for s in self._pending_since if s not in pending]:
            del self._pending_since[step]

    def _open(self, complete: dict[int, Path], pending: dict[int, str]) -> Run | None:
        from .run import open_run

        try:
            return open_run(
                None, self.follow.base, checkpoints=complete,
                trust_pickle=self.follow.trust_pickle,
            )  # fmt: skip
        except OpdlensError as e:
            if any(not p.is_dir() for p in complete.values()):
                return None  # the trainer removed a checkpoint since the look: look again
            if not isinstance(e, PartialRunError) or self.follow.base is not None:
                raise
            if 0 in pending:
                return None  # the base checkpoint is still being written
            if 0 not in complete:
                raise PartialRunError(
                    f"{self.run_dir}: the run has no base (no step-0 checkpoint); pass --base "
                    "PATH, the model the run started from.",
                    found={},
                    missing="base (step 0)",
                    warnings=[],
                ) from None
            raise

    # -- one step ------------------------------------------------------------------------
    def _analyse(self, run: Run, step: int) -> None:
        import pandas as pd

        from .analysis.incremental import align_latest, analyse_step
        from .provenance import fingerprint

        cache = self.out / "cache"
        paths = {**self.state.paths, step: str(run.checkpoint(step).path)}
        result = analyse_step(run, step, self.opts, cache, paths, progress=self.progress)
        kept = self.state.frame
        frame = result.frame if kept.empty else pd.concat([kept, result.frame], ignore_index=True)
        frame = align_latest(frame, cache, paths, self.opts.ranks)
        steps = [*self.state.steps, step]
        fore = self.state.foresight
        ahead = self._foresight(run, steps)
        if ahead is not None:
            fore = pd.concat([fore, pd.DataFrame([ahead])], ignore_index=True)
        inputs = [*self.state.inputs, {"step": step, "path": paths[step],
                                       "fingerprint": fingerprint(run.checkpoint(step))}]  # fmt: skip
        if not self.state.inputs:
            inputs.insert(0, {"step": 0, "path": str(run.base.path),
                              "fingerprint": fingerprint(run.base)})  # fmt: skip
        warnings = list(dict.fromkeys([*self.state.warnings, *result.warnings]))
        self.state = _State(steps, paths, frame, fore, inputs, warnings)
        self._write()
        self.say(step_line(frame, step, ahead, self._previous_alignment(frame, step, paths)))
        if self.follow.report:
            self._report(refresh=REFRESH_S)

    def _foresight(self, run: Run, steps: list[int]) -> dict[str, float | int] | None:
        """foresee --anchor previous's row for the newest step (None: too few saves, or one gone)."""
        from .analysis.incremental import foresight_step

        saved = sorted(steps)[-3:]
        needed = [s for s in saved if s in run.checkpoints or s == 0]
        if len(saved) < 2:
            return None
        if needed != saved:
            self._note(f"no foresight for step {saved[-1]}: an earlier checkpoint is gone.")
            return None
        return foresight_step(run, saved, self.opts)

    def _previous_alignment(self, frame: pd.DataFrame, step: int, paths: dict) -> float:
        """Top-1 alignment of the newest update with the previous save's, ‖Δ‖²-weighted."""
        from .analysis.incremental import alignment_with

        earlier = [s for s in self.state.steps if s < step]
        if not earlier:
            return math.nan
        rows = frame[frame["step"] == step].reset_index(drop=True)
        a = alignment_with(rows, self.out / "cache", paths, earlier[-1], (1,))
        num = den = 0.0
        sqs = rows["update_norm"].astype("float64") ** 2
        for sq, left, right in zip(sqs, a["left_k1"], a["right_k1"], strict=True):
            if math.isfinite(left) and math.isfinite(right):
                num, den = num + sq * (left + right) / 2, den + sq
        return num / den if den > 0 else math.nan

    # -- outputs ---------------------------------------------------------------------------
    def _write(self) -> None:
        from .provenance import record, write_results

        s = self.state
        prov = record(
            None, self.opts.record(), run_dir=str(self.run_dir), steps=s.steps,
            checkpoints={str(k): v for k, v in s.paths.items()}, latest_step=s.steps[-1],
            provisional="align_latest_* use the newest analysed step as the final update",
            rows=len(s.frame), warnings=s.warnings, notes=self.notes,
        )  # fmt: skip
        prov["inputs"] = s.inputs
        # provenance.json last: a watch killed between files resumes from the steps it lists.
        write_results(self.out, {"metrics": s.frame, "foresight": s.foresight}, prov)

    def _report(self, refresh: int | None) -> None:
        from .report.load import from_frame
        from .report.sources import ReportOptions
        from .viz.report import write_report

        if not self.state.steps:
            return
        latest = self.state.steps[-1]
        label = self.run_dir.name
        sources = from_frame(report_frame(self.state.frame).assign(run=label))
        live = "live, " if refresh else ""
        title = f"opdlens watch: {label} ({live}alignment with step {latest}, the latest)"
        write_report(sources, self.out / REPORT_DIR, ReportOptions(title=title, refresh=refresh))
        self.reported = True

    def finish(self) -> None:
        """Rewrite the report without its reload, once watch has stopped."""
        if self.follow.report and self.state.steps:
            self._report(refresh=None)

    def _note(self, text: str) -> None:
        if text not in self._noted:
            self._noted.add(text)
            self.notes.append(text)
            self.say(f"note: {text}")


def report_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Watch's metrics in analyze's columns for the figures: align_* from align_latest_*,
    cos_to_final unknown (NaN)."""
    renamed = {c: c.replace("align_latest_", "align_") for c in frame.columns
               if c.startswith("align_latest_")}  # fmt: skip
    return frame.rename(columns=renamed).assign(cos_to_final=math.nan)


def step_line(
    frame: pd.DataFrame, step: int, foresight: dict[str, Any] | None, align_prev: float
) -> str:
    """One line for a new step: ‖Δ‖, the block with the largest share, energy_k1, top-1
    alignment with the previous save, α* from the previous save."""
    rows = frame[(frame["step"] == step) & (frame["span"] == "cumulative")]
    sq = rows["update_norm"].astype("float64") ** 2
    total = float(sq.sum())
    shares = sq.groupby(rows["block"]).sum()
    block = str(shares.idxmax()) if total > 0 else "—"
    share = float(shares.max()) / total if total > 0 else math.nan
    energy = math.nan
    if "energy_k1" in rows:
        ok = rows["energy_k1"].notna()
        den = float(sq[ok].sum())
        energy = float((sq[ok] * rows["energy_k1"][ok]).sum()) / den if den > 0 else math.nan
    alpha = None if foresight is None else foresight["alpha_star"]
    return (
        f"step {step}: |Δ| {_f(math.sqrt(total), '.4g')}  top block {block} "
        f"({_f(share, '.0%')})  energy_k1 {_f(energy, '.3f')}  "
        f"align_prev_k1 {_f(align_prev, '.3f')}  α* {_f(alpha, '.3g')}"
    )


def _f(x: float | None, spec: str) -> str:
    return "—" if x is None or not math.isfinite(x) else format(x, spec)


class _Printer:
    """Print a line; also append it to a log file when stdout is not a terminal."""

    def __init__(self, log: Path) -> None:
        self.log = log

    def __call__(self, line: str) -> None:
        stamped = f"{time.strftime('%H:%M:%S')} {line}"
        print(stamped, flush=True)
        if not sys.stdout.isatty():
            try:
                with self.log.open("a", encoding="utf-8") as f:
                    f.write(stamped + "\n")
            except OSError as e:
                raise OutputError(f"{self.log}: cannot append to the watch log ({e}).") from None


def _results_options(options: object) -> dict[str, Any] | None:
    """The options that decide the numbers (not how many workers or where they ran)."""
    if not isinstance(options, dict):
        return None
    skip = ("workers", "executor", "address", "device")
    return {str(k): v for k, v in options.items() if k not in skip}


def _resume(out: Path, run_dir: Path, options: AnalyzeOptions) -> _State:
    """The state a previous watch of `out` left (nothing: a fresh state)."""
    import json

    import pandas as pd

    from .provenance import PROVENANCE_JSON

    empty = _State([], {}, pd.DataFrame(), pd.DataFrame(), [], [])
    prov_path = out / PROVENANCE_JSON
    if not prov_path.is_file():
        return empty
    try:
        prov = json.loads(prov_path.read_text(encoding="utf-8"))
        steps = [int(s) for s in prov["steps"]]
        paths = {int(k): str(v) for k, v in prov["checkpoints"].items()}
        frame = pd.read_parquet(out / "metrics.parquet")
        fore_path = out / "foresight.parquet"
        fore = pd.read_parquet(fore_path) if fore_path.is_file() else pd.DataFrame()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise OptionError(
            f"{out}: cannot resume this watch ({type(e).__name__}: {e}); give another --out."
        ) from None
    if prov.get("run_dir") != str(run_dir):
        raise OptionError(
            f"{out} watched {prov.get('run_dir')}, not {run_dir}; give another --out to watch this run."
        )
    mine = _results_options(json.loads(json.dumps(options.record(), default=str))) or {}
    theirs = _results_options(prov.get("options"))
    if theirs != mine:
        changed = [
            f"{k}={None if theirs is None else theirs.get(k)!r} (now {v!r})"
            for k, v in mine.items()
            if theirs is None or theirs.get(k) != v
        ]
        raise OptionError(
            f"{out} was watched with other options: {', '.join(changed)}; resume with the same "
            "options or give another --out."
        )
    frame = frame[frame["step"].isin(steps)].reset_index(drop=True)
    if not fore.empty:
        fore = fore[fore["target_step"].isin(steps)].reset_index(drop=True)
    return _State(steps, paths, frame, fore, list(prov.get("inputs", [])),
                  list(prov.get("warnings", [])))  # fmt: skip


__all__ = ["WatchOptions", "WatchResult", "report_frame", "step_line", "watch"]
