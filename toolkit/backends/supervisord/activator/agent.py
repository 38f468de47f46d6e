"""What the activator knows about one agent, and the error of a start that failed."""

from __future__ import annotations

import asyncio
import time


class StartFailed(Exception):
    """An agent did not become ready; the message says why."""


class Agent:
    """What the activator knows and does about one agent."""

    def __init__(self, spec):
        self.spec = spec
        self.name = spec.name
        self.deps = []               # what it depends on, transitively, in start order
        self.dependants = []         # what depends on it, transitively
        self.lock = asyncio.Lock()   # one start or stop at a time
        self.start_task = None       # the start every waiting connection shares
        self.stop_task = None
        self.ready = False           # its target accepted a connection lately
        self.active = False          # started (by us or supervisord) and not stopped since
        self.conns = 0               # connections open on its public port, waiting ones included
        self.waiting = 0             # of which waiting for a start
        self.last = time.monotonic()  # last byte, close, or start
        self.touched = False         # bytes moved since the last idle check
