"""Liveness under supervisord: the status service probes each running agent that names a
`liveness` probe, on a fixed beat, with agentkit-ready's own probes, and after `failures`
misses in a row asks supervisord to kill the program (signalProcess KILL), for its
autorestart to start it again. A dormant or stopped agent is not probed. (Under systemd
each agent's liveness is a unit of its own: agentkit-<name>-live.service.)"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from .. import ready, units

log = logging.getLogger(units.STATUS_PROGRAM)


@dataclass(frozen=True)
class Probe:
    agent: str
    interval: float
    failures: int
    kind: str  # tcp or http
    host: str
    port: int
    path: str | None

    def check(self) -> tuple[bool, str]:
        return ready.live_probe(self.kind, self.host, self.port, self.path, self.interval)()


async def watch(probe: Probe, running, kill) -> None:
    """Probe while running() says the agent runs; kill() after probe.failures misses in a row."""
    loop = asyncio.get_running_loop()
    misses, next_at = 0, time.monotonic() + probe.interval
    while True:
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + probe.interval, time.monotonic())
        if not running():
            misses = 0
            continue
        ok, said = await loop.run_in_executor(None, probe.check)
        if ok:
            misses = 0
            continue
        misses += 1
        log.warning("%s: no answer (%d of %d): %s", probe.agent, misses, probe.failures, said)
        if misses >= probe.failures:
            log.warning("%s stopped answering: killing it, for supervisord to start it again", probe.agent)
            try:
                await kill(probe.agent)
            except Exception as exc:  # noqa: BLE001 - logged; the next misses try again
                log.error("%s: cannot kill it: %s", probe.agent, exc)
            misses = 0
