"""The admission decision, pure: given what a GPU reports and what runs on it, does a new
agent fit, whom to stop to make room, or why it cannot start now.

Room on a GPU is NVML's free memory, less the router's reserve, less what the agents that
run there (starting or started) were admitted for and do not use yet: an agent that is still
loading has its whole `gpu_memory` counted, so two cold starts never take the same memory.
Without NVML the manifest's figures stand in: the GPU's memory less every running agent's
`gpu_memory`.

An essential agent's `gpu_memory` is kept for it even while it is down.

Who may be stopped: an optional agent on the same GPU that is up, idle (no connection, no
request), not starting or stopping, not needed by a running agent, and not `gpu_evict: never`.
The order: `gpu_evict` class (first, normal, last), then the least recently used.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..settings import EVICT_ORDER
from .table import ESSENTIAL, Table, Tenant


REFUSED = "its last start was refused"  # how `agentkit status` tells a refusal (both backends)
NO_ROOM = "no room on GPU"  # how a refusal's reason begins


@dataclass(frozen=True)
class Running:
    """A GPU agent that is up or coming up, as its backend sees it."""

    tenant: Tenant
    used: int = 0             # bytes NVML counts for its processes (0 when NVML cannot say)
    busy: str = ""            # why it must not be stopped now ("2 connections", "starting"), or ""
    last_used: float = 0.0    # when it last served, on the backend's clock: the oldest goes first


@dataclass(frozen=True)
class Room:
    index: int
    total: int | None         # bytes, None when neither NVML nor the manifest says
    free: int | None          # bytes NVML reports free; None without NVML
    claimed: int              # admitted, not yet in use (without NVML: every running agent's need)
    reserve: int              # the router's
    available: int | None     # what a new agent may take; None when nothing is known
    source: str               # "NVML" or why the manifest's figures stand in


@dataclass(frozen=True)
class Plan:
    fits: bool
    room: Room
    victims: tuple[str, ...] = ()   # stop these (in order) and it will fit
    blockers: tuple[str, ...] = field(default=())  # those that hold memory and may not be stopped, with why
    notes: tuple[str, ...] = field(default=())     # what else keeps it from fitting

    def reason(self, tenant: Tenant) -> str:
        room = self.room
        held = f"; not stopped: {', '.join(self.blockers)}" if self.blockers else ""
        held += "".join(f"; {note}" for note in self.notes)
        where = "" if room.source == "NVML" else f" ({room.source})"
        available = "unknown" if room.available is None else gib(max(0, room.available))
        return (f"{NO_ROOM} {room.index} for {tenant.name}: needs {gib(tenant.need)}, "
                f"{available} available{where}{held}")


def room(table: Table, index: int, free: int | None, running: list[Running], source: str = "NVML") -> Room:
    """The room on GPU `index`. `free`: NVML's free bytes there, None without NVML (`source`
    then says why)."""
    here = [r for r in running if r.tenant.gpu == index]
    total, reserve = table.total(index), table.reserved(index)
    # An essential agent's memory stays its own while it is down (crashed, restarting): no
    # optional agent may take what it needs to come back.
    up = {r.tenant.name for r in here}
    kept = sum(t.need for t in table.tenants if t.gpu == index and t.evict == ESSENTIAL and t.name not in up)
    if free is None:
        claimed = sum(r.tenant.need for r in here) + kept
        available = None if total is None else total - reserve - claimed
    else:
        claimed = sum(max(0, r.tenant.need - r.used) for r in here) + kept
        available = free - reserve - claimed
    return Room(index, total, free, claimed, reserve, available, source)


def plan(table: Table, tenant: Tenant, free: int | None, running: list[Running], source: str = "NVML") -> Plan:
    """Whether `tenant` fits on its GPU now; if not, the idle agents to stop first, or (none
    would do) who holds the memory. `running` must not hold `tenant` itself."""
    where = room(table, tenant.gpu, free, running, source)
    if where.available is None:  # no NVML, no figure in the manifest: nothing to go by
        return Plan(True, where)
    short = tenant.need - where.available
    if short <= 0:
        return Plan(True, where)
    candidates, blockers = [], []
    for r in running:
        if r.tenant.gpu != tenant.gpu:
            continue
        if not r.tenant.evictable:
            blockers.append(f"{r.tenant.name} ({'essential' if r.tenant.evict != 'never' else 'gpu_evict: never'})")
        elif r.busy:
            blockers.append(f"{r.tenant.name} ({r.busy})")
        else:
            candidates.append(r)
    candidates.sort(key=lambda r: (EVICT_ORDER.index(r.tenant.evict), r.last_used))
    victims = []
    for r in candidates:
        if short <= 0:
            break
        victims.append(r.tenant.name)
        # It gives back what it uses and what it was admitted for beyond that.
        short -= max(r.tenant.need, r.used) if free is not None else r.tenant.need
    if short > 0:
        notes = []
        if candidates:
            notes.append(f"stopping {', '.join(victims)} would not be enough")
        elif not blockers:
            notes.append("no other agent runs there")
        if free is not None and where.total is not None:
            outside = where.total - free - sum(r.used for r in running if r.tenant.gpu == tenant.gpu)
            if outside > 0:
                notes.append(f"{gib(outside)} in use by processes that are not agents")
        return Plan(False, where, (), tuple(blockers), tuple(notes))
    return Plan(False, where, tuple(victims), tuple(blockers))


def gib(amount: int) -> str:
    return f"{amount / (1 << 30):.1f} GiB"


def open_connections(count: int) -> str:
    """Why an agent is busy, when clients are connected to it; '' when none are."""
    return f"{count} open connection{'s' if count != 1 else ''}" if count else ""


def admitted(tenant: Tenant, seconds: float, evicted: list[str]) -> str:
    """The log line of an admission, the same under both backends."""
    stopped = f" (stopped {', '.join(evicted)})" if evicted else ""
    return f"{tenant.name}: admitted on GPU {tenant.gpu} ({gib(tenant.need)}) after {seconds * 1000:.0f} ms{stopped}"
