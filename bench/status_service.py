"""Benchmark: the status service (agentkit-status) with the reference fleet's mainpc (55 agents)
on systemd 252 in a container.

1. Its memory (RSS) and CPU at rest, then under a scrape every second (/metrics and /health).
2. /metrics and /health latency, back to back (target: under 20 ms for 55 agents), against the
   baseline of the same session: `agentkit status --json`, which reads every unit over D-Bus
   itself, as operators had to before.
3. An event's delay: from systemd's own timestamp of a state change (ActiveEnterTimestamp of an
   agent woken by a client) to the ready event's arrival on an /events client (target: under
   50 ms). Both clocks are this machine's.

    .venv/bin/python bench/status_service.py [--rest S] [--scrape S] [--requests N] [--wakes N] [--json]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import statistics
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE_BIN = Path(sys.prefix) / "bin"
PORT = 8202
TARGET_MS = 20.0
TARGET_EVENT_MS = 50.0
# Optional native agents of mainpc that nothing else depends on: each is woken once.
WAKE = ("StreamingInterruptHandler", "WakeWordDetector", "ProactiveAgent", "GoalManager", "MoodTrackerAgent",
        "ToneDetector", "VoiceProfilingAgent", "EmpathyAgent", "ChitchatAgent", "Executor", "NLLBAdapter",
        "PredictiveHealthMonitor")


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def percentile(values, q):
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def summary(ms: list[float]) -> dict:
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 2), "p90_ms": round(percentile(ms, 0.9), 2),
            "p99_ms": round(percentile(ms, 0.99), 2), "max_ms": round(max(ms), 2)}


def _container_module():
    spec = importlib.util.spec_from_file_location("agentkit_e2e_container", REPO / "tests" / "e2e" / "container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def get(path: str) -> tuple[float, int, bytes]:
    """(seconds, status, body) of one GET on a fresh connection, as a scraper makes it."""
    began = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        body = response.read()
    finally:
        conn.close()
    return time.perf_counter() - began, response.status, body


class Process:
    """RSS and CPU time of a process inside the container, from its /proc."""

    def __init__(self, container, unit: str):
        self.c = container
        self.pid = int(container.systemctl("show", "-p", "MainPID", "--value", unit).stdout.strip())
        self.tick = int(container.run(["getconf", "CLK_TCK"]).stdout.strip())

    def rss(self) -> int:
        for line in self.c.run(["cat", f"/proc/{self.pid}/status"]).stdout.splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def cpu(self) -> float:
        fields = self.c.run(["cat", f"/proc/{self.pid}/stat"]).stdout.rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / self.tick


def cpu_share(process: Process, seconds: float, during=None) -> tuple[float, int]:
    """(CPU % of one core over `seconds`, RSS at the end), running `during(deadline)` meanwhile."""
    before, began = process.cpu(), time.monotonic()
    if during is None:
        time.sleep(seconds)  # at rest: nothing to do but wait, which is what is measured
    else:
        during(began + seconds)
    took = time.monotonic() - began
    return round(100 * (process.cpu() - before) / took, 2), process.rss()


class Events:
    def __init__(self):
        self.events: list[dict] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
        self.conn.request("GET", "/events")
        self.response = self.conn.getresponse()
        self.thread = threading.Thread(target=self.read, daemon=True)
        self.thread.start()

    def read(self):
        try:
            for raw in self.response:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    event["received"] = time.time()
                    self.events.append(event)
        except (OSError, ValueError, AttributeError):
            pass

    def wait(self, agent: str, kind: str, timeout: float = 30.0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for event in self.events:
                if event["agent"] == agent and event["kind"] == kind:
                    return event
            time.sleep(0.005)
        raise RuntimeError(f"no {kind} event of {agent} within {timeout:g} s")

    def close(self):
        self.conn.close()


def wake(port: int) -> None:
    import zmq

    sock = zmq.Context.instance().socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 30000)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_json({"action": "ping"})
        sock.recv_json()
    finally:
        sock.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rest", type=float, default=10.0, help="seconds measured at rest")
    parser.add_argument("--scrape", type=float, default=20.0, help="seconds of a scrape every second")
    parser.add_argument("--requests", type=int, default=200, help="back-to-back requests of each endpoint")
    parser.add_argument("--wakes", type=int, default=8, help=f"agents woken for the event delay (max {len(WAKE)})")
    parser.add_argument("--agentkit-bin", type=Path, default=HERE_BIN, metavar="DIR",
                        help="the bin directory of the agentkit to install (one the sandbox can see: not under /tmp)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    bin_dir = args.agentkit_bin
    args.requests = max(5, min(args.requests, 5000))
    args.wakes = max(1, min(args.wakes, len(WAKE)))
    container_mod = _container_module()
    missing = container_mod.requirements_missing()
    if missing:
        say(f"status service benchmark: {missing}")
        return 1
    sys.path.insert(0, str(REPO))
    from agentkit import manifest as loader

    m = loader.load(str(REPO / "agents"))
    report: dict = {}
    with container_mod.SystemdContainer(hostname="mainpc", bind_ro=[str(bin_dir.parent)]) as c:
        done = c.run([str(bin_dir / "agentkit"), "-m", str(REPO / "agents"), "install", "--host", "mainpc",
                      "--bin-dir", str(bin_dir)], check=False, timeout=300)
        if done.returncode != 0:
            say(f"install failed:\n{done.stdout}\n{done.stderr}")
            return 1
        agents = json.loads(get("/health")[2])["agents"]
        report["agents"] = len(agents)
        service = Process(c, "agentkit-status.service")
        time.sleep(2)  # let the installs' start-up settle before "at rest"

        cpu, rss = cpu_share(service, args.rest)
        report["rest"] = {"cpu_percent": cpu, "rss_mib": round(rss / 2**20, 1)}
        say(f"{len(agents)} agents; at rest: {cpu:.2f} % of a core, RSS {rss / 2**20:.1f} MiB")

        def scrape(deadline):
            while time.monotonic() < deadline:
                began = time.monotonic()
                get("/metrics")
                get("/health")
                time.sleep(max(0.0, 1.0 - (time.monotonic() - began)))
        cpu, rss = cpu_share(service, args.scrape, scrape)
        report["scraped_every_second"] = {"cpu_percent": cpu, "rss_mib": round(rss / 2**20, 1)}
        say(f"scraped every second: {cpu:.2f} % of a core, RSS {rss / 2**20:.1f} MiB")

        for path in ("/metrics", "/health"):
            samples = [get(path)[0] * 1000 for _ in range(args.requests)]
            report[path] = summary(samples)
            row = report[path]
            say(f"GET {path}: p50 {row['p50_ms']:.2f} ms, p99 {row['p99_ms']:.2f} ms, max {row['max_ms']:.2f} ms")
        cli = []
        for _ in range(5):
            began = time.perf_counter()
            c.run([str(bin_dir / "agentkit"), "-m", str(REPO / "agents"), "status", "--json", "--host", "mainpc"],
                  check=False, timeout=60)
            cli.append((time.perf_counter() - began) * 1000)
        report["baseline: agentkit status --json"] = summary(cli)
        say(f"baseline, agentkit status --json (reads systemd itself): p50 {statistics.median(cli):.0f} ms")

        stream = Events()
        delays, changed = [], []
        try:
            for name in WAKE[:args.wakes]:
                wake(m.agents[name].port)
                stream.wait(name, "ready")
                path = c.run(["busctl", "call", "org.freedesktop.systemd1", "/org/freedesktop/systemd1",
                              "org.freedesktop.systemd1.Manager", "GetUnit", "s",
                              f"agentkit-{name}.service"]).stdout.split()[-1].strip('"')
                stamp = int(c.run(["busctl", "get-property", "org.freedesktop.systemd1", path,
                                   "org.freedesktop.systemd1.Unit", "ActiveEnterTimestamp"]).stdout.split()[-1])
                ready = stream.wait(name, "ready")
                delays.append((ready["received"] - stamp / 1e6) * 1000)
                changed.append(get("/metrics")[0] * 1000)  # the first scrape after a change writes it anew
                c.systemctl("stop", f"agentkit-{name}.service")
        finally:
            stream.close()
        report["event_delay"] = summary(delays)
        report["/metrics after a change"] = summary(changed)
        row = report["/metrics after a change"]
        say(f"GET /metrics, the first after a change: p50 {row['p50_ms']:.2f} ms, max {row['max_ms']:.2f} ms")
        row = report["event_delay"]
        say(f"event delay, systemd's ActiveEnterTimestamp to the /events client: p50 {row['p50_ms']:.1f} ms, "
            f"max {row['max_ms']:.1f} ms")
    worst = max(report["/metrics"]["p99_ms"], report["/health"]["p99_ms"], report["/metrics after a change"]["max_ms"])
    base = report["baseline: agentkit status --json"]["p50_ms"]
    verdicts = [
        f"/metrics and /health p99 (and /metrics after a change, max) {worst:.2f} ms for {report['agents']} agents "
        f"(target < {TARGET_MS:g} ms): "
        f"{'MET' if worst < TARGET_MS else 'NOT MET'}",
        f"/health p50 is {base / report['/health']['p50_ms']:.0f}x faster than agentkit status --json "
        f"({report['/health']['p50_ms']:.2f} vs {base:.0f} ms)",
        f"event delay max {report['event_delay']['max_ms']:.1f} ms (target < {TARGET_EVENT_MS:g} ms): "
        f"{'MET' if report['event_delay']['max_ms'] < TARGET_EVENT_MS else 'NOT MET'}",
    ]
    for line in verdicts:
        say(line)
    report["verdicts"] = verdicts
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
