"""Waiting for room: the loop both backends run to admit an agent. Each pass samples NVML (a
fresh sample after a stop, at most once per interval), asks admission.plan, stops the victims
it names, and tries again until the agent fits or the deadline passes. No agent is stopped
once the deadline has passed, and none more while the memory of those just stopped may not
yet show free (SETTLE): NVML can lag the exit of a process. The backend says what
runs (`running`), how to stop an agent (`stop`), and where records go (`record`)."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable, Callable

from . import admission
from .nvml import Sampler
from .table import Table, Tenant


PAUSE = 0.02   # s at least between two passes: a stop that changed nothing cannot spin the loop
SETTLE = 2.0   # s a stopped agent's memory may take to show free in NVML before others are stopped


class NoRoom(Exception):
    """The agent did not fit within its deadline; the message says why."""


async def wait_for_room(table: Table, tenant: Tenant, sampler: Sampler, deadline: float, *,
                        running: Callable[..., Awaitable[list[admission.Running]]],
                        stop: Callable[[str], Awaitable[bool]],
                        record: Callable[..., None],
                        clock: Callable[[], float] = time.monotonic) -> list[str]:
    """Return the agents stopped for `tenant` once it fits on its GPU (recorded "admit");
    NoRoom (recorded "refuse") when it still does not at `deadline` (on `clock`).
    `running(sample)`: the GPU's other tenants now; `stop(name)`: whether it was stopped."""
    began = clock()
    evicted: list[str] = []
    settling = 0.0  # until then, memory of agents just stopped may not show in NVML yet
    fresh = False
    while True:
        if fresh:
            await asyncio.sleep(max(sampler.due(), PAUSE))
        # NVML's calls block (about a millisecond): off the event loop, which may be forwarding.
        sample = await asyncio.to_thread(sampler.sample, fresh)
        decision = admission.plan(table, tenant, sample.free(tenant.gpu), await running(sample), sampler.source())
        waited = round(clock() - began, 6)
        if decision.fits:
            record("admit", tenant, waited, decision.room, victims=evicted)
            return evicted
        if clock() >= deadline:  # before any stop: never stop an agent for a start that is given up
            reason = f"{decision.reason(tenant)}; waited {waited:.1f} s (start_timeout)"
            record("refuse", tenant, waited, decision.room, reason=reason)
            raise NoRoom(reason)
        fresh = True
        if clock() < settling:
            continue  # the last stops' memory is still coming back: no more victims meanwhile
        for victim in decision.victims:
            stopping = clock()
            if await stop(victim):
                evicted.append(victim)
                settling = min(deadline, clock() + SETTLE)
                record("evict", table.tenant(victim), waited, decision.room,
                       **{"for": tenant.name, "stop_s": round(clock() - stopping, 6)})


def record_to(path: str, log) -> Callable[..., None]:
    """A `record` that appends to the ledger at `path` (a failure to write is logged, not fatal)."""
    from . import ledger

    def record(kind, tenant, waited, room, **extra):
        entry = {"kind": kind, "agent": tenant.name, "gpu": tenant.gpu, "need": tenant.need, "waited_s": waited,
                 **({"available": room.available, "claimed": room.claimed} if room is not None else {}), **extra}
        try:
            ledger.append(path, entry)
        except OSError as exc:
            log.warning(f"cannot write the GPU ledger {path}: {exc}")
    return record
