"""The checks across agents, made once a manifest is read: ports, dependencies,
cycles, start limits. Each backend adds its own (backends.check): together they are
everything render, install or up would refuse, so `agentkit validate` reports it first.

A check yields Issues located by manifest key; the loader turns them into
FILE:LINE problems.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Collection, Iterator

from . import values
from .errors import did_you_mean
from .graph import find_cycles
from .model import Manifest


@dataclass(frozen=True)
class Issue:
    agent: str | None  # the agent whose declaration holds the key; None: a key of the fleet file
    path: tuple  # below agents.<agent>, or from the top of the fleet file
    message: str


def port_owners(m: Manifest) -> dict[tuple[str, int], str]:
    """(host, port) -> who uses it, first come: fleet services, the router, then the agents'
    ports in manifest order."""
    return _owners_and_clashes(m)[0]


def _owners_and_clashes(m: Manifest) -> tuple[dict[tuple[str, int], str], list[Issue]]:
    owners: dict[tuple[str, int], str] = {}
    for host in m.hosts.values():
        for service, port in host.ports:
            owners.setdefault((host.name, port), f"the fleet service {service} (hosts.{host.name}.ports.{service})")
        owners.setdefault((host.name, host.status_port), f"the status service (hosts.{host.name}.status.port)")
    if m.router is not None:
        owners.setdefault((m.router.host, m.router.port), "the router (router.port)")
    clashes = []
    for agent in m.agents.values():
        for key, port in (("port", agent.port), ("health_port", agent.health_port),
                          ("private_port", agent.private_port)):
            if port is None:
                continue
            label = f"{agent.name}.{key}"
            other = owners.setdefault((agent.host, port), label)
            if other != label:
                clashes.append(Issue(agent.name, (key,), f"{port} is also used on {agent.host} by {other}"))
    return owners, clashes


def fleet(m: Manifest, declared: Collection[str]) -> Iterator[Issue]:
    """`declared`: every agent name of the files, also those with problems of their own
    (a dependency on one of them is not 'unknown')."""
    yield from _ports(m)
    yield from _dependencies(m, declared)
    yield from _start_limits(m)
    yield from _gpus(m)
    yield from _unit_text(m)


# What the agents of one host may put in their unit files together: each value is bounded
# (parsers.MAX_TEXT, MAX_WORDS), but a long one in defaults: repeats in every agent, and a
# manifest of a few hundred kilobytes would render gigabytes.
MAX_HOST_TEXT = 64 << 20


def _unit_text(m: Manifest) -> Iterator[Issue]:
    per_host: dict[str, int] = {}
    for agent in m.agents.values():
        size = (len(agent.description) + sum(len(word) for word in agent.command)
                + sum(len(name) + len(str(value)) for name, value in agent.environment))
        per_host[agent.host] = per_host.get(agent.host, 0) + size
    for host, size in per_host.items():
        if size > MAX_HOST_TEXT:
            yield Issue(None, ("hosts", host), f"the descriptions, commands and environments of its agents add "
                        f"up to {size >> 20:,} MiB of unit files, at most {MAX_HOST_TEXT >> 20} MiB (a long value "
                        "in defaults: is repeated in every agent)")


def _ports(m: Manifest) -> list[Issue]:
    """One owner per (host, port), across agent, health, private and fleet ports."""
    return _owners_and_clashes(m)[1]


def _dependencies(m: Manifest, declared: Collection[str]) -> Iterator[Issue]:
    agents = m.agents
    for agent in agents.values():
        seen = set()
        for index, dep in enumerate(agent.depends_on):
            path = ("depends_on", index)
            if dep in seen:
                yield Issue(agent.name, path, f"{dep} is listed twice")
            seen.add(dep)
            if dep == agent.name:
                yield Issue(agent.name, path, "an agent cannot depend on itself")
            elif dep not in declared:
                yield Issue(agent.name, path, f"unknown agent {dep!r}{did_you_mean(dep, declared)}")
            elif dep not in agents:
                continue  # declared, with problems of its own
            elif agent.essential and agents[dep].optional:
                yield Issue(agent.name, path,
                            f"essential agent {agent.name} depends on optional agent {dep}: an essential "
                            "agent starts at boot and cannot wait for an on-demand one (make "
                            f"{dep} essential, or {agent.name} optional)")
    graph = {a.name: [d for d in a.depends_on if d in agents and d != a.name] for a in agents.values()}
    for cycle in find_cycles(graph):
        yield Issue(cycle[0], ("depends_on",), "dependency cycle: " + " -> ".join(cycle + [cycle[0]]))


def _start_limits(m: Manifest) -> Iterator[Issue]:
    """Idle wake-ups must never hit the start limit; a crash loop must."""
    for agent in m.agents.values():
        restart = agent.restart
        if restart.policy != "no" and restart.burst * restart.delay >= restart.interval:
            yield Issue(agent.name, ("restart",),
                        f"a crash loop restarting every {values.format_span(restart.delay)} never "
                        f"reaches burst {restart.burst} within interval {values.format_span(restart.interval)}: "
                        "systemd would restart it forever (lower delay or burst, or raise interval)")
        if agent.optional and agent.activation == "native" and restart.policy in ("always", "on-success"):
            yield Issue(agent.name, ("restart",),
                        f"restart policy {restart.policy} would start the agent again as soon as it "
                        "exits when idle, so it would never be dormant (use on-failure)")
        if agent.optional:
            wakeups = restart.interval // agent.idle_stop + 1
            if wakeups >= restart.burst:
                yield Issue(agent.name, ("restart",),
                            f"{wakeups} wake-ups after idle stops of "
                            f"{values.format_span(agent.idle_stop)} fit in interval "
                            f"{values.format_span(restart.interval)}, reaching burst {restart.burst}: "
                            "on-demand starts would hit the start limit (raise burst or idle_stop)")


def _gpus(m: Manifest) -> Iterator[Issue]:
    """Each GPU agent's GPU exists and holds it; the essential ones of a GPU (and the router's
    reserve there) fit together, since they all run at once and none is ever stopped for room."""
    from .gpu import table as gpu_table
    from .gpu.admission import gib

    for host in m.hosts.values():
        declared = dict(host.gpus)
        table = gpu_table.for_host(m, host.name)
        if table is None:
            continue
        essential: dict[int, list] = {}
        for agent in m.on_host(host.name):
            if agent.gpu_memory is None:
                continue
            if declared and agent.gpu not in declared:
                yield Issue(agent.name, ("gpu",), f"host {host.name} has no GPU {agent.gpu} "
                            f"(hosts.{host.name}.gpus: {', '.join(map(str, declared))})")
                continue
            total = declared.get(agent.gpu)
            if total is not None and agent.gpu_memory > total:
                yield Issue(agent.name, ("gpu_memory",), f"{gib(agent.gpu_memory)} is more than GPU {agent.gpu} of "
                            f"host {host.name} has ({gib(total)}, hosts.{host.name}.gpus)")
                continue
            if agent.essential:
                essential.setdefault(agent.gpu, []).append(agent)
        for agent in m.on_host(host.name):  # an optional one that could never fit beside them
            total = declared.get(agent.gpu)
            if agent.gpu_memory is None or agent.essential or total is None or agent.gpu_memory > total:
                continue
            kept = sum(a.gpu_memory for a in essential.get(agent.gpu, ())) + table.reserved(agent.gpu)
            if kept and agent.gpu_memory + kept > total:
                yield Issue(agent.name, ("gpu_memory",), f"{gib(agent.gpu_memory)} never fits on GPU {agent.gpu} of "
                            f"host {host.name}: its essential agents and the router's gpu.reserve keep "
                            f"{gib(kept)} of its {gib(total)}")
        for index, agents in essential.items():
            total = declared.get(index)
            reserve = table.reserved(index)
            need = sum(a.gpu_memory for a in agents) + reserve
            if total is None or need <= total:
                continue
            parts = [f"{a.name} {gib(a.gpu_memory)}" for a in agents]
            if reserve:
                parts.append(f"the router's gpu.reserve {gib(reserve)}")
            yield Issue(agents[-1].name, ("gpu_memory",),
                        f"the essential agents on GPU {index} of host {host.name} need {gib(need)} together "
                        f"({', '.join(parts)}), more than its {gib(total)}: they all run at once and none "
                        "is stopped for room")
