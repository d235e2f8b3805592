"""A plain-text progress bar on stderr (redrawn in place on a terminal, a line per quarter
otherwise)."""

from __future__ import annotations

import sys
import time


class Progress:
    def __init__(self, label: str, total: int, width: int = 30) -> None:
        self.label = label
        self.total = max(1, total)
        self.width = width
        self.tty = sys.stderr.isatty()
        self.start = time.monotonic()
        self._quarter = 0
        self._last = -1
        self.update(0)

    def update(self, done: int) -> None:
        if done == self._last:
            return
        self._last = done
        frac = min(1.0, done / self.total)
        if self.tty:
            bar = "#" * int(frac * self.width)
            sys.stderr.write(
                f"\r  {self.label:<34} [{bar:<{self.width}}] {done:>7,}/{self.total:,} "
                f"{time.monotonic() - self.start:5.1f}s"
            )
            sys.stderr.flush()
        elif int(frac * 4) > self._quarter:
            self._quarter = int(frac * 4)
            sys.stderr.write(f"  {self.label}: {done:,}/{self.total:,}\n")
            sys.stderr.flush()

    def finish(self, note: str = "") -> None:
        if self.tty:
            sys.stderr.write("\n")
        if note:
            sys.stderr.write(f"  {self.label}: {note}\n")
        sys.stderr.flush()


def say(text: str) -> None:
    sys.stderr.write(text + "\n")
    sys.stderr.flush()
