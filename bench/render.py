"""Benchmark: validate + render time for the reference fleet and generated fleets.

What is timed, per fleet: manifest.load(dir) (YAML parsing plus every check)
and render.plan(...) for every host with the default profile -- exactly what
`agentkit render` does before it writes files. Writing files is not timed: it
measures the disk, not agentkit.

Generated fleets are real manifest directories (fleet.yaml + group files) in a
temporary directory, so YAML parsing is measured too; they are deleted
afterwards, also when something fails.

The process is pinned to one CPU, because the target is stated per core and
because migrations between cores add noise. Targets are reported, never
asserted: the exit status is 0 unless something is functionally wrong (a
generated fleet does not validate, or renders the wrong number of files).

    .venv/bin/python bench/render.py [--sizes 1000,10000] [--repeat N] [--json] [--profile-top N]
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import math
import os
import platform
import pstats
import random
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from agentkit import manifest as manifest_mod
from agentkit.backends.systemd import render
from agentkit.errors import ManifestError

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "agents"
# A fixed bin dir: render output must not depend on where the venv lives.
BIN_DIR = "/opt/agentkit/bin"

TARGET_AGENTS = 10_000
TARGET_SECONDS = 2.0
MAX_REPEAT = 50  # bound the run time whatever --repeat says

# Generated fleet shape. Ports: agent ports count up from PORT_BASE on each
# host, health ports follow them; a proxied agent's private port is
# port + 20000 (the default private_port_offset), so the three ranges stay
# apart as long as a host has at most MAX_PER_HOST agents.
HOSTS_MIN = 4
MAX_PER_HOST = 8_000
PORT_BASE = 10_000
PROXY_OFFSET = 20_000
GROUP_SIZE = (20, 50)
DEPENDS_MAX = 4
DEPENDS_WINDOW = 64  # pick dependencies among the last N earlier agents: chains, not a star
SEED = 20240601  # fixed: every run benchmarks the same fleets


# --- generating a fleet ---------------------------------------------------------------

@dataclass
class Expected:
    """What the generator wrote, to check the render against."""

    agents: int = 0
    essential: int = 0
    proxy: int = 0
    files: int = 0  # rendered files over all hosts
    hosts: int = 0


def generate(root: Path, n_agents: int, seed: int = SEED) -> Expected:
    """Write a manifest of n_agents agents to root: fleet.yaml plus group files of 20-50."""
    rng = random.Random(seed)
    n_hosts = max(HOSTS_MIN, math.ceil(n_agents / MAX_PER_HOST))
    hosts = [f"host{i:02d}" for i in range(n_hosts)]
    fleet = {
        "name": f"bench{n_agents}",
        "hosts": {h: {"address": f"10.0.0.{i + 1}"} for i, h in enumerate(hosts)},
        # Like the reference fleet: notify services, so proxy activation is allowed.
        "defaults": {
            "command": ["agentkit-agent"],
            "service_type": "notify",
            "activation": "native",
            "idle_stop": "2min",
            "start_timeout": "30s",
            "memory_max": "4G",
            "restart": {"policy": "on-failure", "delay": "1s", "burst": 5, "interval": "30s"},
        },
        "slices": {
            "essential": {"description": "bench essential agents", "cpu_weight": 200},
            "optional": {"description": "bench optional agents", "cpu_weight": 100},
        },
        "profiles": {"core": {}, "full": {"all": True}},
        "default_profile": "full",
    }
    _dump(root / "fleet.yaml", fleet)

    # Per host: the agents written so far (all, and essential only), for dependencies.
    earlier = {h: [] for h in hosts}
    earlier_essential = {h: [] for h in hosts}
    next_index = {h: 0 for h in hosts}
    per_host_units = {h: {"agents": 0, "optional": 0, "proxy": 0, "slices": set()} for h in hosts}
    exp = Expected(hosts=n_hosts)

    group_no = 0
    while exp.agents < n_agents:
        size = min(rng.randint(*GROUP_SIZE), n_agents - exp.agents)
        host = hosts[group_no % n_hosts]  # round-robin keeps hosts the same size
        group = f"group{group_no:04d}"
        agents = {}
        for _ in range(size):
            i = next_index[host]
            next_index[host] += 1
            name = f"{group}_agent{i:05d}_{host}"
            essential = rng.random() < 1 / 3
            # Essential agents start at boot and may only wait for essential ones.
            pool = (earlier_essential if essential else earlier)[host][-DEPENDS_WINDOW:]
            deps = rng.sample(pool, min(len(pool), rng.randint(0, DEPENDS_MAX)))
            spec = {"port": PORT_BASE + i, "health_port": PORT_BASE + MAX_PER_HOST + i}
            if essential:
                spec["essential"] = True
            if deps:
                spec["depends_on"] = deps
            proxy = not essential and rng.random() < 0.2
            if proxy:
                spec["activation"] = "proxy"  # private port: port + private_port_offset
            # A few per-agent extras, as real manifests have them.
            if rng.random() < 0.1:
                spec["environment"] = {"MODEL": f"model-{i % 7}", "LOG_LEVEL": "info"}
            if rng.random() < 0.05:
                spec["gpu_memory"] = "6G"
            if rng.random() < 0.1:
                spec["description"] = f"bench agent {i} of {host} (100% synthetic)"
            agents[name] = spec

            earlier[host].append(name)
            if essential:
                earlier_essential[host].append(name)
            units = per_host_units[host]
            units["agents"] += 1
            units["optional"] += not essential
            units["proxy"] += proxy
            units["slices"].add("essential" if essential else "optional")
            exp.agents += 1
            exp.essential += essential
            exp.proxy += proxy
        _dump(root / f"{group}.yaml", {"group": group, "host": host, "agents": agents})
        group_no += 1

    if max(next_index.values()) > MAX_PER_HOST:  # pragma: no cover - guarded by n_hosts
        raise AssertionError("too many agents per host for the port layout")
    # Per host: a service per agent, a socket per optional agent, a proxy service per
    # proxied agent, agentkit.slice + one slice per slice used, agentkit.target, the two
    # re-arm template units where there are optional agents, and the status service with
    # the unit that makes its user.
    for units in per_host_units.values():
        if units["agents"]:
            exp.files += (units["agents"] + units["optional"] + units["proxy"]
                          + 1 + len(units["slices"]) + 1 + (2 if units["optional"] else 0) + 2)
        else:
            exp.files += 2 + 2  # agentkit.slice, agentkit.target and the status service's two only
    return exp


def _dump(path: Path, data: dict) -> None:
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)  # writing is not timed, but 10k should be quick
    with open(path, "w", encoding="utf-8") as handle:
        yaml.dump(data, handle, Dumper=dumper, sort_keys=False, default_flow_style=None, width=200)


# --- measuring ----------------------------------------------------------------------

@dataclass
class Result:
    fleet: str
    agents: int
    hosts: int
    files: int
    runs: int
    load_s: list[float] = field(default_factory=list)
    render_s: list[float] = field(default_factory=list)
    total_s: list[float] = field(default_factory=list)

    def summary(self) -> dict:
        def stats(xs: list[float]) -> dict:
            return {"median": statistics.median(xs), "min": min(xs)}
        total = stats(self.total_s)
        return {
            "fleet": self.fleet, "agents": self.agents, "hosts": self.hosts, "files": self.files,
            "runs": self.runs, "load_s": stats(self.load_s), "render_s": stats(self.render_s),
            "total_s": total,
            "us_per_agent": {k: v / self.agents * 1e6 for k, v in total.items()},
        }


def load_and_render(root: Path) -> tuple[float, float, int, int, int]:
    """One timed pass: (load seconds, render seconds, files, agents, hosts)."""
    t0 = time.perf_counter()
    m = manifest_mod.load(str(root))
    t1 = time.perf_counter()
    files = 0
    for host in m.hosts:
        files += len(render.plan(m, host, None, bin_dir=BIN_DIR))
    t2 = time.perf_counter()
    return t1 - t0, t2 - t1, files, len(m.agents), len(m.hosts)


def measure(label: str, root: Path, runs: int) -> Result:
    result = None
    for _ in range(runs):
        # Collect the previous run's garbage outside the timed region, so one run
        # does not pay for another; the collector stays on inside it, as in real use.
        gc.collect()
        load_s, render_s, files, agents, hosts = load_and_render(root)
        if result is None:
            result = Result(label, agents, hosts, files, runs)
        elif files != result.files:
            raise AssertionError(f"{label}: {files} files this run, {result.files} before")
        result.load_s.append(load_s)
        result.render_s.append(render_s)
        result.total_s.append(load_s + render_s)
    return result


def default_runs(n_agents: int) -> int:
    return 5 if n_agents <= 1_000 else 3


# --- pinning and profiling -----------------------------------------------------------

def pin_one_cpu() -> str:
    """Pin to one CPU of those we may use; the highest, as CPU 0 tends to take more interrupts."""
    if not hasattr(os, "sched_setaffinity"):
        return "not pinned (os.sched_setaffinity is not available on this platform)"
    allowed = sorted(os.sched_getaffinity(0))
    cpu = allowed[-1]
    os.sched_setaffinity(0, {cpu})
    assert os.sched_getaffinity(0) == {cpu}
    return f"pinned to CPU {cpu} with os.sched_setaffinity (allowed were {allowed}; other processes may still share it)"


def profile(root: Path, top: int) -> str:
    """One load + render pass under cProfile: the top functions by cumulative and by own time."""
    profiler = cProfile.Profile()
    gc.collect()
    profiler.enable()
    load_and_render(root)
    profiler.disable()
    parts = []
    for order in ("cumulative", "tottime"):
        buffer = io.StringIO()
        stats = pstats.Stats(profiler, stream=buffer)
        stats.sort_stats(order).print_stats(top)
        text = buffer.getvalue()
        # pstats prints a header before the table; keep the totals line and the table.
        start = text.find("   Ordered by")
        parts.append(f"--- cProfile, one load + render pass of {root.name}, top {top} by {order} ---\n"
                     + (text[start:] if start >= 0 else text).rstrip())
    return "\n\n".join(parts)


# --- main -----------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1000,10000",
                        help="generated fleet sizes, comma separated (default: 1000,10000)")
    parser.add_argument("--repeat", type=int, default=None,
                        help=f"runs per fleet (default: 5 up to 1000 agents, 3 above; at most {MAX_REPEAT})")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of the report")
    parser.add_argument("--profile-top", type=int, default=0, metavar="N",
                        help="also profile one pass of the largest fleet (10k by default) and print the top N functions")
    parser.add_argument("--no-reference", action="store_true", help="skip the reference fleet in agents/")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(s) for s in args.sizes.split(",") if s.strip()})
    except ValueError:
        parser.error(f"--sizes: expected numbers like 1000,10000, got {args.sizes!r}")
    if any(s < 1 for s in args.sizes):
        parser.error("--sizes: every size must be at least 1")
    if args.repeat is not None and not 1 <= args.repeat <= MAX_REPEAT:
        parser.error(f"--repeat: from 1 to {MAX_REPEAT}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    pinning = pin_one_cpu()
    say = (lambda *a: print(*a, file=sys.stderr)) if args.json else print
    say(f"agentkit render benchmark: Python {platform.python_version()}, {platform.machine()}, "
        f"PyYAML {yaml.__version__} (libyaml: {hasattr(yaml, 'CSafeLoader')})")
    say(f"one core: {pinning}")

    # Warm-up, untimed: imports, the jinja2 environment (cached per process) and
    # template compilation happen once per `agentkit render`, not per agent.
    load_and_render(REFERENCE)

    results: list[Result] = []
    profile_text = ""
    if not args.no_reference:
        results.append(measure("reference", REFERENCE, args.repeat or 5))
    with tempfile.TemporaryDirectory(prefix="agentkit-bench-") as tmp:
        for size in args.sizes:
            root = Path(tmp) / f"fleet{size}"
            root.mkdir()
            t0 = time.perf_counter()
            expected = generate(root, size)
            say(f"generated {size} agents ({expected.essential} essential, {expected.proxy} proxy) "
                f"on {expected.hosts} hosts in {len(os.listdir(root)) - 1} group files "
                f"({time.perf_counter() - t0:.1f} s, not timed)")
            # Functional checks: the fleet must validate and render every expected file.
            try:
                manifest_mod.load(str(root))
            except ManifestError as exc:
                print(f"FAIL: the generated {size}-agent fleet does not validate:", file=sys.stderr)
                for problem in exc.problems[:20]:
                    print(f"  {problem}", file=sys.stderr)
                return 1
            result = measure(f"generated-{size}", root, args.repeat or default_runs(size))
            if (result.agents, result.files) != (expected.agents, expected.files):
                print(f"FAIL: {size}-agent fleet: loaded {result.agents} agents and rendered {result.files} "
                      f"files, expected {expected.agents} and {expected.files}", file=sys.stderr)
                return 1
            results.append(result)
            if args.profile_top and size == args.sizes[-1]:
                profile_text = profile(root, args.profile_top)  # printed last, after the figures

    summaries = [r.summary() for r in results]
    by_size = {s["agents"]: s for s in summaries if s["fleet"].startswith("generated")}
    growth = None
    if len(args.sizes) >= 2:
        small, large = by_size[args.sizes[0]], by_size[args.sizes[-1]]
        growth = {
            "sizes": [small["agents"], large["agents"]],
            "ratio_median": large["total_s"]["median"] / small["total_s"]["median"],
            "linear_ratio": large["agents"] / small["agents"],
        }
    target = None
    if TARGET_AGENTS in by_size:
        median = by_size[TARGET_AGENTS]["total_s"]["median"]
        target = {"agents": TARGET_AGENTS, "seconds": TARGET_SECONDS, "median_s": median,
                  "met": median < TARGET_SECONDS}

    if args.json:
        if profile_text:
            print(profile_text, file=sys.stderr)  # stdout stays one JSON object
        print(json.dumps({"python": platform.python_version(), "cpu": pinning, "results": summaries,
                          "growth": growth, "target": target}, indent=2))
        return 0

    print()
    print(f"{'fleet':<17}{'agents':>7}{'hosts':>6}{'files':>7}{'runs':>5}"
          f"{'load med/min s':>17}{'render med/min s':>19}{'total med/min s':>18}{'us/agent med':>14}")
    for s in summaries:
        cols = [f"{s[k]['median']:.3f}/{s[k]['min']:.3f}" for k in ("load_s", "render_s", "total_s")]
        print(f"{s['fleet']:<17}{s['agents']:>7}{s['hosts']:>6}{s['files']:>7}{s['runs']:>5}"
              f"{cols[0]:>17}{cols[1]:>19}{cols[2]:>18}{s['us_per_agent']['median']:>14.0f}")
    if growth:
        a, b = growth["sizes"]
        print(f"\ngrowth: time({b})/time({a}) = {growth['ratio_median']:.2f} "
              f"(medians; linear would be {growth['linear_ratio']:.0f})")
    if target:
        verdict = "MET" if target["met"] else "NOT MET"
        print(f"target: {TARGET_AGENTS:,} agents in under {TARGET_SECONDS:g} s on one core: {verdict} "
              f"(median {target['median_s']:.3f} s)")
    if profile_text:
        print("\n" + profile_text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
