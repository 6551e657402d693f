"""EffOPD replay from saved checkpoints: the power-of-two schedule of design.md, scored offline."""

from __future__ import annotations

import json
import logging
import math
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import OptionError
from ..io.keep import keep_candidate
from ..io.like import Produced, write_like
from ..io.paths import (
    check_output,
    output_dir,
    remove_stale,
    temp_name,
    write_text_atomic,
)
from ..provenance import checkpoint_record
from ..run import Checkpoint, Run
from ..schedule import EffOPDSchedule, replay_schedule
from ..selection import DEFAULT_MODULES, select_tensors
from .evaluate import ErrorTracker
from .extrapolate import extrapolation_producer
from .scorers import Scorer, allow_scorers, make_scorer, remove_copy, score_input

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "OFFLINE_NOTE",
    "ReplayResult",
    "replay",
    "replay_summary",
]

# Names of the temporary candidate directories replay works in (see io.paths.temp_name).
_TEMP_STEM = r"step-\d+-(?:candidate-\d+|saved)"
OFFLINE_NOTE = (
    "Offline replay cannot continue training from an accepted candidate: each scheduled step "
    "starts again from the checkpoint the run actually saved."
)


@dataclass
class ReplayResult:
    """The replay's history (one row per scored checkpoint) and the candidates kept."""

    history: pd.DataFrame
    accepted: list[Path] = field(default_factory=list)
    out: Path | None = None
    scorer: str = ""
    note: str = OFFLINE_NOTE
    warnings: list[str] = field(default_factory=list)


def replay(
    run: Run,
    scorer: str | Callable[[Path], float] | Scorer | None = None,
    *,
    scorer_cmd: str | None = None,
    scorer_timeout: float | None = None,
    max_candidates: int = 5,
    alpha0: float = 2.0,
    out: str | Path | None = None,
    dry_run: bool = False,
    modules: Iterable[str] | None = DEFAULT_MODULES,
    tensors: Sequence[str] | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> ReplayResult:
    """Replay EffOPD on a run's saved checkpoints (design.md, Extrapolation).

    Candidates are written to temporary directories, scored and removed; accepted ones are kept
    under `out/step-<t>-candidate-<k>` unless `dry_run`. history.csv and history.json go to
    `out` when it is given.

    Raises:
        ScorerError: the scorer raised, timed out or gave no number (no temporary dir is left).
    """
    schedule = EffOPDSchedule(alpha0, max_candidates)
    if out is None and not dry_run:
        raise OptionError(
            "replay keeps accepted candidates under --out DIR; give one, or --dry-run."
        )
    # Everything is checked before anything is created; --out's old contents go only then.
    inputs = run.input_paths
    if out is not None:
        check_output(out, inputs=inputs, overwrite=overwrite, allow_empty=True)
    selected = select_tensors(run, modules, tensors)
    judge = make_scorer(
        scorer, command=scorer_cmd, timeout=scorer_timeout, run=run, tensors=selected
    )
    steps = (run, judge, selected, schedule, dry_run, progress)
    if out is None:
        return _replay_steps(*steps, None)
    with output_dir(
        out, "replay", inputs=inputs, overwrite=overwrite, reuse=False, keep_if_failed=True
    ) as out_dir:
        return _replay_steps(*steps, out_dir)


def _replay_steps(
    run: Run, judge: Scorer, selected: Sequence[str], effopd: EffOPDSchedule,
    dry_run: bool, progress: bool, out_dir: Path | None,
) -> ReplayResult:  # fmt: skip
    """The replay loop; candidates are worked on in `out_dir` (or the system's temp directory)."""
    work = out_dir if out_dir is not None else Path(tempfile.gettempdir())
    remove_stale(work, _TEMP_STEM)
    allow_scorers()  # scorers run one at a time here: an interrupt kills the running one
    rows: list[dict[str, object]] = []
    accepted: list[Path] = []
    schedule = replay_schedule(run.steps)
    warnings = judge.schedule_warnings([step for step, _ in schedule])
    for w in warnings:
        logger.warning(w)
    for step, anchor in schedule:
        best = _score_saved(run, step, anchor, judge, work, selected, rows)
        for k, (alpha, multiple) in enumerate(effopd.alphas(), start=1):
            label = f"step {step} candidate {k} (alpha {alpha:.4g}, multiple {multiple:.4g})"
            tracker = ErrorTracker(run, step)
            tmp = work / temp_name(f"step-{step}-candidate-{k}")
            try:
                produce = extrapolation_producer(run, step, anchor, multiple, selected, tracker)
                meta = _metadata(step, anchor, k, alpha, multiple, judge)
                _write(run, run.checkpoint(step), tmp, produce, meta, progress, label)
                score = judge.score(tmp, label)
                better = score > best
                rows.append(_row(step, anchor, k, alpha, multiple, score, better, tracker))
                if better and not dry_run and out_dir is not None:
                    keep = out_dir / f"step-{step}-candidate-{k}"
                    keep_candidate(tmp, keep, "replay")
                    accepted.append(keep)
            finally:
                remove_copy(tmp)  # a scorer may have made it read-only
            logger.info("%s: score %.6g (%s)", label, score, "accepted" if better else "rejected")
            if not better:
                break
            best = score
    history = _frame(rows, run)
    history.attrs.update(
        scorer=judge.label, oracle=judge.oracle, note=OFFLINE_NOTE, warnings=warnings
    )
    if out_dir is not None:
        _write_history(out_dir, history, judge, warnings)
    return ReplayResult(history, accepted, out_dir, judge.label, warnings=warnings)


def _score_saved(
    run: Run, step: int, anchor: int, judge: Scorer, work: Path, selected: Sequence[str],
    rows: list[dict[str, object]],
) -> float:  # fmt: skip
    """Score the checkpoint the run saved at `step` (candidate 0, the bar to beat)."""
    ck = run.checkpoint(step)
    label = f"step {step} as saved (candidate 0)"
    tracker = ErrorTracker(run, step)
    tmp = work / temp_name(f"step-{step}-saved")
    try:
        # A copy in HF safetensors when the input is another layout, so every scorer reads one format.
        produce = extrapolation_producer(run, step, anchor, 0.0, selected, tracker)
        if ck.layout in ("hf-safetensors", "hf-safetensors-sharded"):
            for name in selected:
                produce(name)
            # Never the input itself: the scorer gets a private copy, removed after.
            score = score_input(judge, ck.path, label, tmp)
        else:
            _write(run, ck, tmp, produce, _metadata(step, anchor, 0, 0, 0, judge), False, label)
            score = judge.score(tmp, label)
    finally:
        remove_copy(tmp)
    rows.append(_row(step, anchor, 0, 0.0, 0.0, score, None, tracker))
    return score


def _write(
    run: Run, like: Checkpoint, tmp: Path, produce: Callable[[str], Produced],
    meta: dict[str, str], progress: bool, label: str,
) -> None:  # fmt: skip
    """Write one candidate like the step it extrapolates, outside every input of the run."""
    write_like(
        like, tmp, produce, metadata=meta, protected=run.input_paths,
        config_dir=run.base.config_dir, progress=progress, desc=label,
    )  # fmt: skip


def _metadata(
    step: int, anchor: int, k: int, alpha: float, multiple: float, judge: Scorer
) -> dict[str, str]:
    return checkpoint_record(
        "replay", step=step, anchor=anchor, candidate=k, alpha=repr(alpha),
        multiple=repr(multiple), scorer=judge.label, note=OFFLINE_NOTE,
        formula="theta_t + multiple * (theta_t - theta_anchor)",
    )  # fmt: skip


def _row(
    step: int, anchor: int, k: int, alpha: float, multiple: float, score: float,
    accepted: bool | None, tracker: ErrorTracker,
) -> dict[str, object]:  # fmt: skip
    row: dict[str, object] = {
        "step": step, "anchor": anchor, "candidate": k, "alpha": alpha, "multiple": multiple,
        "score": score, "accepted": accepted, "equivalent_step": tracker.equivalent_step(),
    }  # fmt: skip
    for s, err in tracker.rel_errors().items():
        row[f"rel_error_{s}"] = err
    return row


def _frame(rows: list[dict[str, object]], run: Run) -> pd.DataFrame:
    import pandas as pd

    columns = ["step", "anchor", "candidate", "alpha", "multiple", "score", "accepted",
               "equivalent_step"] + [f"rel_error_{s}" for s in run.steps]  # fmt: skip
    df = pd.DataFrame(rows, columns=columns)
    df = df.astype({"step": "int64", "anchor": "int64", "candidate": "int64", "alpha": "float64",
                    "multiple": "float64", "score": "float64", "accepted": "boolean",
                    "equivalent_step": "Int64"})  # fmt: skip
    # Drop error columns no row can have (steps with nothing saved after them).
    return df[[c for c in df.columns if not (c.startswith("rel_error_") and df[c].isna().all())]]


def replay_summary(history: pd.DataFrame) -> pd.DataFrame:
    """One narrow row per scored candidate: rel_error only against the next saved step.

    The full history holds rel_error against every later saved step (one column each).
    """
    import pandas as pd

    later = sorted(int(c.removeprefix("rel_error_")) for c in history if c.startswith("rel_error_"))
    nxt = [next((s for s in later if s > t), None) for t in history["step"]]
    rel = [math.nan if s is None else history[f"rel_error_{s}"].iloc[i] for i, s in enumerate(nxt)]
    out = history[["step", "candidate", "alpha", "score", "accepted"]].copy()
    out["next_step"] = pd.array(nxt, dtype="Int64")
    out["rel_error_next"] = pd.array(rel, dtype="float64")
    out["equivalent_step"] = history["equivalent_step"]
    return out


def _write_history(out: Path, history: pd.DataFrame, judge: Scorer, warnings: list[str]) -> None:
    write_text_atomic(out / "history.csv", history.to_csv(index=False))
    payload = {
        "scorer": judge.label,
        "oracle": judge.oracle,
        "note": OFFLINE_NOTE,
        "warnings": warnings,
        "rows": json.loads(history.to_json(orient="records")),
    }
    write_text_atomic(out / "history.json", json.dumps(payload, indent=2) + "\n")
