"""`opdlens ablate`: what each group's update is worth, scored on θ_0 + Δ_T with parts removed.

design.md, "Foresight and marginal utility": for each group g, drop_g = S(θ_0 + Δ_T − Δ_T|g),
only_g = S(θ_0 + Δ_T|g), utility_g = S(θ_T) − drop_g; the rank curve scores θ_0 + rank-k(Δ_T).
Every candidate is written like step T by io.like.write_like into a temporary directory,
scored and removed; each score is saved as it arrives, so a killed ablation resumes.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import re
import tempfile
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from ..devices import check_device, ieee_float32, prepare
from ..errors import OptionError
from ..io.keep import keep_candidate, kept
from ..io.like import write_like
from ..io.paths import (
    check_output,
    output_dir,
    read_marker,
    remove_stale,
    temp_name,
)
from ..progress import Progress
from ..provenance import checkpoint_record, content_hash, record, write_results
from ..run import Run
from ..selection import select_tensors
from .ablate_parts import (
    CANDIDATES_DIR,
    Candidate,
    Factors,
    Group,
    ScoreBook,
    candidate_producer,
    candidates_dir,
    check_by,
    group_tensors,
    update_norms,
)
from .scorers import Scorer, allow_scorers, make_scorer, remove_copy, stop_scorers

if TYPE_CHECKING:
    import pandas as pd

logger = logging.getLogger(__name__)

__all__ = [
    "ABLATION_COLUMNS",
    "CANDIDATES_DIR",
    "MAX_RANK",
    "MAX_RANKS",
    "MODES",
    "RANK_COLUMNS",
    "SCORES_FILE",
    "Ablation",
    "ablate",
]

MODES = ("drop", "only", "both")
_KEEP = "ablate --keep"  # how errors about kept candidates name the command
SCORES_FILE = "scores.json"
ABLATION_COLUMNS = ["group", "update_share", "rel_update_norm", "score_full", "score_base",
                    "score_drop", "score_only", "utility", "step", "by", "layer", "block",
                    "tensors"]  # fmt: skip
RANK_COLUMNS = ["k", "score", "energy_k", "step"]
_TEMP_STEM = r"candidate-[A-Za-z0-9_.-]+"
MAX_RANK = 2**24  # above any matrix's min(rows, cols); larger k change nothing
MAX_RANKS = 1024  # each rank is one candidate checkpoint, written and scored


class Ablation(NamedTuple):
    """One row per group (`ablation`) and one per rank k (`rank_curve`, empty without ranks)."""

    ablation: pd.DataFrame
    rank_curve: pd.DataFrame


@ieee_float32()
def ablate(
    run: Run,
    step: int,
    scorer: str | Callable[[Path], float] | Scorer | None = None,
    *,
    scorer_cmd: str | None = None,
    scorer_timeout: float | None = None,
    by: str | Sequence[str] = "block",
    mode: str = "both",
    ranks: Iterable[int] | None = None,
    jobs: int = 1,
    out: str | Path | None = None,
    keep: bool = False,
    overwrite: bool = False,
    progress: bool = False,
    device: str = "cpu",
) -> Ablation:
    """Score θ_T, θ_0, θ_T without each group's update ("drop") and with only it ("only").

    Groups partition the floating-point tensors by `by` (block, layer, "layer,block", kind;
    tensors outside any layer group by block). `ranks` adds θ_0 + rank-k(Δ_T) per k, truncating
    every matrix of every update (`analysis.matrices`: stacked experts per expert, conv kernels
    as (out, rest)) and keeping vectors whole. With `out`,
    ablation.csv/.parquet, rank_curve.csv/.parquet (with ranks), provenance.json and the scores
    file go there; re-running into the same `out` reuses the scores of the same run, step and
    scorer. `keep` keeps each candidate under out/candidates/. `jobs` scores that many
    candidates at once (threads). `device` is where the rank curve's SVDs run ('cpu', 'cuda',
    'cuda:N').

    Raises:
        OptionError: an unknown `by` or `mode`, bad ranks or jobs, `keep` without `out`.
        ScorerError: the scorer raised, timed out or gave no number (scores so far are kept).
    """
    by = check_by(by)
    if mode not in MODES:
        raise OptionError(
            f"The 'mode' parameter of ablate (--mode) must be one of {', '.join(MODES)}. "
            f"Got {mode!r} instead."
        )
    ks = _check_ranks(ranks)
    device = check_device(device)
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise OptionError(
            f"The 'jobs' parameter of ablate (--jobs) must be a whole number ≥ 1; got {jobs!r}."
        )
    if keep and out is None:
        raise OptionError("keep=True (--keep) keeps candidates under out; give out=DIR (--out).")
    if step == 0 or step not in run.steps:
        raise OptionError(
            f"Step {step} is not a saved step of the run; saved steps are {run.steps}. Give "
            "--step T of a checkpoint after the base."
        )
    groups = group_tensors(run, by)
    inputs = run.input_paths
    if out is not None:
        path = check_output(out, inputs=inputs, overwrite=overwrite, reuse=True, allow_empty=True)
        marker = read_marker(path)
        if marker is not None and marker.get("command") != "ablate" and not overwrite:
            raise OptionError(
                f"--out {path} holds the output of `opdlens {marker.get('command')}`, not of "
                "ablate, so it cannot be resumed. Choose a new directory, or pass --overwrite."
            )
    hindsight = isinstance(scorer, str) and scorer == "hindsight"
    judge = make_scorer(
        scorer, command=scorer_cmd, timeout=scorer_timeout, run=run,
        tensors=select_tensors(run) if hindsight else (),
    )  # fmt: skip
    job = _Job(run, step, judge, by, mode, ks, groups, jobs, keep, progress, device)
    prepare(device)  # before any scoring thread makes the first CUDA solver call
    if out is None:
        with tempfile.TemporaryDirectory(prefix="opdlens-ablate-") as work:
            return job.execute(Path(work), None)
    # Resuming is the point of re-running into the same directory; --overwrite starts afresh.
    with output_dir(
        out, "ablate", inputs=inputs, overwrite=overwrite, reuse=not overwrite, keep_if_failed=True
    ) as out_dir:
        return job.execute(out_dir, out_dir)


def _check_ranks(ranks: Iterable[int] | None) -> list[int]:
    if ranks is None:
        return []
    values = list(ranks)
    bad = [k for k in values if isinstance(k, bool) or not isinstance(k, int) or not 1 <= k < 2**63]
    if bad or not values:
        raise OptionError(
            f"The 'ranks' parameter of ablate (--ranks) must be whole numbers ≥ 1 and < 2⁶³, "
            f"e.g. 1,2,4,8 (a rank past a matrix's size keeps its update whole). Got {values!r} "
            "instead."
        )
    big = [k for k in values if k > MAX_RANK]
    if big or len(set(values)) > MAX_RANKS:
        got = f"{big[0]}" if big else f"{len(set(values))} ranks"
        raise OptionError(
            f"The 'ranks' parameter of ablate (--ranks) takes at most {MAX_RANKS} ranks, each "
            f"from 1 to {MAX_RANK} (a k at or above a matrix's min(rows, cols) keeps it whole); "
            f"got {got}. Each rank is one more candidate written and scored."
        )
    return sorted(set(values))


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.]+", "-", text).strip("-")


def _unique_dirnames(candidates: list[Candidate]) -> list[Candidate]:
    """Candidates whose directory names are distinct and short.

    Two groups can slug alike ('foo bar', 'foo-bar'), and a long name would pass the file
    system's limit: those get a hash of their key appended, the same on every run.
    """
    counts = Counter(c.dirname for c in candidates)
    out = []
    for c in candidates:
        if counts[c.dirname] > 1 or len(c.dirname) > 80:
            digest = hashlib.sha256(c.key.encode()).hexdigest()[:10]
            c = dataclasses.replace(c, dirname=f"{c.dirname[:60]}-{digest}")
        out.append(c)
    return out


class _Job:
    """One ablation: its candidates, scored (or reused) and tabulated."""

    def __init__(
        self, run: Run, step: int, judge: Scorer, by: str, mode: str, ks: list[int],
        groups: list[Group], jobs: int, keep: bool, progress: bool, device: str = "cpu",
    ) -> None:  # fmt: skip
        self.run, self.step, self.judge = run, step, judge
        self.by, self.mode, self.ks = by, mode, ks
        self.groups, self.jobs, self.keep, self.progress = groups, jobs, keep, progress
        self.grouped = {n for g in groups for n in g.tensors}
        self.device = device
        self.factors: Factors | None = None
        self._factors_lock = threading.Lock()

    def candidates(self) -> list[Candidate]:
        everything = frozenset(self.grouped)
        t = self.step
        out = [Candidate("full", "full", f"step {t} (full update)", everything),
               Candidate("base", "base", "the base (no update)", frozenset())]  # fmt: skip
        for g in self.groups:
            slug = f"{_slug(self.by)}-{_slug(g.name)}"
            if self.mode in ("drop", "both"):
                out.append(Candidate(f"drop:{self.by}:{g.name}", f"drop-{slug}",
                                     f"step {t} without the update of {g.name}",
                                     everything - set(g.tensors)))  # fmt: skip
            if self.mode in ("only", "both"):
                out.append(Candidate(f"only:{self.by}:{g.name}", f"only-{slug}",
                                     f"step {t} with only the update of {g.name}",
                                     frozenset(g.tensors)))  # fmt: skip
        out += [
            Candidate(f"rank:{k}", f"rank-{k}", f"step {t} at rank {k}", rank=k) for k in self.ks
        ]
        return _unique_dirnames(out)

    def _factors(self) -> Factors:
        with self._factors_lock:
            if self.factors is None:
                names = sorted(self.grouped)
                self.factors = Factors(self.run, self.step, names, max(self.ks), self.device)
            return self.factors

    def execute(self, work: Path, out_dir: Path | None) -> Ablation:
        remove_stale(work, _TEMP_STEM)
        identity = {
            "step": self.step, "scorer": self.judge.label,
            # Every byte, as the factor cache keys W_0 and W_t: size and mtime can lie.
            "base": content_hash(self.run.base),
            "checkpoint": content_hash(self.run.checkpoint(self.step)),
        }  # fmt: skip
        book = ScoreBook(None if out_dir is None else out_dir / SCORES_FILE, identity)
        keep_dir = None if out_dir is None or not self.keep else candidates_dir(out_dir)
        warnings = list(book.warnings) + self.judge.schedule_warnings([self.step])
        todo = [
            c for c in self.candidates()
            if book.get(c.key) is None or (keep_dir and not kept(keep_dir / c.dirname, _KEEP))
        ]  # fmt: skip
        self._score(todo, book, work, keep_dir)
        for w in warnings:
            logger.warning(w)
        result = self._frames(book.scores, warnings, len(book.reused))
        if out_dir is not None:
            self._write(out_dir, result, warnings, len(book.reused))
        return result

    def _score(
        self, todo: list[Candidate], book: ScoreBook, work: Path, keep_dir: Path | None
    ) -> None:
        def one(c: Candidate) -> None:
            tmp = work / temp_name(f"candidate-{c.dirname}")
            try:
                factors = self._factors() if c.rank is not None else None
                produce = candidate_producer(self.run, self.step, self.grouped, c, factors)
                write_like(
                    self.run.checkpoint(self.step), tmp, produce, metadata=self._metadata(c),
                    protected=self.run.input_paths, config_dir=self.run.base.config_dir,
                    desc=c.label,
                )  # fmt: skip
                if not book.has(c.key):
                    score = self.judge.score(tmp, c.label)
                    book.put(c.key, score)
                    logger.info("%s: score %.6g", c.label, score)
                if keep_dir is not None:
                    keep_candidate(tmp, keep_dir / c.dirname, _KEEP)
            finally:
                remove_copy(tmp)  # a scorer may have made it read-only

        allow_scorers()
        bar = Progress(len(todo), f"ablate step {self.step}", enabled=self.progress)
        ticks = threading.Lock()

        def tick(_: object) -> None:
            with ticks:
                bar.update()

        try:
            if self.jobs == 1 or len(todo) < 2:
                for c in todo:
                    one(c)
                    tick(None)
                return
            pool = ThreadPoolExecutor(self.jobs, thread_name_prefix="opdlens-ablate")
            try:
                futures = [pool.submit(one, c) for c in todo]
                for f in futures:
                    f.add_done_callback(tick)
                wait(futures, return_when=FIRST_EXCEPTION)
            except BaseException:  # Ctrl-C, SIGTERM: end the running scorers, not wait for them
                stop_scorers()
                raise
            finally:  # after a failure or an interrupt, start no other candidate
                pool.shutdown(wait=True, cancel_futures=True)
        finally:
            bar.close()
        for f in futures:  # the first failure in candidate order, once every running one ended
            error = None if f.cancelled() else f.exception()
            if error is not None:
                raise error

    def _metadata(self, c: Candidate) -> dict[str, str]:
        formula = (
            f"theta_0 + rank_{c.rank}(theta_T - theta_0) per matrix" if c.rank is not None
            else "theta_0 + (theta_T - theta_0) on the kept tensors, theta_0 on the other grouped tensors"
        )  # fmt: skip
        return checkpoint_record(
            "ablate", step=self.step, candidate=c.key, by=self.by, scorer=self.judge.label,
            formula=formula, kept_tensors=len(c.kept) if c.rank is None else "all",
        )  # fmt: skip

    def _frames(self, scores: dict[str, float], warnings: list[str], reused: int) -> Ablation:
        import pandas as pd

        norms = update_norms(self.run, self.step, sorted(self.grouped))
        total = sum(d for d, _ in norms.values())
        full, base = scores["full"], scores["base"]
        rows = []
        for g in self.groups:
            d2 = sum(norms[n][0] for n in g.tensors)
            w2 = sum(norms[n][1] for n in g.tensors)
            drop = scores.get(f"drop:{self.by}:{g.name}", math.nan)
            rows.append({
                "group": g.name, "update_share": d2 / total if total > 0 else math.nan,
                "rel_update_norm": math.sqrt(d2) / math.sqrt(w2) if w2 > 0 else math.nan,
                "score_full": full, "score_base": base, "score_drop": drop,
                "score_only": scores.get(f"only:{self.by}:{g.name}", math.nan),
                "utility": full - drop, "step": self.step, "by": self.by, "layer": g.layer,
                "block": g.block, "tensors": len(g.tensors),
            })  # fmt: skip
        table = pd.DataFrame(rows, columns=ABLATION_COLUMNS).astype(
            {"layer": "Int64", "block": "string", "group": "string", "by": "string"}
        )
        curve = pd.DataFrame(
            [{"k": k, "score": scores[f"rank:{k}"], "energy_k": self._factors().energy_k(k),
              "step": self.step} for k in self.ks],
            columns=RANK_COLUMNS,
        ).astype({"k": "int64", "score": "float64", "energy_k": "float64", "step": "int64"})  # fmt: skip
        attrs: dict[str, Any] = {
            "scorer": self.judge.label, "oracle": self.judge.oracle, "step": self.step,
            "by": self.by, "mode": self.mode, "score_full": full, "score_base": base,
            "reused": reused, "warnings": warnings,
        }  # fmt: skip
        table.attrs.update(attrs)
        curve.attrs.update(attrs)
        return Ablation(table, curve)

    def _write(self, out: Path, result: Ablation, warnings: list[str], reused: int) -> None:
        tables = {"ablation": result.ablation} | (
            {"rank_curve": result.rank_curve} if self.ks else {}
        )
        options = {"step": self.step, "by": self.by, "mode": self.mode, "ranks": self.ks,
                   "jobs": self.jobs, "keep": self.keep}  # fmt: skip
        grouping = {g.name: list(g.tensors) for g in self.groups}
        untouched = sorted(set(self.run.checkpoint(self.step).names()) - self.grouped)
        prov = record(
            self.run, options, scorer=self.judge.label, oracle=self.judge.oracle,
            reused_scores=reused, warnings=warnings, groups=grouping,
            untouched_tensors=untouched,
            rank_svd=("top-k of each matrix of each update (analysis.matrices: per expert, "
                      "else (out, rest)) by analysis.linalg.top_k_svd(method='exact'), float64")
                     if self.ks else None,
            note=("Tensors without an update (integer buffers, tensors the base lacks) are "
                  "written as at step T in every candidate."),
        )  # fmt: skip
        write_results(out, tables, prov)
