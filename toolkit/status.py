"""Every agent's state, read from systemd over D-Bus.

dormant: an optional agent whose socket listens and whose service is not running;
starting, active, stopping, failed; inactive: an essential agent that is stopped.
A dormant agent is never woken to find out: its health port is not on the socket.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from . import graph, render
from .model import Agent, Manifest

NO_VALUE = (1 << 64) - 1


@dataclass(frozen=True)
class AgentStatus:
    name: str
    essential: bool
    unit: str
    state: str
    detail: str  # systemd's active/sub state of the unit that decides the state
    since: float | None  # seconds since the epoch
    restarts: int | None
    memory: int | None  # bytes
    last_start_s: float | None  # inactive -> active, the last time it started
    result: str | None

    def as_json(self) -> dict:
        return asdict(self)


def _rss(pid: int) -> int | None:
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _state(agent: Agent, service, socket) -> tuple[str, str]:
    if service is None or service.load_state != "loaded":
        return "not-installed", "unit not loaded"
    detail = f"{service.active_state}/{service.sub_state}"
    if service.active_state == "active":
        return "active", detail
    if service.active_state in ("activating", "reloading"):
        return "starting", detail
    if service.active_state == "deactivating":
        return "stopping", detail
    if service.active_state == "failed":
        return "failed", detail
    if agent.optional and socket is not None:
        socket_detail = f"socket {socket.active_state}/{socket.sub_state}"
        if socket.active_state == "active":
            return "dormant", socket_detail
        if socket.active_state == "failed":
            return "failed", socket_detail
        return "inactive", socket_detail
    return "inactive", detail


async def collect(manifest: Manifest, host: str, profile: str | None, manager) -> list[AgentStatus]:
    agents = [a for a in graph.selected(manifest, profile) if a.host == host]
    names = []
    for agent in agents:
        names.append(render.unit(agent))
        if agent.optional:
            names.append(render.socket_unit(agent))
    states = await manager.states(names)
    out = []
    for agent in agents:
        service = states.get(render.unit(agent))
        socket = states.get(render.socket_unit(agent)) if agent.optional else None
        state, detail = _state(agent, service, socket)
        since = restarts = memory = last_start = result = None
        socket_props = await manager.properties(socket) if socket is not None and socket.load_state == "loaded" else {}
        if socket_props.get("Result") == "service-start-limit-hit":
            # The restarts that hit the limit leave the service's own Result at its last
            # failure; the socket says why systemd gave up.
            detail += ", start limit hit: the socket listens again after the start-limit interval"
        if service is not None and service.load_state == "loaded":
            props = await manager.properties(service)
            changed = props.get("StateChangeTimestamp") or 0
            if state == "dormant":
                changed = socket_props.get("StateChangeTimestamp") or changed
            since = changed / 1e6 if changed else None
            restarts = props.get("NRestarts")
            value = props.get("MemoryCurrent")
            if state not in ("active", "starting"):
                memory = None
            elif value not in (None, NO_VALUE):
                memory = value
            else:  # no memory controller for the unit's cgroup: the main process's resident memory
                memory = _rss(props.get("MainPID") or 0)
            began, ready = props.get("InactiveExitTimestampMonotonic", 0), props.get("ActiveEnterTimestampMonotonic", 0)
            if began and ready and ready >= began:
                last_start = round((ready - began) / 1e6, 6)
            result = props.get("Result")
        out.append(AgentStatus(agent.name, agent.essential, render.unit(agent), state, detail, since, restarts,
                               memory, last_start, result))
    return out
