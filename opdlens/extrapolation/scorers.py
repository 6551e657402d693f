"""Scorers for EffOPD replay: a Python callable, a shell command, or the hindsight oracle."""

from __future__ import annotations

import importlib
import logging
import math
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from ..errors import OptionError, ScorerError
from ..io.fileops import copy_file
from ..io.layouts import NON_WEIGHT_FILES, detect, open_source, read_config
from ..io.paths import TEMP_MARKER, lock_temp_dir, output_error, release_temp_dir
from ..run import Run
from .evaluate import sq_distance
from .supervisor import supervised

logger = logging.getLogger(__name__)

__all__ = [
    "CommandScorer",
    "HindsightScorer",
    "PythonScorer",
    "Scorer",
    "make_scorer",
    "private_copy",
    "score_input",
    "stop_scorers",
]

# The longest wait poll() takes (2³¹ − 1 ms, ~24 days); longer ones raise OverflowError.
_MAX_WAIT = min(threading.TIMEOUT_MAX, (2**31 - 1) / 1000)
_NUMBER_HELP = "A scorer must return (or print, as the last line of its output) one finite number."


class Scorer(ABC):
    """A validation score of a checkpoint directory; higher is better."""

    name: str = "scorer"
    oracle: bool = False
    # User code may write into what it scores: it gets a private copy of an input checkpoint.
    needs_copy: bool = True

    @abstractmethod
    def score(self, path: Path, label: str) -> float:
        """Score the checkpoint at `path`; `label` names the candidate in errors."""

    @property
    def label(self) -> str:
        """How reports name this scorer (oracles say so)."""
        return f"{self.name} (ORACLE: uses later checkpoints)" if self.oracle else self.name

    def schedule_warnings(self, steps: Sequence[int]) -> list[str]:
        """Why scores at these replayed steps would mislead (none for an ordinary scorer)."""
        return []


def _finite(value: object, where: str) -> float:
    try:
        number = float(value)  # type: ignore[arg-type]  # numpy / torch scalars, numeric strings
    except Exception as e:  # noqa: BLE001  (user code: __float__ may raise anything)
        shown = _shown(value)
        why = "too large for a float" if isinstance(e, OverflowError) else "not a number"
        raise ScorerError(f"{where} returned {shown}, {why}. {_NUMBER_HELP}") from None
    if isinstance(value, bool) or not math.isfinite(number):
        raise ScorerError(f"{where} returned {_shown(value)}. {_NUMBER_HELP}")
    return number


def _shown(value: object) -> str:
    """A short repr of what a scorer returned; its own __repr__ may raise or be huge."""
    try:
        text = repr(value)
    except Exception:  # noqa: BLE001
        text = f"a {type(value).__name__}"
    return text if len(text) <= 80 else f"{text[:60]}… ({len(text)} characters)"


@dataclass
class PythonScorer(Scorer):
    """A callable `module:function` taking a checkpoint directory and returning a number."""

    fn: Callable[[Path], float]
    name: str = "python"
    timeout: float | None = None

    def score(self, path: Path, label: str) -> float:
        result: list[object] = []
        error: list[BaseException] = []
        cwd = _getcwd()
        abandoned = threading.Event()

        def call() -> None:
            try:
                result.append(self.fn(path))
            except BaseException as e:  # noqa: BLE001  (reported below, with the candidate)
                error.append(e)
            finally:
                # Timed out and given up on: what it wrote after our cleanup goes too (only
                # opdlens' own temporary candidate folders, never a path a caller named).
                if abandoned.is_set() and TEMP_MARKER in Path(path).name:
                    remove_copy(Path(path))

        # A thread, so that a hung scorer can be timed out (it is abandoned, as a daemon).
        worker = threading.Thread(target=call, name=f"opdlens-scorer-{label}", daemon=True)
        worker.start()
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while worker.is_alive() and not _STOPPING.is_set():
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                break
            worker.join(_POLL if left is None else min(_POLL, left))
        _restore_cwd(cwd, self.name, label)
        if worker.is_alive() and _STOPPING.is_set():
            raise ScorerError(f"Scoring was interrupted while scorer {self.name} ran on {label}.")
        if worker.is_alive():
            abandoned.set()
            raise ScorerError(
                f"Scorer {self.name} timed out after {self.timeout} s on {label} ({path}). "
                "Raise --scorer-timeout or make the scorer faster."
            )
        if error:
            e = error[0]
            raise ScorerError(
                f"Scorer {self.name} raised {type(e).__name__} on {label} ({path}): {e}"
            ) from e
        return _finite(result[0], f"Scorer {self.name} on {label}")


def _getcwd() -> str | None:
    try:
        return os.getcwd()
    except OSError:  # the working directory was removed
        return None


def _restore_cwd(cwd: str | None, name: str, label: str) -> None:
    """Undo a scorer's os.chdir: the working directory is the whole process's, not the scorer's."""
    if cwd is None or _getcwd() == cwd:
        return
    try:
        os.chdir(cwd)
    except OSError as e:
        logger.warning("scorer %s changed the working directory on %s and it could not be "
                       "restored (%s)", name, label, e)  # fmt: skip
        return
    logger.warning(
        "scorer %s changed the working directory on %s; opdlens restored it to %s (inputs were "
        "opened by absolute path, so they are unaffected).", name, label, cwd,
    )  # fmt: skip


def sh_script(template: str) -> str:
    """`template` as an `sh -c` script in which each {checkpoint} reads the path from "$1".

    The path never becomes shell text, so spaces, quotes or `$(…)` in it are one argument and
    never run: unquoted it becomes "$1", inside double quotes $1. Inside single quotes the shell
    would not expand it, so that is refused.
    """
    out: list[str] = []
    quote = ""  # "", "'" or '"': the quoting context at position i
    i = 0
    while i < len(template):
        if template.startswith("{checkpoint}", i):
            if quote == "'":
                raise OptionError(
                    f"--scorer-cmd puts {{checkpoint}} inside single quotes, where the shell does "
                    f"not expand it; got '{template}'. Put it outside the quotes (it reaches the "
                    "command as one argument, spaces and all)."
                )
            out.append("$1" if quote == '"' else '"$1"')
            i += len("{checkpoint}")
            continue
        c = template[i]
        if c == "\\" and quote != "'":
            out.append(template[i : i + 2])
            i += 2
            continue
        if c in "'\"" and quote in ("", c):
            quote = "" if quote == c else c
        out.append(c)
        i += 1
    return "".join(out)


@dataclass
class CommandScorer(Scorer):
    """A shell command with `{checkpoint}` in it that prints a number as its last output line.

    It runs as `sh -c SCRIPT opdlens-scorer PATH` (see sh_script): the checkpoint's path is one
    argument, never spliced into the shell text.
    """

    template: str
    timeout: float | None = None
    name: str = field(init=False)

    def __post_init__(self) -> None:
        if "{checkpoint}" not in self.template:
            raise OptionError(
                f"--scorer-cmd must contain the placeholder {{checkpoint}}; got '{self.template}'. "
                "Example: --scorer-cmd 'python eval.py {checkpoint}'."
            )
        self.script = sh_script(self.template)
        self.name = f"command '{self.template}'"

    def score(self, path: Path, label: str) -> float:
        cmd = ["/bin/sh", "-c", self.script, "opdlens-scorer", str(path)]  # path: "$1"
        # Output goes to files, not pipes: a child the command leaves running in the background
        # (`sleep 8 &`) would hold a pipe open, and reading it to its end would wait for that.
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            returncode = _run_in_own_group(cmd, out, err, self.timeout)
            if returncode is None:
                raise ScorerError(
                    f"Scorer {self.name} timed out after {self.timeout} s on {label} ({path}). "
                    "Raise --scorer-timeout or make the command faster."
                )
            stdout, stderr = _tail(out), _tail(err)
        if returncode != 0:
            tail = (stderr or stdout).strip().splitlines()[-1:] or ["no output"]
            raise ScorerError(
                f"Scorer {self.name} exited with status {returncode} on {label} ({path}): "
                f"{tail[0][:200]}"
            )
        lines = [ln for ln in stdout.strip().splitlines() if ln.strip()]
        if not lines:
            raise ScorerError(f"Scorer {self.name} printed nothing on {label}. {_NUMBER_HELP}")
        try:
            value = float(lines[-1].strip())
        except ValueError:
            raise ScorerError(
                f"Scorer {self.name} printed '{lines[-1][:80]}' as its last line on {label}, "
                f"not a number. {_NUMBER_HELP}"
            ) from None
        return _finite(value, f"Scorer {self.name} on {label}")


# Process groups of the scorer commands running now, so that an interrupt can end them all.
_GROUPS: set[int] = set()
_GROUPS_LOCK = threading.Lock()
_STOPPING = threading.Event()  # set by stop_scorers: waiting scorers give up at once
_POLL = 0.05  # seconds between checks of _STOPPING while a scorer runs


def _run_in_own_group(
    cmd: list[str], out: IO[bytes], err: IO[bytes], timeout: float | None
) -> int | None:
    """Run a command in a new session; its exit status, or None when it timed out.

    Whatever way this returns or raises (a timeout, an error, KeyboardInterrupt, SIGTERM made an
    exception, stop_scorers from another thread), the command's whole process group is killed:
    nothing it started outlives the scoring of its candidate. If opdlens itself is killed
    (SIGKILL), the supervisor leading the group kills it within ~0.2 s.
    """
    proc = subprocess.Popen(
        supervised(cmd), stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True
    )
    with _GROUPS_LOCK:
        _GROUPS.add(proc.pid)
    try:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if _STOPPING.is_set():
                raise ScorerError("scoring was interrupted; the scorer command was stopped.")
            wait = _POLL if deadline is None else min(_POLL, deadline - time.monotonic())
            try:
                return proc.wait(timeout=max(wait, 0.0))
            except subprocess.TimeoutExpired:
                if deadline is not None and time.monotonic() >= deadline:
                    return None
    finally:
        _kill_group(proc.pid)
        with _GROUPS_LOCK:
            _GROUPS.discard(proc.pid)
        with suppress(OSError):
            proc.kill()
        proc.wait()


def _kill_group(pgid: int) -> None:
    with suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def _tail(f: IO[bytes], limit: int = 1 << 20) -> str:
    """The last `limit` bytes a scorer wrote, as text."""
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - limit))
    return f.read().decode("utf-8", errors="replace")


def stop_scorers() -> None:
    """End every scorer command running now (their process groups) and make waiting scorers
    give up: what an interrupt of opdlens does, so that none outlives it."""
    _STOPPING.set()
    with _GROUPS_LOCK:
        groups = list(_GROUPS)
    for pgid in groups:
        _kill_group(pgid)


def allow_scorers() -> None:
    """Let scorers run again after stop_scorers (a new ablation or replay starts)."""
    _STOPPING.clear()


@dataclass
class HindsightScorer(Scorer):
    """ORACLE: minus the distance to a later saved checkpoint, over the given tensors."""

    run: Run
    target: int
    tensors: Sequence[str]
    oracle: bool = True
    needs_copy: bool = False  # read by opdlens itself, never written
    name: str = field(init=False)

    def __post_init__(self) -> None:
        self.run.checkpoint(self.target)
        self.name = f"hindsight (-distance to step {self.target})"

    def schedule_warnings(self, steps: Sequence[int]) -> list[str]:
        """Replayed steps at or after the target are scored against themselves or the past."""
        if list(self.run.steps) == [self.target]:
            return [
                f"hindsight scorer: the run has one checkpoint after its base (step "
                f"{self.target}), so the oracle scores the run against itself: the saved step is "
                "at distance 0 and no candidate can beat it. Save more checkpoints, or use a real "
                "scorer (--scorer module:function or --scorer-cmd)."
            ]
        late = [s for s in steps if s >= self.target]
        if not late:
            return []
        return [
            f"hindsight scorer: replayed step(s) {late} are not before its target step "
            f"{self.target}; there it scores closeness to itself or to an earlier checkpoint, so "
            "no candidate can be accepted and those rows say nothing about where training went."
        ]

    def score(self, path: Path, label: str) -> float:
        det = detect(Path(path))
        source = open_source(det, read_config(det), trust_pickle=False)
        target = self.run.checkpoint(self.target)
        total = 0.0
        for name in self.tensors:
            total += sq_distance(source.read_float32(name), target.array(name, float32=True))
        return -math.sqrt(total)


def score_input(judge: Scorer, checkpoint: Path, label: str, copy_dir: Path) -> float:
    """Score an input checkpoint through a private copy at `copy_dir`, removed afterwards.

    The scorer may write, chmod or delete inside the copy; the input never changes.
    """
    if not judge.needs_copy:
        return judge.score(checkpoint, label)
    private_copy(checkpoint, copy_dir)
    try:
        return judge.score(copy_dir, label)
    finally:
        remove_copy(copy_dir)


def private_copy(source: Path, dest: Path) -> Path:
    """Copy a checkpoint directory's model files (not optimizer or trainer state) into new `dest`.

    Each file is a reflink where the file system can (btrfs, XFS: no bytes copied), else a
    copy in the kernel; never a hard link, which would share the input's bytes and mode.

    Raises:
        OutputError: `dest` exists or cannot be written (a full or read-only file system).
    """
    try:
        dest.mkdir()
        if TEMP_MARKER in dest.name:  # a name remove_stale matches: tell it the copy is in use
            lock_temp_dir(dest)
    except OSError as e:
        raise output_error(dest, e) from None  # an existing `dest` is never reused or removed
    try:
        for entry in sorted(os.scandir(source), key=lambda e: e.name):
            if entry.is_file() and not NON_WEIGHT_FILES.match(entry.name):
                copy_file(Path(entry.path), dest / entry.name)
    except OSError as e:
        remove_copy(dest)
        raise output_error(dest, e) from None
    return dest


def remove_copy(path: Path) -> None:
    """Delete a scorer's copy, whatever modes the scorer set; a symlink is unlinked, not followed."""
    try:
        _remove(path)
    finally:
        release_temp_dir(path)  # after the removal: until then it is still in use


def _remove(path: Path) -> None:
    try:
        if path.is_symlink() or path.is_file():
            path.unlink()
            return
        if not path.is_dir():
            return
        os.chmod(path, 0o700)
        for root, dirs, _ in os.walk(path):
            for d in dirs:
                sub = os.path.join(root, d)
                if not os.path.islink(sub):
                    os.chmod(sub, 0o700)
        shutil.rmtree(path)
    except OSError as e:
        logger.warning("could not remove the scorer's copy %s (%s); remove it by hand", path, e)


# Set once a --scorer module is imported: its open files may count on a normal interpreter
# exit to be flushed, so the console script then exits the usual way (cli.console).
user_code_loaded = False


def load_callable(spec: str) -> Callable[[Path], float]:
    """Import `module:function` (or `module.function`) and return the callable."""
    module_name, sep, attr = spec.partition(":")
    if not sep:
        module_name, _, attr = spec.rpartition(".")
    if not module_name or not attr:
        raise OptionError(
            f"--scorer takes module:function (e.g. mypkg.evals:score), 'hindsight', or use "
            f"--scorer-cmd; got '{spec}'."
        )
    global user_code_loaded
    user_code_loaded = True  # also when the import fails halfway through the module
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ScorerError(
            f"Cannot import scorer module '{module_name}' (from --scorer {spec}): {e}. Make sure "
            "it is installed or on PYTHONPATH."
        ) from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ScorerError(
            f"Scorer module '{module_name}' has no callable '{attr}' (from --scorer {spec}). "
            "Name a function taking a checkpoint directory and returning a number."
        )
    return fn


def make_scorer(
    scorer: str | Callable[[Path], float] | Scorer | None = None,
    *,
    command: str | None = None,
    timeout: float | None = None,
    run: Run | None = None,
    tensors: Sequence[str] = (),
    target: int | None = None,
) -> Scorer:
    """A Scorer from a callable, 'module:function', 'hindsight' or a shell command template."""
    if timeout is not None and not (isinstance(timeout, int | float) and 0 < timeout <= _MAX_WAIT):
        raise OptionError(
            f"--scorer-timeout must be a positive, finite number of seconds (at most "
            f"{_MAX_WAIT:.0f}); got {timeout}. Leave it out for no limit."
        )
    if (scorer is None) == (command is None):
        raise OptionError(
            "Give exactly one scorer: --scorer module:function, --scorer hindsight, or "
            "--scorer-cmd 'CMD {checkpoint}'."
        )
    if command is not None:
        return CommandScorer(command, timeout)
    if isinstance(scorer, Scorer):
        return scorer
    if scorer == "hindsight":
        if run is None:
            raise OptionError("The hindsight scorer needs the run whose later checkpoint it uses.")
        return HindsightScorer(run, run.final_step if target is None else target, list(tensors))
    if isinstance(scorer, str):
        return PythonScorer(load_callable(scorer), scorer, timeout)
    if callable(scorer):
        return PythonScorer(scorer, getattr(scorer, "__name__", "python"), timeout)
    raise OptionError(f"The 'scorer' parameter must be a callable or a string; got {scorer!r}.")
