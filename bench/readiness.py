"""Benchmark: readiness probes and cold chains, on systemd 252 (in a container) and supervisord.

1. Cold start per readiness kind: one ordinary program (bench/programs/tiny_http.py,
   an HTTP server that imports only `socket`) as four optional agents behind the
   proxy, alike but for `ready`: notify (it sends READY=1), port, {http: /} and
   {command: [...]} (a TCP check by a program of the host's). A sample is a fresh
   connection's connect() -> first byte of the HTTP answer, the agent stopped before
   (its port still held). Targets: port and HTTP add at most 10 ms p50 over notify.
2. A cold chain of three agents that each take 1 s to become ready: A -> B -> C,
   ordinary programs (bench/programs/sleepy_relay.py: waits 1 s, listens, READY=1,
   answers with its name after its upstream's) behind the proxy, every one stopped,
   then one HTTP request to A, answered "A <- B <- C". Run with this checkout's agentkit and, with
   --baseline BIN, with another agentkit (the one before parallel starts) on the
   same manifest, in the same session. Target: within 1.3 s.

Targets are reported (MET / NOT MET), never asserted; the exit status is 1 only when
something fails (an install, an answer). Containers and supervisords started here
are stopped on exit, failure or ^C.

    .venv/bin/python bench/readiness.py [--backend systemd|supervisord|both] [--rounds N]
                                        [--baseline /path/to/other/venv/bin] [--json]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
HERE_BIN = Path(sys.prefix) / "bin"
TINY = REPO / "bench" / "programs" / "tiny_http.py"
RELAY = REPO / "bench" / "programs" / "sleepy_relay.py"
MAX_ROUNDS = 30
TIMEOUT = 20.0
# The private ports (port + 20000) stay below Linux's ephemeral range (32768-60999): a port in
# it may be the source port of any outgoing connection, or of a probe that connects to itself
# while nothing listens there yet, and the agent then cannot bind it.
KINDS = {  # name -> (port, ready setting)
    "notify": (11401, "notify"),
    "port": (11402, "port"),
    "http": (11403, "{http: /}"),
    "command": (11404, "{command: [/usr/bin/timeout, '1', /bin/bash, -c, 'exec 3<>/dev/tcp/127.0.0.1/{port}']}"),
}
CHAIN = (("A", 11411), ("B", 11412), ("C", 11413))
TARGET_OVER_NOTIFY_MS = 10.0
TARGET_CHAIN_S = 1.3


def say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def stats(seconds: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50_ms": round(statistics.median(ms), 1), "p90_ms": round(percentile(ms, 0.9), 1),
            "max_ms": round(max(ms), 1)}


def manifests(root: Path, tiny: str, relay: str) -> tuple[Path, Path]:
    """(the readiness fleet, the chain fleet), written under root."""
    kinds = root / "kinds"
    kinds.mkdir(parents=True)
    (kinds / "fleet.yaml").write_text("name: kinds\nhosts:\n  lab: {address: 127.0.0.1}\n")
    agents = "".join(f"""\
  {name.capitalize()}:
    activation: proxy
    command: [{tiny}, "{{port}}"]
    port: {port}
    ready: {ready}
    idle_stop: 10min
    restart: {{delay: 10ms, burst: 200, interval: 10s}}
""" for name, (port, ready) in KINDS.items())
    (kinds / "lab.yaml").write_text("host: lab\nagents:\n" + agents)
    chain = root / "chain"
    chain.mkdir()
    (chain / "fleet.yaml").write_text("name: chain\nhosts:\n  lab: {address: 127.0.0.1}\n")
    entries = []
    for i, (name, port) in enumerate(CHAIN):
        nxt = CHAIN[i + 1] if i + 1 < len(CHAIN) else None
        # Literal private ports (port + 20000, the default offset): an agentkit without {port} runs it too.
        upstream = f", \"{nxt[1]}\"" if nxt else ""
        deps = f"    depends_on: [{nxt[0]}]\n" if nxt else ""
        entries.append(f"""\
  {name}:
    activation: proxy
    command: [{relay}, {name}, "{port + 20000}", "1"{upstream}]
    service_type: notify
    port: {port}
    idle_stop: 10min
    restart: {{delay: 10ms, burst: 200, interval: 10s}}
{deps}""")
    (chain / "lab.yaml").write_text("host: lab\nagents:\n" + "".join(entries))
    return kinds, chain


def http_first_byte(port: int) -> float:
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        first = sock.recv(1)
    if not first:
        raise RuntimeError(f"port {port}: closed without an answer")
    return time.monotonic() - began


def chain_answer(port: int) -> float:
    began = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as sock:
        sock.settimeout(TIMEOUT)
        sock.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    took = time.monotonic() - began
    if not data.endswith(b"A <- B <- C"):
        raise RuntimeError(f"the chain answered {data[-80:]!r}")
    return took


# --- systemd --------------------------------------------------------------------------

def _container_module():
    spec = importlib.util.spec_from_file_location("agentkit_e2e_container", REPO / "tests" / "e2e" / "container.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class SystemdLab:
    def __init__(self, container, agentkit_bin: Path):
        self.c, self.bin = container, agentkit_bin

    def install(self, manifest: str) -> None:
        result = self.c.run([str(self.bin / "agentkit"), "-m", manifest, "install", "--host", "lab", "--bin-dir",
                             str(self.bin)], check=False, timeout=300)
        if result.returncode != 0:
            raise RuntimeError(f"install failed:\n{result.stdout}\n{result.stderr}")

    def stop(self, *names: str, proxied: bool = True) -> None:
        units = [f"agentkit-{n}.service" for n in names] + [f"agentkit-{n}-proxy.service" for n in names if proxied]
        self.c.systemctl("stop", *units)
        self.c.systemctl("reset-failed", *units, check=False)


def run_systemd(args, kinds: Path, chain: Path, report: dict) -> None:
    container_mod = _container_module()
    missing = container_mod.requirements_missing()
    if missing:
        raise SystemExit(f"systemd: {missing}")
    # The other agentkit's venv, and its checkout when it is an editable install there.
    binds = [str(kinds.parent), str(HERE_BIN.parent)] + (
        [str(args.baseline.parent.parent)] if args.baseline else [])
    versions = [("this", HERE_BIN)] + ([("baseline", args.baseline)] if args.baseline else [])
    with container_mod.SystemdContainer(hostname="lab", bind_ro=binds, start=False) as c:
        c.write_file("/srv/bench/tiny_http.py", TINY.read_text(), 0o755)
        c.write_file("/srv/bench/sleepy_relay.py", RELAY.read_text(), 0o755)
        lab = SystemdLab(c, HERE_BIN)
        lab.install(str(kinds))
        report["systemd"] = {"kinds": measure_kinds(lambda name: lab.stop(name), args.rounds)}
        lab.c.run([str(HERE_BIN / "agentkit"), "-m", str(kinds), "uninstall"], timeout=120)
        report["systemd"]["chain"] = {}
        for label, agentkit_bin in versions:
            lab = SystemdLab(c, agentkit_bin)
            lab.install(str(chain))
            report["systemd"]["chain"][label] = measure_chain(lambda: lab.stop(*(n for n, _ in CHAIN)), args.rounds)
            c.run([str(agentkit_bin / "agentkit"), "-m", str(chain), "uninstall"], timeout=120)


# --- supervisord ----------------------------------------------------------------------

def run_supervisord(args, kinds: Path, chain: Path, report: dict) -> None:
    from agentkit.backends.supervisord import run as supervisor_run

    versions = [("this", HERE_BIN)] + ([("baseline", args.baseline)] if args.baseline else [])
    report["supervisord"] = {"chain": {}}
    for what, manifest, runs in [("kinds", kinds, versions[:1]), ("chain", chain, versions)]:
        for label, agentkit_bin in runs:
            state = Path(tempfile.mkdtemp(prefix=f"agentkit-bench-{what}-"))
            up = subprocess.run([str(agentkit_bin / "agentkit"), "-m", str(manifest), "up", "--backend", "supervisord",
                                 "--host", "lab", "--state-dir", str(state), "--bin-dir", str(agentkit_bin)],
                                capture_output=True, text=True, timeout=300)
            try:
                if up.returncode != 0:
                    raise RuntimeError(f"up failed:\n{up.stdout}\n{up.stderr}")
                server = supervisor_run.rpc(str(state)).supervisor

                def stop(*names):
                    for name in names:
                        if server.getProcessInfo(name)["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
                            server.stopProcess(name, True)

                if what == "kinds":
                    report["supervisord"]["kinds"] = measure_kinds(stop, args.rounds)
                else:
                    report["supervisord"]["chain"][label] = measure_chain(lambda: stop(*(n for n, _ in CHAIN)),
                                                                          args.rounds)
            finally:
                subprocess.run([str(agentkit_bin / "agentkit"), "-m", str(manifest), "down", "--backend",
                                "supervisord", "--host", "lab", "--state-dir", str(state)],
                               capture_output=True, timeout=120)
                shutil.rmtree(state, ignore_errors=True)


# --- the measures ---------------------------------------------------------------------

def measure_kinds(stop, rounds: int) -> dict:
    samples: dict[str, list[float]] = {name: [] for name in KINDS}
    for name, (port, _) in KINDS.items():
        http_first_byte(port)  # warm the page cache and the units once
    for _ in range(rounds):
        for name, (port, _) in KINDS.items():
            stop(name.capitalize())
            samples[name].append(http_first_byte(port))
    out = {name: stats(values) for name, values in samples.items()}
    for name, row in out.items():
        say(f"  cold start, ready {name:8s} p50 {row['p50_ms']:7.1f} ms  p90 {row['p90_ms']:7.1f}  "
            f"max {row['max_ms']:7.1f}")
    return out


def measure_chain(stop, rounds: int) -> dict:
    chain_answer(CHAIN[0][1])
    samples = []
    for _ in range(max(1, rounds // 3)):
        stop()
        samples.append(chain_answer(CHAIN[0][1]))
    row = stats(samples)
    say(f"  cold chain A -> B -> C, 1 s load each: p50 {row['p50_ms']:.0f} ms, max {row['max_ms']:.0f} ms")
    return row


def verdicts(report: dict) -> list[str]:
    lines = []
    for backend, data in report.items():
        kinds = data.get("kinds")
        if kinds:
            for name in ("port", "http"):
                over = kinds[name]["p50_ms"] - kinds["notify"]["p50_ms"]
                lines.append(f"{backend}: ready {name} adds {over:+.1f} ms p50 over notify (target <= "
                             f"{TARGET_OVER_NOTIFY_MS:g}): {'MET' if over <= TARGET_OVER_NOTIFY_MS else 'NOT MET'}")
        this = data.get("chain", {}).get("this")
        if this:
            ok = this["p50_ms"] / 1000 <= TARGET_CHAIN_S
            before = data["chain"].get("baseline")
            lines.append(f"{backend}: 3 x 1 s chain {this['p50_ms']:.0f} ms p50"
                         + (f" (baseline {before['p50_ms']:.0f} ms, {before['p50_ms'] / this['p50_ms']:.2f}x)"
                            if before else "")
                         + f" (target <= {TARGET_CHAIN_S:g} s): {'MET' if ok else 'NOT MET'}")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backend", choices=["systemd", "supervisord", "both"], default="both")
    parser.add_argument("--rounds", type=int, default=15, help=f"cold samples per readiness kind (max {MAX_ROUNDS})")
    parser.add_argument("--baseline", type=Path, metavar="BIN",
                        help="the bin directory of another agentkit, measured on the chain too")
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    args.rounds = max(1, min(args.rounds, MAX_ROUNDS))
    if args.baseline is not None and not (args.baseline / "agentkit").exists():
        parser.error(f"--baseline {args.baseline}: no agentkit there")
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="agentkit-bench-readiness-", dir="/var/tmp" if os.geteuid() == 0 else None) \
            as tmp:
        failed = False
        for backend in (["systemd", "supervisord"] if args.backend == "both" else [args.backend]):
            say(f"{backend}:")
            # The program must be where the backend's agents can run it: /srv/bench in the
            # container (the sandbox hides /tmp), else beside the manifests.
            where = "/srv/bench" if backend == "systemd" else os.path.join(tmp, backend)
            tiny, relay = os.path.join(where, TINY.name), os.path.join(where, RELAY.name)
            kinds, chain = manifests(Path(tmp) / backend, tiny, relay)
            if backend == "supervisord":
                shutil.copy(TINY, tiny)
                shutil.copy(RELAY, relay)
            try:
                (run_systemd if backend == "systemd" else run_supervisord)(args, kinds, chain, report)
            except (RuntimeError, OSError) as exc:
                say(f"{backend}: FAILED: {exc}")
                failed = True
    for line in verdicts(report):
        say(line)
    if args.json:
        print(json.dumps(report, indent=2))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
