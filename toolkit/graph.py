"""The dependency graph: cycles, start order, closures, and pictures of it.

Iterative throughout: generated fleets can have chains deeper than Python's
recursion limit.
"""

from __future__ import annotations

import heapq
from typing import Iterable, Mapping, Sequence

from .errors import AgentkitError
from .model import Agent, Manifest


def find_cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """One cycle per strongly connected component that has one, each starting at its
    smallest name, in sorted order: deterministic messages."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(graph.get(start, ())))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            advanced = False
            for child in children:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(graph.get(child, ()))))
                    advanced = True
                    break
                if child in on_stack:
                    low[node] = min(low[node], index[child])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1 or node in graph.get(node, ()):
                    components.append(component)
    return sorted(_cycle_in(graph, set(c)) for c in components)


def _cycle_in(graph: Mapping[str, Sequence[str]], members: set[str]) -> list[str]:
    """A simple cycle through the smallest member, found by breadth-first search."""
    start = min(members)
    previous: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph.get(node, ())):
                if child not in members:
                    continue
                if child == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(previous[path[-1]])
                    return list(reversed(path))
                if child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
    return [start]  # pragma: no cover - a component always holds a cycle


def closure(manifest: Manifest, names: Iterable[str]) -> set[str]:
    """The named agents and everything they depend on, on the same host or not."""
    seen: set[str] = set()
    todo = list(names)
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        todo.extend(manifest.agents[name].depends_on)
    return seen


def selected(manifest: Manifest, profile: str | None = None) -> list[Agent]:
    """The agents a profile installs: every essential agent, the profile's optional
    ones, and what those depend on. Manifest order."""
    chosen = manifest.profiles[profile or manifest.default_profile]
    if chosen.all:
        return list(manifest.agents.values())
    keep = closure(manifest, chosen.agents)
    return [a for a in manifest.agents.values() if a.essential or a.name in keep]


def on_host(manifest: Manifest, host: str, profile: str | None = None) -> list[Agent]:
    """The agents `profile` (default: the manifest's) puts on `host`, manifest order;
    an unknown host or profile is an AgentkitError."""
    if host not in manifest.hosts:
        raise AgentkitError(f"unknown host {host!r} (hosts in {manifest.root}: {', '.join(manifest.hosts)})")
    if profile is not None and profile not in manifest.profiles:
        raise AgentkitError(f"unknown profile {profile!r} (profiles: {', '.join(manifest.profiles)})")
    return [a for a in selected(manifest, profile) if a.host == host]


def cross_host(manifest: Manifest) -> list[tuple[Agent, Agent]]:
    """(agent, dependency) pairs on different hosts: addresses, not unit dependencies."""
    pairs = []
    for agent in manifest.agents.values():
        for dep in agent.depends_on:
            other = manifest.agents[dep]
            if other.host != agent.host:
                pairs.append((agent, other))
    return pairs


def start_order(agents: Sequence[Agent]) -> list[Agent]:
    """Dependencies before dependants (Kahn), ties kept in manifest order."""
    names = {a.name for a in agents}
    waiting = {a.name: sum(1 for d in a.depends_on if d in names) for a in agents}
    users: dict[str, list[str]] = {}
    for agent in agents:
        for dep in agent.depends_on:
            if dep in names:
                users.setdefault(dep, []).append(agent.name)
    by_name = {a.name: a for a in agents}
    position = {a.name: i for i, a in enumerate(agents)}
    order: list[Agent] = []

    heap = [(position[n], n) for n, count in waiting.items() if count == 0]
    heapq.heapify(heap)
    while heap:
        _, name = heapq.heappop(heap)
        order.append(by_name[name])
        for user in users.get(name, ()):
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(heap, (position[user], user))
    return order


def to_dot(manifest: Manifest, agents: Sequence[Agent]) -> str:
    """Graphviz: one cluster per host; essential agents solid, optional ones dashed."""
    lines = [f'digraph "{manifest.name}" {{', "  rankdir=LR;", '  node [shape=box, fontname="sans-serif"];']
    names = {a.name for a in agents}
    for host in manifest.hosts:
        members = [a for a in agents if a.host == host]
        if not members:
            continue
        lines.append(f'  subgraph "cluster_{host}" {{')
        lines.append(f'    label="{host}";')
        for agent in members:
            style = "solid" if agent.essential else "dashed"
            lines.append(f'    "{agent.name}" [style={style}, tooltip="port {agent.port}"];')
        lines.append("  }")
    for agent in agents:
        for dep in agent.depends_on:
            if dep in names:
                cross = manifest.agents[dep].host != agent.host
                lines.append(f'  "{agent.name}" -> "{dep}"' + (" [color=red, label=address];" if cross else ";"))
    lines.append("}")
    return "\n".join(lines) + "\n"


def to_mermaid(manifest: Manifest, agents: Sequence[Agent]) -> str:
    """Mermaid flowchart: renders on GitHub and in most Markdown viewers."""
    ids = {a.name: f"a{i}" for i, a in enumerate(agents)}
    lines = ["flowchart LR"]
    for host in manifest.hosts:
        members = [a for a in agents if a.host == host]
        if not members:
            continue
        lines.append(f"  subgraph {host}")
        for agent in members:
            shape = f'["{agent.name}"]' if agent.essential else f'("{agent.name}")'
            lines.append(f"    {ids[agent.name]}{shape}")
        lines.append("  end")
    for agent in agents:
        for dep in agent.depends_on:
            if dep in ids:
                arrow = "-. address .->" if manifest.agents[dep].host != agent.host else "-->"
                lines.append(f"  {ids[agent.name]} {arrow} {ids[dep]}")
    return "\n".join(lines) + "\n"
