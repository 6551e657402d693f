"""The built-in demo: a teacher, a weaker student, OPD and RL runs, and online EffOPD vs plain OPD."""

from __future__ import annotations

import json
import re
import shutil
from contextlib import nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from opdlens.demo.jobs import Job, Start, run_jobs, train_start
from opdlens.demo.model import save_checkpoint
from opdlens.demo.portable import run_portable
from opdlens.demo.settings import demo_settings, replicate_dir, replicate_seed
from opdlens.errors import OpdlensError
from opdlens.io.paths import write_text_atomic

if TYPE_CHECKING:
    from opdlens.follow import WatchResult

MANIFEST = "demo_manifest.json"
ONLINE = "online_effopd.json"
_FORMAT = 2  # 2: trained on the portable code path


@dataclass(frozen=True)
class OnlineComparison:
    """Steps plain OPD and OPD + online EffOPD need to reach 90 % of plain OPD's final accuracy."""

    target_accuracy: float
    plain_steps_to_target: int | None
    effopd_steps_to_target: int | None
    plain_final_accuracy: float
    effopd_final_accuracy: float
    history: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True)
class DemoRuns:
    """Where generate_runs put the teacher, the runs and the online comparison.

    opd and rl are the first replicates; replicates holds every run per method ("opd", "rl").
    watched is what `opdlens watch` left while opd trained (None: reused runs, or not asked).
    """

    out_dir: Path
    teacher: Path
    opd: Path
    rl: Path
    online_path: Path
    online: OnlineComparison
    replicates: dict[str, list[Path]] = field(default_factory=dict)
    watched: WatchResult | None = field(default=None, compare=False)


def _layout(
    out_dir: Path, online: OnlineComparison, n: int, watched: WatchResult | None = None
) -> DemoRuns:
    reps = {k: [out_dir / replicate_dir(k, r) for r in range(n)] for k in ("opd", "rl")}
    return DemoRuns(out_dir, out_dir / "teacher", out_dir / "opd", out_dir / "rl",
                    out_dir / ONLINE, online, reps, watched)  # fmt: skip


def _read_online(path: Path) -> OnlineComparison:
    data = json.loads(path.read_text())
    return OnlineComparison(**{k: data[k] for k in OnlineComparison.__dataclass_fields__})


def _steps_to(curve: list[tuple[int, float]], target: float) -> int | None:
    return next((step for step, acc in curve if acc >= target), None)


def _expected(n: int) -> list[str]:
    return ["teacher", ONLINE, *(replicate_dir(k, r) for k in ("opd", "rl") for r in range(n))]


def _ours(out_dir: Path) -> list[str]:
    """Names in out_dir that generate_runs writes, with any number of replicates."""
    return [p.name for p in out_dir.iterdir() if p.name in ("teacher", ONLINE)
            or re.fullmatch(r"(opd|rl)(-\d+)?", p.name)]  # fmt: skip


def _prepare(out_dir: Path, manifest: dict[str, Any]) -> bool:
    """True if out_dir already holds complete runs made with these parameters."""
    path = out_dir / MANIFEST
    if out_dir.is_symlink() or (out_dir.exists() and not out_dir.is_dir()):
        raise OpdlensError(
            f"{out_dir} is a symbolic link or not a directory; generate_runs writes only into a "
            "real directory it made. Pass a new or empty directory."
        )
    if path.is_file():
        old = json.loads(path.read_text())
        if old.get("complete") and old.get("params") == manifest["params"]:
            n = manifest["params"]["settings"]["replicates"]
            return all((out_dir / name).exists() for name in _expected(n))
        for name in _ours(out_dir):  # ours, from other parameters or an interrupted run
            target = out_dir / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            elif target.exists() or target.is_symlink():
                target.unlink()  # a link is removed, never what it points to
    elif out_dir.exists() and any(out_dir.iterdir()):
        raise OpdlensError(
            f"{out_dir} is not empty and holds no {MANIFEST}, so it is not a demo directory; "
            "pass an empty or new directory to generate_runs."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    return False


def finished_runs(out_dir: str | Path) -> DemoRuns | None:
    """The runs a finished generate_runs left in out_dir (either preset), or None if it holds none.

    out_dir is the directory given to generate_runs, or one `opdlens demo --out` wrote (its
    runs/ is used). Nothing is trained or changed.
    """
    for root in (Path(out_dir), Path(out_dir) / "runs"):
        path = root / MANIFEST
        if not path.is_file():
            continue
        try:
            manifest = json.loads(path.read_text())
            n = int(manifest["params"]["settings"]["replicates"])
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            return None  # not a manifest generate_runs finished
        if manifest.get("complete") and all((root / name).exists() for name in _expected(n)):
            return _layout(root, _read_online(root / ONLINE), n)
    return None


def generate_runs(
    out_dir: Path,
    *,
    quick: bool = False,
    seed: int = 0,
    progress: bool = True,
    workers: int = 1,
    watch: str | Path | None = None,
) -> DemoRuns:
    """Train the demo's teacher, student start, OPD and RL runs and the online EffOPD comparison.

    The full preset trains 3 replicates per method (post-training seeds; one teacher and
    student start), the quick preset 1. All training runs in portable worker processes
    (demo.portable); the post-training runs are independent seeded jobs, `workers` at a time
    (the same runs whatever `workers`). Reuses out_dir when it already holds complete runs made
    with the same parameters. With `watch`, `opdlens watch` follows the first OPD run from a
    thread while the workers train it, into that directory (demo.watching); reused runs are not
    watched.
    """
    return _generate(Path(out_dir), quick, seed, progress, workers, watch)


def _generate(
    out_dir: Path, quick: bool, seed: int, progress: bool, workers: int, watch: str | Path | None
) -> DemoRuns:
    settings = demo_settings(quick, seed)
    params = {"format": _FORMAT, "quick": quick, "seed": seed, "settings": asdict(settings)}
    manifest: dict[str, Any] = {"params": params, "complete": False}
    if _prepare(out_dir, manifest):
        return _layout(out_dir, _read_online(out_dir / ONLINE), settings.replicates)
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    task = settings.task
    trained = run_portable(train_start, settings, seed, progress)
    teacher, student = trained.teacher, trained.student
    timings: dict[str, float] = {"sft": trained.seconds}
    demo = {"task": task.to_dict(), "seed": seed, "quick": quick}
    save_checkpoint(teacher, out_dir / "teacher", {**demo, "role": "teacher"})
    start_point = Start(student, teacher, task, settings.post, settings.eval_every, demo)
    jobs = [
        Job(replicate_dir(kind, r), kind, replicate_seed(seed, r), out_dir / replicate_dir(kind, r),
            record=(kind, r) == ("opd", 0))
        for r in range(settings.replicates) for kind in ("opd", "rl")
    ]  # fmt: skip
    jobs.insert(0, Job("effopd", "opd", seed, None, record=True, effopd=True))  # slowest first
    follower = None
    if watch is not None:
        from opdlens.demo.watching import Follower, watch_options

        follower = Follower(out_dir / replicate_dir("opd", 0), Path(watch).expanduser().resolve(),
                            settings.post.steps, watch_options())  # fmt: skip
    with follower or nullcontext():
        done = run_jobs(start_point, jobs, workers=workers, progress=progress)
    timings.update({name: r["seconds"] for name, r in done.items()})
    plain, eff = done["opd"]["curve"], done["effopd"]
    online = _compare(plain, eff["curve"], eff["history"])
    record = {
        **asdict(online),
        "target_fraction": 0.9,
        "score": f"validation accuracy (greedy, {task.n_val} held-out problems)",
        "alpha0": eff["alpha0"],
        "max_candidates": eff["max_candidates"],
        "eval_every": settings.eval_every,
        "curves": {"plain": plain, "effopd": eff["curve"]},
    }
    write_text_atomic(out_dir / ONLINE, json.dumps(record, indent=2) + "\n")
    manifest.update(
        complete=True,
        sft_steps=trained.sft_steps,
        code_path=trained.code_path,
        seconds={k: round(v, 2) for k, v in timings.items()},
    )
    write_text_atomic(out_dir / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    watched = None if follower is None else follower.result
    return _layout(out_dir, online, settings.replicates, watched)


def _compare(
    plain: list[tuple[int, float]], eff: list[tuple[int, float]], history: list[dict[str, Any]]
) -> OnlineComparison:
    target = 0.9 * plain[-1][1]
    return OnlineComparison(
        target_accuracy=target,
        plain_steps_to_target=_steps_to(plain, target),
        effopd_steps_to_target=_steps_to(eff, target),
        plain_final_accuracy=plain[-1][1],
        effopd_final_accuracy=eff[-1][1],
        history=history,
    )
