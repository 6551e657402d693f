"""A small progress bar on stderr for long loops, silent when quiet or not wanted."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")

# Seconds between two lines when stderr is a log file rather than a terminal.
LOG_INTERVAL = 10.0
_WIDTH = 24


class Progress:
    """Counts work done and reports it on stderr.

    On a terminal the bar redraws one line in place, at most ten times a second. In a log
    file (stderr not a terminal) it prints one line when the work ends and, for long work,
    one line every LOG_INTERVAL seconds before that. Work that ends before `total` (a loop
    that stops early) still gets its final line, showing how far it went.
    """

    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done = 0
        self._start = time.monotonic()
        self._last = self._start
        self._tty = sys.stderr.isatty()
        self._finished = False
        self._drawn = False

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled or self._finished:
            return
        now = time.monotonic()
        if self.done >= self.total:
            self._finish(now)
        elif now - self._last >= (0.1 if self._tty else LOG_INTERVAL):
            self._last = now
            self._write(self._line(now), final=False)

    def close(self) -> None:
        """End the bar: its final state if the work stopped before `total`, else nothing more.

        Called while an exception is on its way out (a `finally`), it only ends the line on a
        terminal: the error message that follows says what happened, not a final state.
        """
        if not self.enabled or self._finished:
            return
        if sys.exc_info()[0] is None:
            self._finish(time.monotonic())
            return
        self._finished = True
        if self._tty and self._drawn:
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _finish(self, now: float) -> None:
        self._finished = True
        self._write(self._line(now, final=True), final=True)

    def _line(self, now: float, *, final: bool = False) -> str:
        elapsed = now - self._start
        frac = min(self.done / self.total, 1.0) if self.total > 0 else 1.0
        if not final:
            eta = elapsed / frac - elapsed if frac > 0 else float("nan")
            bar = "#" * int(frac * _WIDTH)
            return (
                f"{self.desc} [{bar:<{_WIDTH}}] {self.done}/{self.total} "
                f"{elapsed:5.1f}s elapsed, {eta:5.1f}s left"
            )
        # Work that stopped early draws a full bar too: the loop is over, not stuck.
        early = " (ended early)" if self.done < self.total else ""
        return f"{self.desc} [{'#' * _WIDTH}] {self.done}/{self.total}{early} in {elapsed:.1f}s"

    def _write(self, line: str, *, final: bool) -> None:
        self._drawn = True
        if self._tty:
            # \033[K clears what a longer previous draw left at the end of the line.
            sys.stderr.write(f"\r{line}\033[K" + ("\n" if final else ""))
        else:
            sys.stderr.write(line + "\n")
        sys.stderr.flush()


def track(items: Iterable[T], total: int, desc: str, *, enabled: bool = True) -> Iterator[T]:
    """Yield items while drawing a progress bar on stderr."""
    bar = Progress(total, desc, enabled=enabled)
    try:
        for item in items:
            yield item
            bar.update()
    finally:
        bar.close()
