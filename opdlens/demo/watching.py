"""The demo's `opdlens watch` of one run, in a thread beside the worker processes that train it."""

from __future__ import annotations

import dataclasses
import threading
from datetime import datetime, timezone
from pathlib import Path

from opdlens.analysis.options import AnalyzeOptions
from opdlens.demo.settings import analyze_options
from opdlens.follow import LOG_FILE, WatchOptions, WatchResult, watch
from opdlens.io.paths import output_dir, output_error

INTERVAL = 0.5  # seconds between two looks at the run directory
GRACE_S = 120.0
# watch.log's line when the block (the demo's training of every run) ends
TRAINING_DONE = "the demo's training ended: every run is saved"
TRAINING_FAILED = "the demo's training failed: watch stops"  # after training ends, how long watch may take to read the last checkpoint


def watch_options() -> AnalyzeOptions:
    """The demo's analysis options, swept inline (one worker) beside the training, without the
    base geometry: its certified top-K of W_0 costs about five times the rest of a step, and
    watch must keep up with a run that saves ten checkpoints in well under a minute."""
    return dataclasses.replace(analyze_options(workers=1), base_geometry=False)


def log_time(line: str) -> datetime:
    """When watch wrote a line of the demo's watch.log (UTC)."""
    return datetime.fromisoformat(line.split(" ", 1)[0])


class Follower:
    """Run `opdlens watch` on `run_dir` into `out` while the block trains it.

    Use as a context manager around the training. On entry a watch that an earlier demo left in
    `out` is cleared (it followed other checkpoints of the same path) and the thread starts; it
    stops by itself once step `until` is complete, then writes its report once (a report with
    figures takes longer to draw than the run takes to save a checkpoint, so it is not redrawn
    at each step). When the block fails, the watch is told to stop and joined; when the block
    succeeds and the watch failed, its error is raised. Each step's line goes to out/watch.log,
    stamped with the UTC time to the millisecond, and so does the end of the block.
    """

    def __init__(self, run_dir: Path, out: Path, until: int, options: AnalyzeOptions) -> None:
        self.run_dir, self.out, self.until, self.options = Path(run_dir), Path(out), until, options
        self.stop = threading.Event()
        self.result: WatchResult | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._follow, name="demo-watch", daemon=True)

    def __enter__(self) -> Follower:
        with output_dir(self.out, "watch", overwrite=True, reuse=False):
            pass  # empties an earlier demo's watch: it must not resume from other checkpoints
        self._thread.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        failed = exc_type is not None
        try:
            self._say(TRAINING_FAILED if failed else TRAINING_DONE)
        finally:
            if not failed:
                self._thread.join(GRACE_S)
            self.stop.set()  # after the grace, only a watch that missed the last step waits
            self._thread.join()
        if not failed and self.error is not None:
            raise self.error

    def _follow(self) -> None:
        following = WatchOptions(interval=INTERVAL, until=self.until, report=False)
        try:
            self.result = self._watch(following)
            if self.result.stopped == "until":  # resumes: nothing new to analyse, the report
                self.result = self._watch(dataclasses.replace(following, report=True))
        except BaseException as e:  # handed to the main thread in __exit__
            self.error = e

    def _watch(self, following: WatchOptions) -> WatchResult:
        return watch(self.run_dir, self.out, self.options, following, say=self._say,
                     stop=self.stop)  # fmt: skip

    def _say(self, line: str) -> None:
        stamp = datetime.now(timezone.utc).isoformat(timespec="milliseconds")
        log = self.out / LOG_FILE
        try:
            with log.open("a", encoding="utf-8") as f:
                f.write(f"{stamp} {line}\n")
        except OSError as e:
            raise output_error(log, e) from None
