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
        self.accepted = 0            # connections accepted on its public port, all told
        self.starts = 0              # startProcess calls of ours (first connections and wakes)
        self.last_start_s = None     # how long the last start of ours took, to ready
        self.why = ""                # why the last start failed, until the next one is ready

    def snapshot(self):
        """What the status service reads (control.py's "state")."""
        return {"ready": self.ready, "active": self.active, "starting": self.start_task is not None,
                "stopping": self.stop_task is not None, "conns": self.conns, "waiting": self.waiting,
                "accepted": self.accepted, "starts": self.starts, "last_start_s": self.last_start_s,
                "why": self.why or None}
