"""Every agent's state, read from systemd over D-Bus.

dormant: an optional agent whose socket listens and whose service is not running;
starting, active, stopping, failed; inactive: an essential agent that is stopped.
A dormant agent is never woken to find out: its health port is not on the socket.
"""

from __future__ import annotations

import os

from ... import graph, units
from ...gpu import admission, ledger
from ...model import Manifest
from .. import AgentStatus, rss
from . import install
from .dbus import NO_VALUE


def state_of(optional: bool, service, socket) -> tuple[str, str]:
    """(state, detail) of an agent from its service's and socket's UnitState (the status service's too)."""
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
    if optional and socket is not None:
        socket_detail = f"socket {socket.active_state}/{socket.sub_state}"
        if socket.active_state == "active":
            return "dormant", socket_detail
        if socket.active_state == "failed":
            return "failed", socket_detail
        return "inactive", socket_detail
    return "inactive", detail


async def collect(manifest: Manifest, host: str, profile: str | None, manager) -> list[AgentStatus]:
    agents = graph.on_host(manifest, host, profile)
    names = []
    for agent in agents:
        names.append(units.service(agent.name))
        if agent.optional:
            names.append(units.socket(agent.name, agent.activation))
    states = await manager.states(names)
    ledger_path = os.path.join(ledger.SYSTEMD_DIR, ledger.NAME)  # GPU admission's (agentkit-admit)
    out = []
    for agent in agents:
        service = states.get(units.service(agent.name))
        socket = states.get(units.socket(agent.name, agent.activation)) if agent.optional else None
        state, detail = state_of(agent.optional, service, socket)
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
                memory = rss(props.get("MainPID") or 0)
            began, ready = props.get("InactiveExitTimestampMonotonic", 0), props.get("ActiveEnterTimestampMonotonic", 0)
            if began and ready and ready >= began:
                last_start = round((ready - began) / 1e6, 6)
            result = props.get("Result")
            refused = ledger.refusal(ledger_path, agent.name) if agent.gpu_memory and state != "active" else None
            if refused:
                detail += f"; {admission.REFUSED}: {refused}"
            elif state == "failed" or service.sub_state == "auto-restart":
                said = install.last_words(units.service(agent.name))  # why, in the program's own words
                if said:
                    detail += f": {said}"
        out.append(AgentStatus(agent.name, agent.essential, units.service(agent.name), state, detail, since, restarts,
                               memory, last_start, result))
    return out
