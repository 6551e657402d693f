"""A small progress bar on stderr for long loops, silent when quiet or not wanted."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


class Progress:
    """Counts work done and redraws one stderr line at most ten times a second."""

    def __init__(self, total: int, desc: str, *, enabled: bool = True) -> None:
        self.total, self.desc, self.enabled = total, desc, enabled
        self.done = 0
        self._start = time.monotonic()
        self._last = 0.0
        # On a terminal the bar redraws in place; in a log file it prints a line per 10 %.
        self._tty = sys.stderr.isatty()
        self._next_tenth = 1

    def update(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled:
            return
        if self._tty and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            self._draw(now)
        elif not self._tty and self.done * 10 >= self._next_tenth * self.total:
            self._next_tenth = self.done * 10 // max(self.total, 1) + 1
            self._draw(now)

    def _draw(self, now: float) -> None:
        frac = self.done / self.total if self.total else 1.0
        bar = "#" * int(frac * 24)
        elapsed = now - self._start
        eta = elapsed / frac - elapsed if frac > 0 else 0.0
        start = "\r" if self._tty else ""
        sys.stderr.write(
            f"{start}{self.desc} [{bar:<24}] {self.done}/{self.total} "
            f"{elapsed:5.1f}s elapsed, {eta:5.1f}s left"
        )
        if self.done >= self.total or not self._tty:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self._tty and self.done < self.total:
            sys.stderr.write("\n")
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
