"""Benchmark: what GPU admission costs.

1. First connection to first answer (a fresh ZeroMQ REQ socket) of an optional GPU agent
   under `agentkit up --backend supervisord`, with the stand-in NVML and CUDA runtime
   (tests/router/fake_nvml.c): on a 16 GiB GPU, agents A and B of 10 GiB each
   (the reference agent, --gpu-allocate). Each round: both dormant, then A (room free),
   then B at once (A idle: stopped for B). Target: the eviction adds no more than the
   victim's stop time (the activator's own measure, from its ledger) plus 100 ms.
2. Decisions: a burst of admissions decided in-process (agentkit.gpu.admission.plan with
   the Sampler the activator uses), counting NVML reads: target 1,000 decisions per second
   with NVML read at most once per sampling interval.

    .venv/bin/python bench/gpu_admission.py [--rounds N] [--decisions N] [--json]

Figures are reported, never asserted; `agentkit down` ends everything, also on failure.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
AGENTKIT = str(Path(sys.executable).with_name("agentkit"))
sys.path.insert(0, str(REPO / "tests"))

from router.nvml import FakeGpu, build_fake_nvml  # noqa: E402

PORTS = {"A": 11451, "B": 11452}
STATUS = 11450
OFFSET = 100  # private ports 11551, 11552


def request(port: int, timeout: float = 30.0) -> float:
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    try:
        began = time.perf_counter()
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_json({"action": "ping"})
        sock.recv_json()
        return time.perf_counter() - began
    finally:
        sock.close()


def states(state_dir: Path) -> dict[str, str]:
    from agentkit.backends.supervisord import run

    return {name: info["statename"] for name, info in
            ((i["name"], i) for i in run.rpc(str(state_dir)).supervisor.getAllProcessInfo())}


def wait(condition, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.05)


def stats(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"n": len(ordered), "p50_ms": round(ordered[len(ordered) // 2] * 1000, 1),
            "max_ms": round(ordered[-1] * 1000, 1), "mean_ms": round(sum(ordered) / len(ordered) * 1000, 1)}


def first_answers(rounds: int, tmp: Path) -> dict:
    gpu = FakeGpu(tmp / "nvml" / "state", build_fake_nvml(tmp / "nvml"))
    gpu.set(("GPU0", 16384, 16384))
    root = tmp / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: gpubench
        hosts:
          bench: {{address: 127.0.0.1, status: {{port: {STATUS}}}, gpus: {{0: 16G}}}}
        private_port_offset: {OFFSET}
        defaults:
          command: [agentkit-agent, --gpu-allocate]
          service_type: notify
          idle_stop: 1s
          restart: {{policy: on-failure, delay: 200ms, burst: 20, interval: 10s}}
        """))
    (root / "bench.yaml").write_text(textwrap.dedent(f"""\
        host: bench
        agents:
          A: {{port: {PORTS['A']}, gpu_memory: 10G}}
          B: {{port: {PORTS['B']}, gpu_memory: 10G}}
        """))
    state = tmp / "state"
    env = {**os.environ, **gpu.environ()}
    up = subprocess.run([AGENTKIT, "-m", str(root), "up", "--backend", "supervisord", "--host", "bench",
                         "--state-dir", str(state)], capture_output=True, text=True, timeout=180, env=env)
    if up.returncode != 0:
        raise RuntimeError(f"agentkit up failed:\n{up.stdout}\n{up.stderr}")
    free, evicting, stops = [], [], []
    ledger = state / "gpu-admissions.jsonl"

    def evictions():
        lines = ledger.read_text().splitlines() if ledger.exists() else []
        return [r for r in map(json.loads, lines) if r["kind"] == "evict"]
    try:
        for _ in range(rounds):
            # supervisord says STARTING for a program's first second (startsecs), then RUNNING.
            wait(lambda: all(states(state)[n] in ("STOPPED", "EXITED") for n in PORTS),
                 "A and B dormant (idle_stop 1 s)")
            free.append(request(PORTS["A"]))
            before = len(evictions())
            evicting.append(request(PORTS["B"]))  # A is idle: stopped for B
            made = evictions()[before:]
            if len(made) != 1:
                raise RuntimeError(f"B's start made {len(made)} evictions, not 1: {made}")
            stops.append(made[0]["stop_s"])
    finally:
        subprocess.run([AGENTKIT, "-m", str(root), "down", "--backend", "supervisord", "--state-dir", str(state),
                        "--timeout", "30"], capture_output=True, timeout=120, env=env)
    added = [e - f for e, f in zip(evicting, free)]
    over = [a - s for a, s in zip(added, stops)]
    return {"room_free": stats(free), "with_eviction": stats(evicting), "victim_stop": stats(stops),
            "added": stats(added), "added_less_stop": stats(over), "oom": len(gpu.out_of_memory()),
            "target_met": max(over) <= 0.1}


DECIDE = r'''
import json, sys, time
from agentkit.gpu import admission, table as t
from agentkit.gpu.nvml import Sampler
n = int(sys.argv[1])
table = t.Table(((0, 16 << 30),), (), tuple(t.Tenant(f"T{i}", 0, 1 << 30, "normal") for i in range(12)))
sampler = Sampler()
running = [admission.Running(table.tenants[i], 1 << 30, "", float(i)) for i in range(1, 12)]
began = time.perf_counter()
spread = 1.0  # s: the burst is paced over one second, as 1,000 first connections would come
for i in range(n):
    target = began + spread * i / n
    while time.perf_counter() < target:
        pass
    sample = sampler.sample()
    admission.plan(table, table.tenants[0], sample.free(0), running, sampler.source())
paced = time.perf_counter() - began
began = time.perf_counter()
for i in range(n):
    sample = sampler.sample()
    admission.plan(table, table.tenants[0], sample.free(0), running, sampler.source())
flat = time.perf_counter() - began
print(json.dumps({"decisions": n, "paced_s": paced, "queries": sampler.queries, "interval_s": sampler.interval,
                  "flat_per_second": n / flat, "nvml": sampler.available}))
'''


def decisions(n: int, tmp: Path) -> dict:
    gpu = FakeGpu(tmp / "nvml2" / "state", build_fake_nvml(tmp / "nvml2"))
    gpu.set(("GPU0", 16384, 4096))
    result = subprocess.run([sys.executable, "-c", DECIDE, str(n)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **gpu.environ()})
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    out = json.loads(result.stdout)
    # Two bursts (paced, then flat out): NVML may be read once per interval of each, plus one.
    allowed = math.ceil(out["paced_s"] / out["interval_s"]) + 2
    out["allowed_queries"] = allowed
    out["target_met"] = out["nvml"] and out["queries"] <= allowed and out["flat_per_second"] >= 1000
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--decisions", type=int, default=1000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="agentkit-gpu-bench-") as tmp:
        results = {"first_answer": first_answers(args.rounds, Path(tmp)),
                   "decisions": decisions(args.decisions, Path(tmp))}
    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    first, decided = results["first_answer"], results["decisions"]
    print(f"first connection to first answer, {args.rounds} rounds (supervisord, stand-in GPU of 16 GiB, 10 GiB agents):")
    for key in ("room_free", "with_eviction", "victim_stop", "added", "added_less_stop"):
        s = first[key]
        print(f"  {key:<16} p50 {s['p50_ms']:7.1f} ms  max {s['max_ms']:7.1f} ms")
    print(f"  out-of-memory allocations: {first['oom']}")
    print(f"  target (eviction adds at most the victim's stop + 100 ms): {'MET' if first['target_met'] else 'NOT MET'}")
    print(f"decisions: {decided['decisions']} paced over {decided['paced_s']:.2f} s read NVML {decided['queries']} times "
          f"(interval {decided['interval_s'] * 1000:.0f} ms, allowed {decided['allowed_queries']}); "
          f"flat out {decided['flat_per_second']:,.0f} decisions/s: {'MET' if decided['target_met'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
