"""The board: what the status service knows of every agent of its host, and the events.

A source (systemd.py) tells it each agent's state as the manager reports it
(observe); the board works out what happened in between (a wake, a crash, a
restart, a start-limit hit), counts it, and hands the event to every
subscriber of /events. The web side only reads it: /health and /metrics are
answers from memory, never a question to systemd that could wake an agent.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import time
from dataclasses import dataclass, field

STATES = ("dormant", "starting", "active", "stopping", "failed", "inactive", "not-installed")
CAUSES = ("boot", "first_connection", "restart")
# Cold start (first connection to ready) buckets, in seconds: from a native agent's tens of
# milliseconds to a model server's minutes, around the original's 30 s loading SLA.
COLD_START_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
KEPT_EVENTS = 256           # the last events, for a client that reconnects (Last-Event-ID)
SUBSCRIBER_QUEUE = 256      # events a slow /events client may fall behind by before it is dropped


@dataclass(frozen=True)
class Observation:
    """One agent as its manager reports it now."""

    state: str                     # one of STATES
    detail: str                    # the manager's own words: active/running, socket active/listening, ...
    since: float | None = None     # seconds since the epoch of the last state change
    sub_state: str = ""            # systemd's SubState of the service (auto-restart, start, running, ...)
    restarts: int = 0              # automatic restarts the manager counted (NRestarts)
    result: str = ""               # why it last stopped or failed (success, signal, exit-code, start-limit-hit)
    start_limit_hit: bool = False  # the manager gave up restarting it (service or socket)
    last_start_s: float | None = None  # inactive -> active, the last time it started
    cgroup: str = ""               # its control group under /sys/fs/cgroup, while it runs
    pid: int = 0                   # its main process, while it runs


@dataclass
class Row:
    """An agent on the board: the last observation and what was counted since the service began."""

    name: str
    essential: bool
    unit: str
    seen: Observation = field(default_factory=lambda: Observation("not-installed", "not read yet"))
    starts: dict = field(default_factory=lambda: dict.fromkeys(CAUSES, 0))
    start_limit_hits: int = 0
    cold_buckets: list = field(default_factory=lambda: [0] * len(COLD_START_BUCKETS))
    cold_count: int = 0
    cold_sum: float = 0.0
    cause: str = ""  # why the start in progress began, once it began
    memory: int | None = None       # bytes, from the cgroup, at the last sample
    cpu_seconds: float | None = None
    gpu_memory: int | None = None   # bytes, NVML's figures for its processes, at the last sample
    accepted: int | None = None     # connections accepted on its port (the activator counts; systemd does not)
    why: str = ""                   # GPU admission's reason, when its last start was refused

    def as_json(self) -> dict:
        seen = self.seen
        return {"name": self.name, "essential": self.essential, "unit": self.unit, "state": seen.state,
                "detail": seen.detail, "since": seen.since, "restarts": seen.restarts, "result": seen.result or None,
                "last_start_s": seen.last_start_s, "memory": self.memory, "cpu_seconds": self.cpu_seconds,
                "gpu_memory": self.gpu_memory, "why": self.why or None, "accepted": self.accepted, "starts": dict(self.starts), "start_limit_hits": self.start_limit_hits}


class Subscriber:
    """An /events client: a bounded queue, so a slow client costs at most SUBSCRIBER_QUEUE events."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue(SUBSCRIBER_QUEUE)
        self.dropped = False


class Board:
    def __init__(self, host: str) -> None:
        self.host = host
        self.rows: dict[str, Row] = {}
        self.events: collections.deque = collections.deque(maxlen=KEPT_EVENTS)
        self.subscribers: set[Subscriber] = set()
        self.ids = itertools.count(1)
        self.counted: dict[str, int] = collections.Counter()  # events by kind, for /metrics
        self.dropped_clients = 0
        self.version = 0         # bumped by every change of what /metrics shows but memory and CPU
        self.source_up = False   # the manager answers (D-Bus connected, signals subscribed)
        self.gpu = "not read yet"  # where GPU memory figures come from, or why there are none
        self.gpus: list[dict] = []  # each GPU of the host's GPU agents: total, free, claimed, available
        self.admission = None       # gpu.GpuView: what GPU admission decided, counted
        self.source_error = ""
        self.started = time.time()

    def track(self, name: str, essential: bool, unit: str) -> Row:
        self.version += 1
        row = self.rows.get(name)
        if row is None or row.essential != essential or row.unit != unit:
            row = self.rows[name] = Row(name, essential, unit)
        return row

    def forget_except(self, names) -> None:
        self.version += 1
        for name in set(self.rows) - set(names):
            del self.rows[name]

    # -- what happened

    def observe(self, name: str, now: Observation) -> list[dict]:
        """Record an agent's new observation; the events it implies, already published."""
        row = self.rows[name]
        if now == row.seen:
            return []  # read again, nothing changed (a source that polls)
        before, row.seen = row.seen, now
        self.version += 1
        if before.state == "not-installed" and before.detail == "not read yet":
            return []  # the first look: what is, not what happened
        events = []
        if now.restarts > before.restarts:
            events.append(self._event(row, "restart", count=now.restarts))
        crashed = (now.sub_state == "auto-restart" and before.sub_state != "auto-restart") or \
            (now.state == "failed" and before.state != "failed")
        if crashed:
            events.append(self._event(row, "crash" if now.sub_state == "auto-restart" else "failed",
                                      result=now.result or None))
        if now.start_limit_hit and not before.start_limit_hit:
            row.start_limit_hits += 1
            events.append(self._event(row, "start-limit-hit"))
        running = ("starting", "active")
        if now.state in running and now.sub_state != "auto-restart" and (
                before.state not in running or before.sub_state == "auto-restart"):
            if before.sub_state == "auto-restart" or now.restarts > before.restarts:
                row.cause = "restart"
            else:
                row.cause = "boot" if row.essential else "first_connection"
            row.starts[row.cause] += 1
            if row.cause == "first_connection":
                events.append(self._event(row, "wake"))
            elif row.cause == "boot":
                events.append(self._event(row, "start"))
        if now.state == "active" and before.state != "active":
            took = now.last_start_s
            if row.cause == "first_connection" and took is not None:
                self._cold_start(row, took)
            events.append(self._event(row, "ready", seconds=took, cause=row.cause or None))
            row.cause = ""
        if before.state == "active" and now.state in ("stopping", "dormant", "inactive") and not crashed:
            events.append(self._event(row, "idle-stop" if not row.essential else "stop"))
        for event in events:
            self.publish(event)
        return events

    def _cold_start(self, row: Row, seconds: float) -> None:
        row.cold_count += 1
        row.cold_sum += seconds
        for i, bound in enumerate(COLD_START_BUCKETS):
            if seconds <= bound:
                row.cold_buckets[i] += 1
                break

    def _event(self, row: Row, kind: str, **extra) -> dict:
        event = {"time": round(time.time(), 6), "host": self.host, "agent": row.name, "kind": kind,
                 "state": row.seen.state, "detail": row.seen.detail, "starts": dict(row.starts)}
        event.update({k: v for k, v in extra.items() if v is not None})
        return event

    def publish(self, event: dict) -> None:
        event["id"] = next(self.ids)
        self.events.append(event)
        self.counted[event["kind"]] += 1
        for sub in list(self.subscribers):
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                # Never wait for a client: one that cannot keep up is let go (it may reconnect
                # with Last-Event-ID and get what it missed, up to KEPT_EVENTS).
                sub.dropped = True
                self.subscribers.discard(sub)
                self.dropped_clients += 1

    def subscribe(self, after: int | None = None) -> Subscriber:
        sub = Subscriber()
        if after is not None:
            for event in self.events:
                if event["id"] > after:
                    sub.queue.put_nowait(event)
        self.subscribers.add(sub)
        return sub

    def close_subscribers(self) -> None:
        """End every /events stream (the service stops): each gets None, its last item."""
        for sub in list(self.subscribers):
            sub.dropped = True
            while True:
                try:
                    sub.queue.put_nowait(None)
                    break
                except asyncio.QueueFull:
                    sub.queue.get_nowait()  # make room: it ends anyway
        self.subscribers.clear()

    def unsubscribe(self, sub: Subscriber) -> None:
        self.subscribers.discard(sub)

    # -- what is

    def healthy(self) -> bool:
        """Every essential agent active, and the manager answering."""
        return self.source_up and all(r.seen.state == "active" for r in self.rows.values() if r.essential)

    def health(self) -> dict:
        rows = list(self.rows.values())
        down = [r.name for r in rows if r.essential and r.seen.state != "active"]
        counts = collections.Counter(r.seen.state for r in rows)
        return {"status": "ok" if self.healthy() else "degraded", "host": self.host,
                "last_event_id": self.events[-1]["id"] if self.events else 0,
                "source": "up" if self.source_up else f"down: {self.source_error}", "gpu": self.gpu, "gpus": self.gpus,
                "essential_down": down, "states": dict(sorted(counts.items())),
                "agents": [r.as_json() for r in rows]}
