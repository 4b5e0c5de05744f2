"""A one-line progress bar on stderr, shared by `tsgb explain`, `evaluate` and the metrics."""

from __future__ import annotations

import sys
import time


class Progress:
    """`label [#####.....] done/total unit (rate/s)`, redrawn at most twice a second and at
    the end; silent when `enabled` is False."""

    WIDTH = 30

    def __init__(self, label: str, total: int, enabled: bool = False, unit: str = ""):
        self.label, self.total, self.enabled = label, max(int(total), 1), enabled
        self.unit = f" {unit}" if unit else ""
        self.done, self._drawn, self._open = 0, 0.0, False
        self._start = time.perf_counter()

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.perf_counter()
        finished = self.done >= self.total
        if now - self._drawn < 0.5 and not finished:
            return
        self._drawn = now
        filled = int(self.WIDTH * min(self.done, self.total) / self.total)
        rate = self.done / max(now - self._start, 1e-9)
        sys.stderr.write(
            f"\r{self.label} [{'#' * filled}{'.' * (self.WIDTH - filled)}] "
            f"{self.done}/{self.total}{self.unit} ({rate:.1f}/s)"
        )
        self._open = not finished
        if finished:
            sys.stderr.write("\n")
        sys.stderr.flush()

    def close(self) -> None:
        """End the line if the bar stopped before its total (e.g. on an error)."""
        if self._open:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._open = False
