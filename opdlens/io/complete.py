"""Decide which checkpoints of a run a trainer has finished writing, reading headers only.

A checkpoint is complete when every file its layout names is there (index shards, verl rank
files, adapters), each weight file is as long as its own header says, the trainer's last
file is there where it writes one, and its files' sizes and mtimes held still across two
polls (`Settling`). The trainers' last files:

- Hugging Face Trainer (and TRL, which subclasses it), ``checkpoint-N``: ``trainer_state.json``.
  ``Trainer._save_checkpoint`` writes the weights, then ``training_args.bin`` (in ``_save``),
  then optimizer, scheduler and RNG state, and ``trainer_state.json`` last. So a
  ``checkpoint-N`` holding ``training_args.bin`` is a Trainer's and must have
  ``trainer_state.json``; one without it (written by anything else) is judged by its weights.
- verl, ``global_step_N``: ``latest_checkpointed_iteration.txt`` in the run directory, written
  after every rank has saved, must name a step ≥ N.
"""

from __future__ import annotations

import os
from pathlib import Path

from ..errors import CheckpointError, PickleRefused
from .discover import STEP_PATTERNS, discover, step_of
from .layouts import detect
from .pickles import _is_legacy, _record_size
from .sources import _rank_files
from .stfile import SafetensorsFile
from .weightfiles import index_shards, regular_file

TRAINER_MARK = "training_args.bin"  # written by Trainer._save: this checkpoint-N is a Trainer's
TRAINER_LAST = "trainer_state.json"  # written last by Trainer._save_checkpoint
VERL_LATEST = "latest_checkpointed_iteration.txt"  # in the run dir, written after global_step_N

Snapshot = dict[str, tuple[int, int]]  # path relative to the checkpoint → (size, mtime_ns)


def incomplete_reason(checkpoint_dir: Path, run_dir: Path | None = None) -> str | None:
    """Why ``checkpoint_dir`` is not completely written yet, or None when it is.

    Checks that its index's shards / verl rank files are all there, that each weight file is as
    long as its header says (only headers and zip directories are read), and that the trainer's
    last file is there (see the module docstring). ``run_dir`` holds verl's
    latest_checkpointed_iteration.txt; default the checkpoint's parent. A directory or file that
    disappears while it is checked (a trainer's save_total_limit rotation) gives a reason too.
    """
    d = Path(checkpoint_dir)
    run = Path(run_dir) if run_dir is not None else d.parent
    try:
        return _trainer_reason(d, run) or _weights_reason(d)
    except CheckpointError as e:
        return str(e).replace(str(d), d.name)
    except OSError as e:  # a file removed or replaced between two steps of the check
        where = Path(e.filename).name if e.filename else d.name
        return f"{d.name}: {where} could not be read ({e.strerror or type(e).__name__})."


def _trainer_of(name: str) -> str | None:
    """The STEP_PATTERNS name (``hf-trainer``, ``verl``, …) a directory name matches."""
    return next((kind for kind, pattern in STEP_PATTERNS if pattern.fullmatch(name)), None)


def _trainer_reason(d: Path, run: Path) -> str | None:
    """Why the trainer has not finished its save of ``d``, or None."""
    kind = _trainer_of(d.name)
    if kind == "hf-trainer" and (d / TRAINER_MARK).exists():
        last = d / TRAINER_LAST
        if not last.is_file() or last.stat().st_size == 0:
            return (
                f"{d.name}/{TRAINER_LAST}: not written yet; the Trainer writes it last (the "
                f"checkpoint holds {TRAINER_MARK}, so a Trainer is saving it)."
            )
    if kind == "verl":
        step = step_of(d.name)
        latest = run / VERL_LATEST
        if not latest.is_file():
            return f"{d.name}: waiting for {VERL_LATEST}, which verl writes after the save."
        with open(latest, "rb") as f:
            text = f.read(64).decode("ascii", errors="replace").strip()
        if not (text.isascii() and text.isdigit() and len(text) < 20):
            return f"{d.name}: {VERL_LATEST} holds {text[:20]!r}, not a step number (yet)."
        if step is not None and int(text) < step:
            return f"{d.name}: {VERL_LATEST} names step {int(text)}, so step {step} is not done."
    return None


def _weights_reason(d: Path) -> str | None:
    """Why the weight files of ``d`` are not all there and full length, or None."""
    det = detect(d)
    layout = det.layout.removeprefix("verl-")
    files = det.files
    if layout.endswith("-sharded"):
        index = det.files[0]
        if not index.is_file():
            shards = "safetensors shards" if layout.startswith("hf-safe") else "shards"
            return f"{d.name}: {shards} but no {index.name} yet (it is written last)."
        suffix = ".safetensors" if layout == "hf-safetensors-sharded" else ".bin"
        files = [index.parent / s for s in index_shards(index, suffix)]
    elif layout == "fsdp":
        files = _rank_files(det.files)
    for f in files:
        reason = _file_reason(f, d)
        if reason is not None:
            return reason
    return None


def _file_reason(path: Path, d: Path) -> str | None:
    """Why one weight file is not complete, or None; reads its header or zip directory only."""
    regular_file(path)
    if path.suffix == ".safetensors":
        SafetensorsFile(path)  # refuses a file shorter (or longer) than its header says
        return None
    rel = path.relative_to(d).as_posix() if path.is_relative_to(d) else path.name
    with open(path, "rb") as f:
        head = f.read(64)
    if head.startswith(b"PK\x03\x04"):  # torch.save's zip: its directory is written last
        try:
            _record_size(path)
        except PickleRefused as e:
            return f"{d.name}/{rel}: {e}; it is cut short or still being written."
        return None
    if _is_legacy(head):  # pre-1.6 torch.save: no length to check, the polls decide
        return None
    return f"{d.name}/{rel}: {len(head)} bytes so far, not yet a torch.save file."


def snapshot(checkpoint_dir: Path) -> Snapshot:
    """(size, mtime_ns) of every file under ``checkpoint_dir`` by relative path; {} if gone."""
    d = Path(checkpoint_dir)
    out: Snapshot = {}
    for top, _, names in os.walk(d):
        for name in names:
            path = os.path.join(top, name)
            try:
                st = os.stat(path)  # through symlinks: a hub snapshot links its files
            except OSError:
                continue  # removed since the listing: the next snapshot differs
            out[os.path.relpath(path, d)] = (st.st_size, st.st_mtime_ns)
    return out


class Settling:
    """Whether each checkpoint directory's files held still since the previous poll."""

    def __init__(self) -> None:
        self._last: dict[Path, Snapshot] = {}

    def settled(self, checkpoint_dir: Path) -> bool:
        """True when the files (names, sizes, mtimes) equal the previous call's for this dir.

        The first call for a directory is always False; so is a call on an empty or missing one.
        """
        d = Path(checkpoint_dir)
        now = snapshot(d)
        before = self._last.get(d)
        self._last[d] = now
        return bool(now) and now == before

    def forget(self, checkpoint_dir: Path) -> None:
        """Drop the snapshot of ``checkpoint_dir``: its next `settled` is a first call again."""
        self._last.pop(Path(checkpoint_dir), None)

    def _keep_only(self, run_dir: Path, keep: set[Path]) -> None:
        for d in [d for d in self._last if d.parent == run_dir and d not in keep]:
            del self._last[d]


def complete_steps(run_dir: Path, settling: Settling) -> tuple[dict[int, Path], dict[int, str]]:
    """Step → directory of the complete, settled checkpoints, and step → reason of the rest.

    A run directory that does not exist yet or holds no checkpoint yet gives ({}, {}).

    Raises:
        CheckpointError: ``run_dir`` is a file, or its step directories clash (see `discover`).
    """
    run = Path(run_dir)
    try:
        steps, _ = discover(run)
    except (CheckpointError, OSError):
        if _no_checkpoints_yet(run):
            settling._keep_only(run, set())
            return {}, {}
        raise
    settling._keep_only(run, set(steps.values()))
    done: dict[int, Path] = {}
    pending: dict[int, str] = {}
    for step, d in sorted(steps.items()):
        reason = incomplete_reason(d, run)
        if reason is not None:
            settling.forget(d)
            pending[step] = reason
        elif settling.settled(d):
            done[step] = d
        else:
            pending[step] = f"{d.name}: waiting for its files' sizes and mtimes to hold still."
    return done, pending


def _no_checkpoints_yet(run: Path) -> bool:
    """Whether ``run`` is missing, or a directory with no step directory in it."""
    try:
        if not run.is_dir():
            return not run.exists()
        for child in run.iterdir():
            if child.is_dir() and step_of(child.name) is not None:
                return False
    except FileNotFoundError:  # removed while listed
        return True
    except ValueError:  # a step beyond MAX_STEP: discover's error stands
        return False
    return True
