"""Benchmark: the reference fleet's cold starts under supervisord (the second backend), beside bench/fleet.py's systemd figures.

`agentkit up --backend supervisord` runs both hosts of the reference fleet on
this machine (a per-host supervisord in a temporary state directory), then,
the same scenarios as bench/fleet.py, time from connect() to the first reply of
a fresh ZeroMQ REQ socket:

1. one optional agent cold: its optional dependencies woken first, then the
   agent stopped (supervisord stopProcess) while the activator keeps its port;
2. the agent and its optional dependencies cold (every one that has any);
3. the deepest chain (pc2: UnifiedWebAgent -> FileSystemAssistantAgent ->
   UnifiedUtilsAgent) all stopped, then one {"action": "chain"}.

Rounds go round-robin over the agents. `agentkit down` ends everything, also on
failure or ^C. Targets as for systemd (p99 under 1 s, chain under 2 s) are
reported, never asserted.

    .venv/bin/python bench/fleet_supervisord.py [--rounds N] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

REPO = Path(__file__).resolve().parents[1]
AGENTKIT = str(REPO / ".venv" / "bin" / "agentkit")
CHAIN = ["UnifiedWebAgent", "FileSystemAssistantAgent", "UnifiedUtilsAgent"]

from agentkit import manifest as manifest_mod  # noqa: E402
from agentkit.backends.supervisord import run as supervisor_run  # noqa: E402


def request(ctx, port: int, action: str = "ping", timeout: float = 30.0) -> tuple[float, dict]:
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        started = time.perf_counter()
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_json({"action": action})
        reply = sock.recv_json()
        return time.perf_counter() - started, reply
    finally:
        sock.close()


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def stats(seconds: list[float]) -> dict | None:
    if not seconds:
        return None
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50": percentile(ms, 0.5), "p99": percentile(ms, 0.99), "max": max(ms)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    m = manifest_mod.load(str(REPO / "agents"))
    state = tempfile.mkdtemp(prefix="agentkit-bench-supervisord-")
    dirs = {host: os.path.join(state, host) for host in m.hosts}
    ctx = zmq.Context.instance()
    samples: dict[str, list[float]] = {"agent cold": [], "deps cold": [], "chain": []}
    failures = []
    try:
        up = subprocess.run([AGENTKIT, "-m", str(REPO / "agents"), "up", "--backend", "supervisord",
                             "--state-dir", state], capture_output=True, text=True, timeout=300)
        if up.returncode != 0:
            print(up.stdout, up.stderr, file=sys.stderr)
            return 1
        rpcs = {host: supervisor_run.rpc(d) for host, d in dirs.items()}

        def stop(names):
            for name in names:
                agent = m.agents[name]
                info = rpcs[agent.host].supervisor.getProcessInfo(name)
                if info["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                    rpcs[agent.host].supervisor.stopProcess(name, True)

        def optional_deps(name):
            out, todo = [], list(m.agents[name].depends_on)
            while todo:
                dep = todo.pop()
                if m.agents[dep].optional and dep not in out:
                    out.append(dep)
                    todo += m.agents[dep].depends_on
            return out

        optional = [a.name for a in m.agents.values() if a.optional]
        for _ in range(args.rounds):
            for name in optional:
                deps = optional_deps(name)
                for dep in deps:  # warm
                    request(ctx, m.agents[dep].port)
                stop([name])
                elapsed, reply = request(ctx, m.agents[name].port)
                if reply.get("agent") != name:
                    failures.append(f"{name}: {reply}")
                samples["agent cold"].append(elapsed)
                if deps:
                    stop([name] + deps)
                    elapsed, reply = request(ctx, m.agents[name].port)
                    samples["deps cold"].append(elapsed)
            stop(CHAIN)
            elapsed, reply = request(ctx, m.agents[CHAIN[0]].port, "chain")
            if not reply.get("ok"):
                failures.append(f"chain: {reply}")
            samples["chain"].append(elapsed)
    finally:
        subprocess.run([AGENTKIT, "-m", str(REPO / "agents"), "down", "--backend", "supervisord",
                        "--state-dir", state], capture_output=True, timeout=300)
    summary = {name: stats(values) for name, values in samples.items()}
    if args.json:
        print(json.dumps({"summary": summary, "failures": failures}, indent=2))
    else:
        print(f"reference fleet under supervisord, both hosts on this machine, {args.rounds} rounds")
        for name, s in summary.items():
            if s:
                print(f"  {name:<11} n={s['n']:<4} p50 {s['p50']:.0f} ms  p99 {s['p99']:.0f} ms  max {s['max']:.0f} ms")
        for failure in failures:
            print(f"  FAILED: {failure}")
        agent = summary["agent cold"]
        chain = summary["chain"]
        print(f"targets: p99 under 1 s: {'MET' if agent and agent['p99'] < 1000 else 'NOT MET'}; "
              f"chain under 2 s: {'MET' if chain and chain['max'] < 2000 else 'NOT MET'}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
