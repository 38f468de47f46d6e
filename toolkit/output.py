"""What the commands print: tables, the model as JSON, the status table. Pure:
each function returns text (or a JSON-ready dict); the CLI writes it."""

from __future__ import annotations

import time
from dataclasses import asdict
from typing import Sequence

from . import graph, values
from .gpu.admission import REFUSED
from .model import Agent, Manifest
from .router.settings import ROUTER_SETTINGS, router_flag_value


def table(rows: Sequence[Sequence[str]], *, last_free: bool = False) -> str:
    """Columns padded to their widest cell; `last_free`: the last column is not padded."""
    padded = len(rows[0]) - 1 if last_free else len(rows[0])
    widths = [max(len(r[i]) for r in rows) for i in range(padded)]
    lines = []
    for r in rows:
        cells = [c.ljust(w) for c, w in zip(r, widths)] + list(r[padded:])
        lines.append("  ".join(cells).rstrip() if not last_free else "  ".join(cells))
    return "\n".join(lines)


def agents_table(agents: Sequence[Agent], activation=lambda agent: agent.activation) -> str:
    """One row per agent; `activation(agent)`: how the backend that runs it here holds its port."""
    rows = [("AGENT", "HOST", "CLASS", "PORT", "HEALTH", "ACTIVATION", "READY", "DEPENDS ON")]
    for a in agents:
        ready = a.ready.kind + (f" {a.ready.path}" if a.ready.path else "")
        rows.append((a.name, a.host, "essential" if a.essential else "optional", str(a.port),
                     str(a.health_port or "-"), activation(a), ready, ",".join(a.depends_on) or "-"))
    return table(rows, last_free=True)


def model_json(m: Manifest, agents: Sequence[Agent], profile: str | None) -> dict:
    """The resolved manifest, spans and sizes written as in the manifest."""
    def agent_json(a: Agent) -> dict:
        data = asdict(a)
        data["where"] = str(a.where)
        data["environment"] = dict(a.environment)
        data["restart"] = {"policy": a.restart.policy, "delay": values.format_span(a.restart.delay),
                           "burst": a.restart.burst, "interval": values.format_span(a.restart.interval)}
        for key in ("idle_stop", "start_timeout", "watchdog"):
            usec = data.pop(key)  # re-added last, where `show --json` has always had them
            data[key] = values.format_span(usec) if usec is not None else None
        if a.essential:
            data.pop("idle_stop")
        for key in ("memory_max", "gpu_memory"):
            if data[key] is not None:
                data[key] = values.format_size(data[key])
        return data

    return {
        "name": m.name,
        "manifest": m.root,
        "profile": profile or m.default_profile,
        "hosts": {h.name: {"address": h.address, "environment": dict(h.environment), "ports": dict(h.ports),
                           **({"gpus": {str(i): "auto" if b is None else values.format_size(b) for i, b in h.gpus}}
                              if h.gpus else {})}
                  for h in m.hosts.values()},
        "slices": {s.name: asdict(s) for s in m.slices.values()},
        "profiles": {p.name: sorted(a.name for a in graph.selected(m, p.name) if a.optional)
                     for p in m.profiles.values()},
        "agents": [agent_json(a) for a in agents],
        "cross_host": [{"agent": a.name, "depends_on": d.name, "address": f"{m.hosts[d.host].address}:{d.port}"}
                       for a, d in graph.cross_host(m)],
        "router": _router_json(m.router),
    }


def _router_json(router) -> dict | None:
    if router is None:
        return None
    data = {"host": router.host, "port": router.port, "bind": router.bind, "api_key_file": router.api_key_file,
            "memory_max": values.format_size(router.memory_max), "where": str(router.where)}
    for key, value in router.settings:
        if ROUTER_SETTINGS[key].multiple:  # the rules, tiers and peers, field by field (sizes in bytes)
            data[key] = [asdict(item) for item in value]
            continue
        text = router_flag_value(key, value)[0]  # sizes and spans as written in the manifest
        data[key] = text if text != str(value) else value
    return data


def status_table(rows: Sequence[dict], now: float | None = None) -> str:
    """The table of `agentkit status`, and a line counting the states."""
    now = time.time() if now is None else now
    hosts = any("host" in r for r in rows)  # status --all: every host's agents in one table
    lines = [("HOST",) * hosts + ("AGENT", "STATE", "SINCE", "RESTARTS", "MEMORY", "START")]
    for r in rows:
        lines.append((r.get("host", ""),) * hosts + (
                      r["name"], r["state"], ago(now, r["since"]),
                      "-" if r["restarts"] is None else str(r["restarts"]), mib(r["memory"]),
                      "-" if r["last_start_s"] is None else f"{r['last_start_s']:.3f}s"))
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["state"]] = counts.get(r["state"], 0) + 1
    # A start GPU admission refused: the agent looks dormant, so say why under the table.
    refused = [f"{r['name']}: {r['detail'].split(REFUSED + ': ', 1)[1]}" for r in rows
               if REFUSED + ": " in (r.get("detail") or "")]
    return (table(lines) + "\n" + ", ".join(f"{n} {state}" for state, n in sorted(counts.items()))
            + "".join(f"\n{line}" for line in refused))


def ago(now: float, since: float | None) -> str:
    if since is None:
        return "-"
    seconds = max(0, int(now - since))
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"


def mib(value: int | None) -> str:
    return "-" if value is None else f"{value / (1 << 20):.1f}M"


def file_counts(planned) -> str:
    """'56 services, 3 slices, ...' of a plan."""
    counts: dict[str, int] = {}
    for item in planned:
        kind = "template" if "@." in item.path else item.path.rsplit(".", 1)[-1]
        counts[kind] = counts.get(kind, 0) + 1
    return ", ".join(f"{n} {kind}{'s' if n != 1 else ''}" for kind, n in sorted(counts.items()))
