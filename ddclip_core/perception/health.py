"""Counting what went wrong, and whether the engine is healthy now (the node's /diagnostics level).

The level is "warn" while something was dropped or failed in the last ``window_s`` seconds, with a
message saying what; otherwise "ok". Counters only grow.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from typing import Any

BAD_INPUT = "bad input messages dropped"
TOO_LARGE = "images over max_pixels"
SERVICE_ERRORS = "service errors"


class Health:
    def __init__(self, window_s: float = 10.0, clock: Any = time.monotonic) -> None:
        self.window_s, self._clock = window_s, clock
        self._counts: Counter[str] = Counter({BAD_INPUT: 0, TOO_LARGE: 0, SERVICE_ERRORS: 0})
        self._last: dict[str, tuple[float, str]] = {}  # problem -> (when, detail)
        self._lock = threading.Lock()

    def count(self, name: str, amount: int = 1) -> None:
        with self._lock:
            self._counts[name] += amount

    def problem(self, name: str, detail: str) -> None:
        """Something was dropped or failed: counted under ``name``, and the level warns for a while."""
        with self._lock:
            self._counts[name] += 1
            self._last[name] = (self._clock(), detail)

    def bad_input(self, detail: str, too_large: bool = False) -> None:
        self.problem(BAD_INPUT, detail)
        if too_large:
            self.count(TOO_LARGE)

    def service_error(self, detail: str) -> None:
        self.problem(SERVICE_ERRORS, detail)

    def counters(self) -> list[tuple[str, int]]:
        with self._lock:
            return sorted(self._counts.items())

    def status(self) -> tuple[bool, str]:
        """(ok, message): "ok", or what was dropped or failed in the last window and the latest detail."""
        now = self._clock()
        with self._lock:
            recent = {name: seen for name, seen in self._last.items() if now - seen[0] <= self.window_s}
            if not recent:
                return True, "ok"
            parts = [f"{name} ({self._counts[name]} so far; latest: {detail})" for name, (_, detail) in recent.items()]
        return False, f"in the last {self.window_s:g} s: " + "; ".join(parts)
