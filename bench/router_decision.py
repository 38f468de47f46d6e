"""Benchmark: the router's decision, one core, at least 10^6 decisions.

The decision is the reference fleet's: agents/fleet.yaml's router section (the
original's rule table, three local tiers, the peer pc2, two cloud models), built
as `agentkit-router eval` builds it, through the router's own command line. The
tasks and the world's states are those of its labelled set,
tests/data/routing/reference.jsonl, cycled. Two paths:

- `decide`: policy.decide(config, task, view), the pure function;
- `select_backend`: Router.select_backend(task), what a request pays: it also
  reads the GPU sampler's snapshot for the backends on this host's GPUs (a real
  GpuSampler; with no NVML here it answers "unknown") and records the decision
  in the Prometheus counters and the decision-latency histogram.

Latency: every call timed on its own with perf_counter_ns (the timer's own
cost, measured on an empty pair of reads in the same run, is reported beside
it and not subtracted). Throughput: a separate untimed loop of the same calls,
decisions per second. The baseline in the same run is a no-op Python call with
the same arguments, so the ratio says how many empty calls one decision costs.

Targets (the issue): p99 under 20 us and over 200,000 decisions per second on
one core; reported MET / NOT MET, never asserted.

    .venv/bin/python bench/router_decision.py [--decisions N] [--json]
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
from pathlib import Path

from agentkit.router import evaluate, policy
from agentkit.router.gpu import GpuSampler
from agentkit.router.server import Router, Settings

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "agents"
LABELS = REPO / "tests" / "data" / "routing" / "reference.jsonl"


def percentile(sorted_ns: list[int], q: float) -> float:
    return sorted_ns[min(len(sorted_ns) - 1, int(q * len(sorted_ns)))] / 1000.0


def timed(fn, args_cycle, n: int) -> list[int]:
    clock = time.perf_counter_ns
    samples = [0] * n
    k = len(args_cycle)
    for i in range(n):
        a, b = args_cycle[i % k]
        t0 = clock()
        fn(a, b)
        samples[i] = clock() - t0
    samples.sort()
    return samples


def rate(fn, args_cycle, n: int) -> float:
    k = len(args_cycle)
    t0 = time.perf_counter()
    for i in range(n):
        a, b = args_cycle[i % k]
        fn(a, b)
    return n / (time.perf_counter() - t0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--decisions", type=int, default=1_000_000)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.decisions
    try:
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})
    except OSError:
        pass

    config, endpoints, _ = evaluate.router_of(str(MANIFEST))
    cases = evaluate.read_cases(str(LABELS), config)
    pairs = [(c.task, c.view) for c in cases]
    # select_backend reads the router's own view (and writes NVML's figures into it): one Router per labelled
    # state, each with views of its own. The settings as agentkit-router's main() builds them, less the key.
    gpu = GpuSampler()  # the router's default timing
    gpu.start()
    settings = Settings(policy=config, endpoints=endpoints)
    routers = []
    for case in evaluate.read_cases(str(LABELS), config):
        router = Router(settings, gpu)
        router.view = case.view
        routers.append((router, case.task))

    def noop(a, b):
        return None

    def decide(task, view):
        return policy.decide(config, task, view)

    def select(router, task):
        return router.select_backend(task)

    results = {}
    empty = timed(noop, [(None, None)], min(n, 200_000))
    results["timer"] = {"p50_us": percentile(empty, 0.5), "p99_us": percentile(empty, 0.99)}
    for name, fn, cycle in (("noop", noop, pairs), ("decide", decide, pairs), ("select_backend", select, routers)):
        for _ in range(2):  # warm up
            rate(fn, cycle, 20_000)
        gc.collect()
        samples = timed(fn, cycle, n)
        per_second = rate(fn, cycle, n)
        results[name] = {"decisions": n, "p50_us": percentile(samples, 0.5), "p99_us": percentile(samples, 0.99),
                         "p999_us": percentile(samples, 0.999), "max_us": samples[-1] / 1000.0,
                         "per_second": per_second}
    gpu.stop()
    base = results["noop"]["per_second"]
    for name in ("decide", "select_backend"):
        results[name]["noop_calls_per_decision"] = base / results[name]["per_second"]
    hot = results["select_backend"]
    results["targets"] = {"p99_under_20us": hot["p99_us"] < 20.0, "over_200k_per_second": hot["per_second"] > 200_000}
    results["nvml"] = gpu.reason
    results["cases"] = len(cases)

    if args.json:
        print(json.dumps(results, indent=2))
        return 0
    print(f"decisions on one core, {n:,} each, over the {len(cases)} labelled cases of {LABELS.relative_to(REPO)} "
          f"with the router of {MANIFEST.relative_to(REPO)} (NVML: {gpu.reason or 'yes'})")
    print(f"timer pair alone: p50 {results['timer']['p50_us']:.3f} us, p99 {results['timer']['p99_us']:.3f} us")
    print(f"{'path':<16}{'p50 us':>9}{'p99 us':>9}{'p99.9 us':>10}{'max us':>10}{'per second':>14}{'x no-op':>9}")
    for name in ("noop", "decide", "select_backend"):
        r = results[name]
        ratio = f"{r['noop_calls_per_decision']:.1f}" if "noop_calls_per_decision" in r else "1.0"
        print(f"{name:<16}{r['p50_us']:>9.2f}{r['p99_us']:>9.2f}{r['p999_us']:>10.2f}{r['max_us']:>10.1f}"
              f"{r['per_second']:>14,.0f}{ratio:>9}")
    met = results["targets"]
    print(f"target p99 < 20 us (select_backend): {'MET' if met['p99_under_20us'] else 'NOT MET'}; "
          f"> 200,000/s: {'MET' if met['over_200k_per_second'] else 'NOT MET'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
