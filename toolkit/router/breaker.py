"""A circuit breaker per backend, fed by real traffic and cheap probes.

closed: traffic flows; `failures` failures in a row open it.
open: the backend is down for the decision; after `open_for` seconds (doubling
    on each re-open, up to `max_open_for`) it turns half-open, and a successful
    probe closes it at once.
half-open: traffic flows again; the first success closes the circuit, the
    first failure opens it again.

Single-threaded: everything runs on the router's event loop. `on_change` is
called with the breaker after each state change (the router mirrors it into
the decision's View and into /metrics).
"""

from __future__ import annotations

import time
from typing import Callable

CLOSED = "closed"
HALF_OPEN = "half-open"
OPEN = "open"
STATES = (CLOSED, HALF_OPEN, OPEN)


class Breaker:
    def __init__(self, name: str, *, failures: int = 3, open_for: float = 2.0, max_open_for: float = 30.0,
                 on_change: Callable[["Breaker"], None] | None = None, clock: Callable[[], float] = time.monotonic):
        if failures < 1:
            raise ValueError("failures must be at least 1")
        self.name = name
        self.threshold = failures
        self.base_open_for = open_for
        self.max_open_for = max_open_for
        self.on_change = on_change
        self.clock = clock
        self.state = CLOSED
        self.failures = 0  # in a row
        self.open_for = open_for
        self.opened_at: float | None = None
        self.last_error: str | None = None
        self.last_success: float | None = None

    @property
    def up(self) -> bool:
        """Whether the decision may send work here (closed or half-open)."""
        if self.state == OPEN and self.clock() - self.opened_at >= self.open_for:
            self._set(HALF_OPEN)
        return self.state != OPEN

    def success(self) -> None:
        self.failures = 0
        self.last_success = self.clock()
        if self.state != CLOSED:
            self.open_for = self.base_open_for
            self._set(CLOSED)

    def failure(self, error: str) -> None:
        self.failures += 1
        self.last_error = error
        if self.state == HALF_OPEN:
            self.open_for = min(self.open_for * 2, self.max_open_for)
            self._open()
        elif self.state == CLOSED and self.failures >= self.threshold:
            self._open()

    def _open(self) -> None:
        self.opened_at = self.clock()
        self._set(OPEN)

    def _set(self, state: str) -> None:
        self.state = state
        if self.on_change is not None:
            self.on_change(self)

    def describe(self) -> dict:
        out = {"state": self.state, "failures_in_a_row": self.failures, "last_error": self.last_error}
        if self.state == OPEN:
            out["retry_in_seconds"] = round(max(0.0, self.opened_at + self.open_for - self.clock()), 3)
        return out
