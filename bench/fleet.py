"""Benchmark: the reference fleet on a real systemd 252 -- cold starts, the deepest chain, memory.

For each activation mode (native, proxy) and each host of the reference fleet
(mainpc, pc2), a throw-away container boots the host's own systemd
(tests/e2e/container.py, systemd-nspawn, --hostname=<host>), `agentkit install
--host <host>` installs the fleet inside, and then, from outside (the container
shares the host's network, so agent ports are on 127.0.0.1):

1. memory after install: the sum of VmRSS (and PSS) of every agentkit agent
   service's MainPID (plus the systemd-socket-proxyd processes in proxy mode),
   essentials running, optional agents dormant;
2. first wake: every optional agent pinged once, in manifest order (whatever
   dependencies the earlier pings left running); then memory again, all active;
3. cold start, "agent cold": for every optional agent, its optional dependencies
   are woken first (a ping through their ports), then its service (and, in proxy
   mode, its proxy service) is stopped while its socket keeps listening; the
   sample is connect() -> first reply of {"action": "ping"} on a fresh ZeroMQ REQ
   socket. Rounds go round-robin over the agents;
4. cold start, "deps cold" (the worst case): the same for every optional agent
   that has optional dependencies, with all of those (transitively) stopped too;
5. the deepest chain (pc2): UnifiedWebAgent -> FileSystemAssistantAgent ->
   UnifiedUtilsAgent all stopped, then one {"action": "chain"} to UnifiedWebAgent.

Before every sample the benchmark runs `systemctl reset-failed` on every agent
(and proxy) service of the host, named one by one (a glob only matches failed units): it stops and wakes the same agents far more often than idle_stop (2 min)
ever could, and would otherwise hit their start limit (5 starts in 30 s) by
design. A unit found failed before that reset is reported.

Where the time goes: systemd's own monotonic timestamps (InactiveExit,
ExecMainStart, ActiveEnter of the agent and proxy units) share CLOCK_MONOTONIC
with this process, so every sample is split into connect -> the agent unit
starts (socket trigger, job, dependencies), its start -> fork, fork -> READY=1
(sandbox set-up, interpreter, imports, bind; the agent's own "ready in N ms
since import" log line is the part after its module's import), and READY -> the
client has its reply.

Targets are reported (MET / NOT MET), never asserted: the exit status is 1 only
when something fails functionally (install fails, an agent does not answer or
answers wrongly, a socket is not listening).

    .venv/bin/python bench/fleet.py [--host mainpc|pc2|all] [--modes native,proxy] [--rounds N]
                                    [--no-deps-cold] [--json] [--budget SECONDS]


Needs root, systemd-nspawn and nsenter, like the e2e tests. Every container
(and everything running in it) is shut down on exit, failure, ^C or SIGTERM.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import sys
import tempfile
import time
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import yaml
import zmq

from agentkit import graph
from agentkit import manifest as manifest_mod

REPO = Path(__file__).resolve().parent.parent
REFERENCE = REPO / "agents"
VENV_BIN = Path(sys.prefix) / "bin"
PROXY_MANIFEST_IN_CONTAINER = "/opt/agentkit-bench/agents"  # the proxy-mode copy, bound read-only

MAX_ROUNDS = 20  # bound the run time whatever --rounds says
REQUEST_TIMEOUT = 20.0  # seconds for one reply; TimeoutStartSec= is 30 s
INSTALL_TIMEOUT = 300.0
MAX_FAILURES = 3  # per mode and host: after that its remaining samples are skipped

CHAIN = ("UnifiedWebAgent", "FileSystemAssistantAgent", "UnifiedUtilsAgent")

TARGET_COLD_P99_S = 1.0
TARGET_CHAIN_S = 2.0
ORIGINAL_PROMISE_S = 30.0
ORIGINAL_AVERAGE_S = 12.3
# ../shared/DESIGN.md, "Measured here: the floor of an on-demand start" (ms: p50, p90, max).
FLOOR = {
    "native": ("ZeroMQ REQ -> REP, agent adopts the fd (zmq.USE_FD)", 41, 50, 57),
    "proxy": ("systemd-socket-proxyd + Type=notify backend (plain socket, no zmq)", 44, 50, 53),
    "chain": ("chain A -> B -> C, Requires= + After=, all native (plain sockets)", 56, 69, 88),
}

READY_RE = re.compile(r"(\S+): ready in (\d+) ms since import")
TIMESTAMPS = ("InactiveExitTimestampMonotonic", "ExecMainStartTimestampMonotonic",
              "ActiveEnterTimestampMonotonic")


def _load_container_module():
    """tests/e2e/container.py, loaded by path (tests/ is not a package)."""
    path = REPO / "tests" / "e2e" / "container.py"
    spec = importlib.util.spec_from_file_location("agentkit_e2e_container", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# --- statistics -----------------------------------------------------------------------

def percentile(values: list[float], q: float) -> float:
    """Nearest rank: the smallest sample with at least q % of the samples at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def stats_ms(seconds: list[float]) -> dict | None:
    if not seconds:
        return None
    ms = [s * 1000 for s in seconds]
    return {"n": len(ms), "p50": percentile(ms, 50), "p90": percentile(ms, 90), "p99": percentile(ms, 99),
            "max": max(ms), "mean": statistics.fmean(ms), "min": min(ms)}


# --- one sample -------------------------------------------------------------------------

@dataclass
class Sample:
    mode: str
    host: str
    scenario: str  # agent-cold, deps-cold, chain, first-wake
    agent: str
    round: int
    seconds: float | None = None  # connect() -> reply; None: no (good) reply
    t_connect_us: int = 0
    t_reply_us: int = 0
    units: dict = field(default_factory=dict)  # unit -> {pid, InactiveExit..., ...} (µs, monotonic)
    ready_in_ms: int | None = None  # the agent's own "ready in N ms since import"
    error: str | None = None
    already_active: bool = False  # first wake only: an earlier ping had started it as a dependency

    def phases_ms(self) -> dict:
        """Where the time went (ms), from systemd's timestamps; empty when they are missing."""
        if self.seconds is None:
            return {}
        svc = self.units.get(f"agentkit-{self.agent}.service", {})
        inactive_exit, exec_start, active_enter = (svc.get(k, 0) for k in TIMESTAMPS)
        if not (inactive_exit and exec_start and active_enter) or inactive_exit < self.t_connect_us:
            return {}  # not started by this sample (should not happen: it was stopped)
        phases = {
            "connect_to_unit_start": (inactive_exit - self.t_connect_us) / 1000,
            "unit_start_to_fork": (exec_start - inactive_exit) / 1000,
            "fork_to_ready": (active_enter - exec_start) / 1000,
        }
        last_ready = active_enter
        proxy = self.units.get(f"agentkit-{self.agent}-proxy.service", {})
        p_start, p_ready = proxy.get("ExecMainStartTimestampMonotonic", 0), proxy.get(
            "ActiveEnterTimestampMonotonic", 0)
        if p_start and p_start >= self.t_connect_us:
            # systemd-socket-proxyd (252) never sends READY=1: its ActiveEnter stays 0 under Type=notify.
            phases["agent_ready_to_proxy_fork"] = (p_start - active_enter) / 1000
            last_ready = p_start
            if p_ready:
                phases["proxy_fork_to_ready"] = (p_ready - p_start) / 1000
                last_ready = p_ready
        phases["ready_to_reply"] = (self.t_reply_us - last_ready) / 1000
        if self.ready_in_ms is not None:
            phases["agent_module_import_to_ready"] = float(self.ready_in_ms)
            phases["fork_to_agent_module_import"] = phases["fork_to_ready"] - self.ready_in_ms
        return phases

    def as_json(self) -> dict:
        return {"mode": self.mode, "host": self.host, "scenario": self.scenario, "agent": self.agent,
                "round": self.round, "ms": None if self.seconds is None else round(self.seconds * 1000, 3),
                "phases_ms": {k: round(v, 3) for k, v in self.phases_ms().items()},
                "ready_in_ms": self.ready_in_ms, "error": self.error, "already_active": self.already_active,
                "units": self.units}


class Client:
    """Fresh ZeroMQ REQ socket per request, LINGER 0: nothing outlives a sample."""

    def __init__(self):
        self.ctx = zmq.Context(io_threads=1)

    def request(self, port: int, message: dict, timeout: float = REQUEST_TIMEOUT, give_up=None):
        """(seconds from connect() to the reply, t_connect_us, t_reply_us, reply dict); reply None on timeout.

        give_up(), if given, is asked every second of waiting: true when no reply can come any more.
        """
        payload = json.dumps(message).encode()
        sock = self.ctx.socket(zmq.REQ)
        try:
            sock.setsockopt(zmq.LINGER, 0)
            t0 = time.monotonic_ns()
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send(payload)
            end = time.monotonic() + timeout
            while not sock.poll(int(min(1.0, max(0.0, end - time.monotonic())) * 1000)):
                if time.monotonic() >= end or (give_up is not None and give_up()):
                    return None, t0 // 1000, 0, None
            raw = sock.recv()
            t1 = time.monotonic_ns()
        finally:
            sock.close()
        try:
            reply = json.loads(raw)
        except ValueError:
            reply = {"ok": False, "error": f"not JSON: {raw[:80]!r}"}
        return (t1 - t0) / 1e9, t0 // 1000, t1 // 1000, reply

    def close(self):
        self.ctx.term()


# --- the container side -------------------------------------------------------------------

def service(name: str) -> str:
    return f"agentkit-{name}.service"


def proxy_service(name: str) -> str:
    return f"agentkit-{name}-proxy.service"


def listening_socket(name: str, mode: str) -> str:
    return f"agentkit-{name}-proxy.socket" if mode == "proxy" else f"agentkit-{name}.socket"


def parse_show(text: str) -> dict[str, dict[str, str]]:
    """`systemctl show -p Id,...` of several units -> {Id: {property: value}}."""
    units = {}
    for block in text.strip().split("\n\n"):
        props = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        if "Id" in props:
            units[props["Id"]] = props
    return units


class Host:
    """One booted container with one host of the fleet installed."""

    def __init__(self, bench: "Bench", mode: str, host: str, container):
        self.bench = bench
        self.mode = mode
        self.name = host
        self.c = container
        self.manifest = bench.manifests[mode]
        self.agents = [a for a in graph.selected(self.manifest) if a.host == host]
        self.optional = [a for a in self.agents if a.optional]
        # Named one by one: `systemctl reset-failed 'agentkit-*'` (a glob) only matches failed units,
        # and leaves the start-limit counter of the others as it is.
        self.all_units = self.units_of(a.name for a in self.optional) + [service(a.name) for a in self.agents
                                                                         if a.essential]
        self.failures = 0
        self.skipped = False
        self.anomalies: list[str] = []

    # -- helpers

    def opt_deps(self, name: str) -> list[str]:
        """name's optional dependencies on this host, transitively (start order: deepest first)."""
        found: list[str] = []

        def visit(n):
            for d in self.manifest.agents[n].depends_on:
                dep = self.manifest.agents[d]
                if dep.optional and dep.host == self.name and d not in found:
                    visit(d)
                    found.append(d)

        visit(name)
        return found

    def units_of(self, names) -> list[str]:
        names = list(names)
        units = [service(n) for n in names]
        if self.mode == "proxy":
            units += [proxy_service(n) for n in names]
        return units

    def show(self, units: list[str], props: str) -> dict[str, dict[str, str]]:
        return parse_show(self.c.systemctl("show", "-p", props, *units).stdout)

    def fail(self, what: str, units: list[str], sample: Sample | None = None) -> None:
        journal = {u: _distinct(self.c.journal(u, 5000)) for u in dict.fromkeys(units)}
        self.bench.failure(self.mode, self.name, what, journal)
        self.failures += 1
        if sample is not None:
            sample.error = what
        if self.failures >= MAX_FAILURES and not self.skipped:
            self.skipped = True
            self.bench.say(f"  {self.mode}/{self.name}: {self.failures} failures, skipping the rest of this host")

    # -- install

    def install(self) -> bool:
        manifest_dir = str(REFERENCE) if self.mode == "native" else PROXY_MANIFEST_IN_CONTAINER
        started = time.monotonic()
        agentkit = str(self.bench.agentkit_bin / "agentkit")
        result = self.c.run([agentkit, "-m", manifest_dir, "install", "--host", self.name,
                             "--bin-dir", str(self.bench.agentkit_bin)],
                            check=False, timeout=INSTALL_TIMEOUT)
        self.install_seconds = time.monotonic() - started
        if result.returncode != 0:
            failed = re.findall(r"agentkit: (\S+) did not start", result.stderr)
            self.bench.failure(self.mode, self.name, f"agentkit install exited {result.returncode}",
                               {"install stdout": result.stdout[-3000:], "install stderr": result.stderr[-3000:],
                                **{u: _distinct(self.c.journal(u, 5000)) for u in failed}})
            return False
        # Every essential service active, every optional socket listening, no optional service running.
        essentials = [service(a.name) for a in self.agents if a.essential]
        sockets = [listening_socket(a.name, self.mode) for a in self.optional]
        dormant = self.units_of(a.name for a in self.optional)
        state = self.show(essentials + sockets + dormant, "Id,ActiveState,SubState")
        bad = [f"{u}: {state.get(u, {}).get('ActiveState')}/{state.get(u, {}).get('SubState')}"
               for u, want in [(u, "active") for u in essentials + sockets] + [(u, "inactive") for u in dormant]
               if state.get(u, {}).get("ActiveState") != want]
        if bad:
            self.bench.failure(self.mode, self.name, "after install: " + "; ".join(bad[:10]),
                               {u.split(":")[0]: _distinct(self.c.journal(u.split(":")[0], 5000)) for u in bad[:5]})
            return False
        return True

    # -- memory

    def memory(self) -> dict:
        units = self.units_of(a.name for a in self.agents)
        props = self.show(units, "Id,MainPID,ActiveState")
        rss_kb = pss_kb = 0
        processes = {"agents": 0, "proxies": 0}
        for unit, p in props.items():
            pid = int(p.get("MainPID") or 0)
            if pid <= 0:
                continue
            proc = self.c.root / "proc" / str(pid)  # the container's /proc: its own PIDs
            try:
                status = (proc / "status").read_text()
                rollup = (proc / "smaps_rollup").read_text()
            except OSError:
                continue  # exited meanwhile
            rss_kb += int(re.search(r"^VmRSS:\s+(\d+) kB", status, re.M).group(1))
            m = re.search(r"^Pss:\s+(\d+) kB", rollup, re.M)
            pss_kb += int(m.group(1)) if m else 0
            processes["proxies" if unit.endswith("-proxy.service") else "agents"] += 1
        return {"rss_mb": rss_kb / 1024, "pss_mb": pss_kb / 1024, **processes}

    # -- samples

    def prepare(self, name: str, stop: list[str]) -> tuple[str | None, bool]:
        """Stop `stop` (agent names), reset start limits, check name's socket listens.

        Returns (an error or None, whether name's service is active anyway: only when it
        was not stopped, i.e. first wake, where an earlier ping may have started it).
        """
        units = self.units_of(stop)
        sock = listening_socket(name, self.mode)
        script = (f"systemctl stop {' '.join(units)}; " if units else "") + (
            "systemctl list-units --failed --plain --no-legend --full 'agentkit-*'; "
            f"systemctl reset-failed {' '.join(self.all_units)}; "
            f"systemctl show -p Id,ActiveState,SubState {' '.join(dict.fromkeys(units + [service(name), sock]))}")
        out = self.c.run(["sh", "-c", script], check=False, timeout=60).stdout
        blocks = out.split("Id=", 1)
        failed_before = blocks[0].strip()
        if failed_before:
            self.anomalies.append(f"failed before reset: {failed_before.splitlines()}")
        state = parse_show("Id=" + blocks[1]) if len(blocks) > 1 else {}
        active = state.get(service(name), {}).get("ActiveState") == "active"
        wrong = [u for u in units if state.get(u, {}).get("ActiveState") != "inactive"]
        # A socket whose (native) service runs says "running"; stopped, it must say "listening".
        if state.get(sock, {}).get("SubState") != "listening" and not (
                active and state.get(sock, {}).get("SubState") == "running"):
            wrong.append(sock)
        if wrong:
            return "before the sample: " + ", ".join(
                f"{u} {state.get(u, {}).get('ActiveState')}/{state.get(u, {}).get('SubState')}"
                for u in wrong), active
        return None, active

    def hopeless(self, name: str) -> bool:
        """name's socket failed (e.g. trigger-limit-hit after its agent's start limit): no reply will come."""
        out = self.c.systemctl("show", "-p", "ActiveState", "--value", listening_socket(name, self.mode),
                               check=False).stdout.strip()
        return out == "failed"

    def wake(self, names: list[str]) -> str | None:
        for n in names:
            seconds, _, _, reply = self.bench.client.request(self.manifest.agents[n].port, {"action": "ping"},
                                                             give_up=lambda: self.hopeless(n))
            if not (reply and reply.get("ok") and reply.get("agent") == n):
                return f"waking dependency {n}: {'no reply' if reply is None else reply}"
        return None

    def sample(self, scenario: str, name: str, rnd: int, stop: list[str], wake: list[str] = (),
               action: str = "ping") -> Sample | None:
        if self.skipped or self.bench.out_of_time():
            return None
        s = Sample(self.mode, self.name, scenario, name, rnd)
        units = self.units_of(stop)
        error = self.wake(list(wake))
        if not error:
            error, s.already_active = self.prepare(name, stop)
        if error:
            self.fail(f"{scenario} {name}: {error}", units, s)
            return s
        agent = self.manifest.agents[name]
        seconds, s.t_connect_us, s.t_reply_us, reply = self.bench.client.request(
            agent.port, {"action": action}, give_up=lambda: self.hopeless(name))
        error = check_reply(name, action, reply)
        if error:
            self.fail(f"{scenario} {name} (port {agent.port}): {error}",
                      [listening_socket(name, self.mode), *self.units_of([name]), *units], s)
            return s
        s.seconds = seconds
        s.units = {u: {k: int(v) if v.isdigit() else v for k, v in p.items()}
                   for u, p in self.show(self.units_of([name]), "Id,ExecMainPID," + ",".join(TIMESTAMPS)).items()}
        return s

    def ready_lines(self) -> dict[int, int]:
        """pid -> N of the agents' "ready in N ms since import" lines in this container's journal."""
        out = self.c.run(["journalctl", "--no-pager", "-o", "json", "--output-fields=_PID,MESSAGE",
                          "_COMM=agentkit-agent"], check=False, timeout=60).stdout
        found = {}
        for line in out.splitlines():
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            message = entry.get("MESSAGE")
            if isinstance(message, list):  # journald gives bytes as a list of ints
                message = bytes(message).decode(errors="replace")
            m = READY_RE.search(message or "")
            if m and str(entry.get("_PID", "")).isdigit():
                found[int(entry["_PID"])] = int(m.group(2))
        return found


def _distinct(journal: str, keep: int = 15) -> str:
    """A unit's journal with repeated messages (a start-limit storm) shown once, oldest first."""
    seen, lines = set(), []
    for line in journal.splitlines():
        text = line.split("]: ", 1)[-1]
        if text not in seen:
            seen.add(text)
            lines.append(line)
    return "\n".join(lines[:keep])


def _comm(pid: str) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def check_reply(name: str, action: str, reply) -> str | None:
    if reply is None:
        return f"no reply (waited at most {REQUEST_TIMEOUT:g} s; given up at once if the socket failed)"
    if not (reply.get("ok") is True and reply.get("agent") == name):
        return f"wrong reply: {json.dumps(reply)[:300]}"
    if action == "chain":
        # UnifiedWebAgent -> FileSystemAssistantAgent -> UnifiedUtilsAgent, each answering itself.
        node, path = reply, [reply.get("agent")]
        while node.get("deps"):
            node = node["deps"][0]
            path.append(node.get("agent"))
        if tuple(path[:len(CHAIN)]) != CHAIN:
            return f"chain went {' -> '.join(map(str, path))}, expected {' -> '.join(CHAIN)}"
    return None


# --- the benchmark ------------------------------------------------------------------------

class Bench:
    def __init__(self, args, say):
        self.args = args
        self.say = say
        self.agentkit_bin = args.agentkit_bin.resolve()
        self.deadline = time.monotonic() + args.budget
        self.samples: list[Sample] = []
        self.memory: list[dict] = []
        self.failures: list[dict] = []
        self.installs: list[dict] = []
        self.anomalies: list[dict] = []
        self.manifests: dict = {}
        self.client = Client()
        self.timed_out = False

    def out_of_time(self) -> bool:
        if time.monotonic() > self.deadline:
            if not self.timed_out:
                self.say(f"  budget of {self.args.budget:g} s used up: the remaining samples are skipped")
            self.timed_out = True
        return self.timed_out

    def failure(self, mode: str, host: str, what: str, journal: dict[str, str]) -> None:
        # The containers share this machine's ports: someone else's container could hold ours.
        mine = {str(c.nspawn_pid) for c in self.container_mod.live_containers()}
        others = [p for p in os.listdir("/proc") if p.isdigit() and p not in mine and _comm(p) == "systemd-nspawn"]
        if others:
            what += f" [note: {len(others)} other systemd-nspawn process(es) on this machine: {', '.join(others)}]"
        self.failures.append({"mode": mode, "host": host, "what": what, "journal": journal})
        self.say(f"  FAIL {mode}/{host}: {what}")

    def run_mode(self, mode: str, hosts: list[str], proxy_dir: Path | None, log_dir: Path, container_mod) -> None:
        binds = [(str(proxy_dir), str(Path(PROXY_MANIFEST_IN_CONTAINER).parent))] if proxy_dir else []
        venv = str(self.agentkit_bin.parent)
        if not venv.startswith(str(REPO)):  # an agentkit deployed outside the checkout
            binds.append((venv, venv))
        with ExitStack() as stack:
            booted: list[Host] = []
            for host in hosts:
                c = stack.enter_context(container_mod.SystemdContainer(
                    hostname=host, bind_ro=binds, log_dir=log_dir, start=False))
                h = Host(self, mode, host, c)
                ok = h.install()
                self.installs.append({"mode": mode, "host": host, "ok": ok, "boot_s": round(c.boot_seconds, 3),
                                      "install_s": round(h.install_seconds, 3)})
                self.say(f"{mode}/{host}: booted in {c.boot_seconds:.1f} s, install {'ok' if ok else 'FAILED'} "
                         f"in {h.install_seconds:.1f} s ({len(h.agents)} agents, {len(h.optional)} optional)")
                if ok:
                    booted.append(h)
            for h in booted:
                self.measure_host(h)

    def measure_host(self, h: Host) -> None:
        mode, rounds = h.mode, self.args.rounds
        idle = h.memory()
        t = time.monotonic()
        for a in h.optional:  # first wake, deps as the earlier ones left them
            self.record(h.sample("first-wake", a.name, 0, stop=[]))
        active = h.memory()
        self.memory.append({"mode": mode, "host": h.name, "idle": idle, "active": active})
        self.say(f"{mode}/{h.name}: memory {idle['rss_mb']:.0f} MB idle -> {active['rss_mb']:.0f} MB all active; "
                 f"first wake of {len(h.optional)} agents in {time.monotonic() - t:.1f} s")

        t = time.monotonic()
        for rnd in range(1, rounds + 1):
            for a in h.optional:
                self.record(h.sample("agent-cold", a.name, rnd, stop=[a.name], wake=h.opt_deps(a.name)))
        self.say(f"{mode}/{h.name}: agent cold, {rounds} x {len(h.optional)} in {time.monotonic() - t:.1f} s")

        if not self.args.no_deps_cold:
            with_deps = [a for a in h.optional if h.opt_deps(a.name)]
            t = time.monotonic()
            for rnd in range(1, rounds + 1):
                for a in with_deps:
                    self.record(h.sample("deps-cold", a.name, rnd, stop=[a.name, *h.opt_deps(a.name)]))
            self.say(f"{mode}/{h.name}: deps cold, {rounds} x {len(with_deps)} in {time.monotonic() - t:.1f} s")

        if all(n in h.manifest.agents and h.manifest.agents[n].host == h.name for n in CHAIN):
            for rnd in range(1, rounds + 1):
                self.record(h.sample("chain", CHAIN[0], rnd, stop=list(CHAIN), action="chain"))

        ready = h.ready_lines()
        for s in self.samples:
            if s.host == h.name and s.mode == mode and s.seconds is not None:
                pid = s.units.get(service(s.agent), {}).get("ExecMainPID")
                s.ready_in_ms = ready.get(pid) if isinstance(pid, int) else None
        for a in h.anomalies:
            self.anomalies.append({"mode": mode, "host": h.name, "what": a})

    def record(self, s: Sample | None) -> None:
        if s is not None:
            self.samples.append(s)

    # -- report

    def select(self, mode=None, scenario=None, host=None) -> list[Sample]:
        return [s for s in self.samples if (mode is None or s.mode == mode) and (scenario is None or s.scenario ==
                scenario) and (host is None or s.host == host) and not s.already_active]

    def summary(self, modes: list[str], hosts: list[str]) -> dict:
        cold = {}
        for mode in modes:
            for scenario in ("agent-cold", "deps-cold", "chain", "first-wake"):
                picked = self.select(mode, scenario)
                ok = [s.seconds for s in picked if s.seconds is not None]
                if not picked:
                    continue
                entry = {"all": stats_ms(ok), "failed": sum(s.seconds is None for s in picked),
                         "agents": len({(s.host, s.agent) for s in picked}),
                         "failed_by_host": {h: sum(s.seconds is None for s in picked if s.host == h) for h in hosts},
                         "agents_by_host": {h: len({s.agent for s in picked if s.host == h}) for h in hosts}}
                for host in hosts:
                    entry[host] = stats_ms([s.seconds for s in picked if s.host == host and s.seconds is not None])
                phases: dict[str, list[float]] = {}
                for s in picked:
                    for k, v in s.phases_ms().items():
                        phases.setdefault(k, []).append(v)
                entry["phases_ms_p50"] = {k: round(statistics.median(v), 3) for k, v in phases.items()}
                entry["phases_ms_p90"] = {k: round(percentile(v, 90), 3) for k, v in phases.items()}
                slowest = sorted((s for s in picked if s.seconds is not None), key=lambda s: -s.seconds)[:3]
                entry["slowest"] = [f"{s.host}/{s.agent} round {s.round}: {s.seconds * 1000:.0f} ms"
                                    for s in slowest]
                cold.setdefault(mode, {})[scenario] = entry
        memory = {}
        for mode in modes:
            rows = [m for m in self.memory if m["mode"] == mode]
            if not rows:
                continue
            idle = {k: sum(r["idle"][k] for r in rows) for k in ("rss_mb", "pss_mb", "agents", "proxies")}
            active = {k: sum(r["active"][k] for r in rows) for k in ("rss_mb", "pss_mb", "agents", "proxies")}
            memory[mode] = {"hosts": [r["host"] for r in rows], "idle": idle, "active": active,
                            "per_host": rows,
                            "idle_over_active_rss": idle["rss_mb"] / active["rss_mb"] if active["rss_mb"] else None,
                            "idle_over_active_pss": idle["pss_mb"] / active["pss_mb"] if active["pss_mb"] else None}
        targets = []
        for mode in modes:
            st = cold.get(mode, {}).get("agent-cold", {}).get("all")
            if st:
                targets.append({"what": f"{mode}: cold start p99 under {TARGET_COLD_P99_S:g} s (agent cold)",
                                "value_ms": st["p99"], "met": st["p99"] < TARGET_COLD_P99_S * 1000})
            st = cold.get(mode, {}).get("deps-cold", {}).get("all")
            if st:
                targets.append({"what": f"{mode}: cold start p99 under {TARGET_COLD_P99_S:g} s (deps cold too)",
                                "value_ms": st["p99"], "met": st["p99"] < TARGET_COLD_P99_S * 1000})
            st = cold.get(mode, {}).get("chain", {}).get("all")
            if st:
                targets.append({"what": f"{mode}: chain (3 cold) under {TARGET_CHAIN_S:g} s, every sample",
                                "value_ms": st["max"], "met": st["max"] < TARGET_CHAIN_S * 1000})
        return {"cold_start": cold, "memory": memory, "targets": targets}


def print_report(summary: dict, bench: Bench, out) -> None:
    def p(*a):
        print(*a, file=out)

    cold = summary["cold_start"]
    p()
    p("cold start: client connect() -> first reply, fresh ZeroMQ REQ socket, agent's service inactive, "
      "socket listening (ms)")
    p(f"{'mode':<7}{'scenario':<12}{'hosts':<8}{'agents':>7}{'n':>5}{'fail':>5}{'p50':>8}{'p90':>8}"
      f"{'p99':>8}{'max':>8}{'mean':>8}")
    labels = {"agent-cold": "agent cold", "deps-cold": "deps cold", "chain": "chain", "first-wake": "first wake"}
    for mode, scenarios in cold.items():
        for scenario, e in scenarios.items():
            rows = [("all", e["all"], e["failed"], e["agents"])]
            if len(bench.hosts) > 1:
                rows += [(h, e[h], e["failed_by_host"][h], e["agents_by_host"][h]) for h in bench.hosts
                         if e["agents_by_host"][h]]
            for host, st, failed, agents in rows:
                head = f"{mode:<7}{labels[scenario]:<12}{host:<8}{agents:>7}"
                if st is None:
                    p(f"{head}{0:>5}{failed:>5}")
                    continue
                p(f"{head}{st['n']:>5}{failed:>5}{st['p50']:>8.1f}{st['p90']:>8.1f}{st['p99']:>8.1f}"
                  f"{st['max']:>8.1f}{st['mean']:>8.1f}")
    p("  agent cold: its optional dependencies woken first; deps cold: they are stopped too (agents having some);")
    p("  chain: {\"action\":\"chain\"} to UnifiedWebAgent, it + FileSystemAssistantAgent + UnifiedUtilsAgent stopped;")
    p("  first wake: one ping per optional agent right after install, dependencies as earlier pings left them")
    p("              (agents an earlier ping had already started, as a dependency, are left out).")
    p("  percentiles: nearest rank; with n < 100, p99 is the largest or second largest sample.")

    p()
    p("where the time goes (ms, median over the samples; systemd's timestamps + the agent's own log line)")
    names = [("connect_to_unit_start", "connect -> agent unit starts (trigger, job, deps)"),
             ("unit_start_to_fork", "unit starts -> fork"),
             ("fork_to_ready", "fork -> READY=1 (sandbox, python, imports, bind)"),
             ("fork_to_agent_module_import", "  of which fork -> agent module imported"),
             ("agent_module_import_to_ready", "  of which agent module -> READY (zmq, bind)"),
             ("agent_ready_to_proxy_fork", "agent READY -> proxy forked"),
             ("proxy_fork_to_ready", "proxy forked -> proxy READY"),
             ("ready_to_reply", "agent READY (proxy: proxy forked) -> reply")]
    columns = [(m, sc) for m, scs in cold.items() for sc in scs if sc != "first-wake"]
    p(f"{'phase':<54}" + "".join(f"{m[:6] + ' ' + labels[sc]:>19}" for m, sc in columns))
    for key, label in names:
        vals = [cold[m][sc]["phases_ms_p50"].get(key) for m, sc in columns]
        if all(v is None for v in vals):
            continue
        p(f"{label:<54}" + "".join(f"{'-' if v is None else f'{v:.1f}':>19}" for v in vals))
    for m, sc in columns:
        if cold[m][sc]["slowest"]:
            p(f"  slowest {m} {labels[sc]}: " + "; ".join(cold[m][sc]["slowest"]))

    p()
    p("memory: sum over agentkit's agent services' MainPIDs (+ systemd-socket-proxyd in proxy mode)")
    p(f"{'mode':<7}{'hosts':<12}{'idle RSS':>10}{'procs':>7}{'active RSS':>12}{'procs':>7}{'idle/active':>12}"
      f"{'less':>7}{'idle PSS':>10}{'active PSS':>12}")
    for mode, m in summary["memory"].items():
        idle, act = m["idle"], m["active"]
        ratio = m["idle_over_active_rss"]
        p(f"{mode:<7}{'+'.join(m['hosts']):<12}{idle['rss_mb']:>8.0f}MB{idle['agents'] + idle['proxies']:>7}"
          f"{act['rss_mb']:>10.0f}MB{act['agents'] + act['proxies']:>7}{ratio:>12.2f}{(1 - ratio) * 100:>6.0f}%"
          f"{idle['pss_mb']:>8.0f}MB{act['pss_mb']:>10.0f}MB")
    p("  the original claimed ~60 % less memory at start; 'less' = 1 - idle/active (RSS).")

    p()
    p("targets (reported, not asserted)")
    for t in summary["targets"]:
        p(f"  {t['what']}: {t['value_ms']:.0f} ms -> {'MET' if t['met'] else 'NOT MET'}")
    for mode in cold:
        st = cold[mode].get("agent-cold", {}).get("all")
        if st:
            p(f"  {mode}: the original promised {ORIGINAL_PROMISE_S:g} s and reported {ORIGINAL_AVERAGE_S:g} s "
              f"on average; mean here {st['mean']:.0f} ms, {ORIGINAL_AVERAGE_S * 1000 / st['mean']:.0f}x faster")
    p("  DESIGN's floor (systemd 252 here, small Python agent, 30 tries: p50 / p90 / max ms) vs here (agent cold):")
    for key, (label, f50, f90, fmax) in FLOOR.items():
        scenario = "chain" if key == "chain" else "agent-cold"
        for mode in cold:
            if key != "chain" and key != mode:
                continue
            st = cold[mode].get(scenario, {}).get("all")
            if st:
                p(f"    {label}: {f50} / {f90} / {fmax}; here {mode}: {st['p50']:.0f} / {st['p90']:.0f} / "
                  f"{st['max']:.0f} = {st['p50'] / f50:.1f}x the floor at p50 (aim: about 2x)")

    if bench.installs:
        p()
        p("containers: " + "; ".join(f"{i['mode']}/{i['host']} boot {i['boot_s']:.1f} s, install "
                                     f"{i['install_s']:.1f} s{'' if i['ok'] else ' FAILED'}" for i in bench.installs))
    if bench.anomalies:
        p()
        p("anomalies (units found failed before a sample's reset-failed):")
        for a in bench.anomalies[:20]:
            p(f"  {a['mode']}/{a['host']}: {a['what']}")
    if bench.failures:
        p()
        p(f"FAILURES ({len(bench.failures)}):")
        for f in bench.failures:
            p(f"  {f['mode']}/{f['host']}: {f['what']}")
            for unit, text in f["journal"].items():
                p(f"    --- {unit} ---")
                for line in text.rstrip().splitlines():
                    p(f"    {line}")


# --- set-up -----------------------------------------------------------------------------------

def proxy_manifest(tmp: Path) -> Path:
    """A copy of the reference manifest with `activation: proxy` in fleet.yaml's defaults."""
    dst = tmp / "agents"
    shutil.copytree(REFERENCE, dst)
    fleet = yaml.safe_load((dst / "fleet.yaml").read_text())
    fleet.setdefault("defaults", {})["activation"] = "proxy"
    (dst / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    os.chmod(tmp, 0o755)  # mkdtemp makes it 0700; the container's root reads it anyway
    return dst


def ports_in_use(manifest, hosts: list[str]) -> list[str]:
    """Agent, health and private ports of the chosen hosts that something on this machine listens on."""
    busy = []
    for a in manifest.agents.values():
        if a.host not in hosts:
            continue
        for port in (a.port, a.health_port, a.private_port):
            if port is None:
                continue
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind(("0.0.0.0", port))
                except OSError:
                    busy.append(f"{a.name}:{port}")
    return busy


def _interrupted(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--host", default="all", choices=["mainpc", "pc2", "all"])
    parser.add_argument("--modes", default="native,proxy", help="comma-separated: native, proxy")
    parser.add_argument("--rounds", type=int, default=3, help=f"samples per agent and scenario (max {MAX_ROUNDS})")
    parser.add_argument("--no-deps-cold", action="store_true", help="skip the worst case (dependencies cold too)")
    parser.add_argument("--budget", type=float, default=900.0, metavar="SECONDS",
                        help="stop taking samples after this long (figures so far are reported)")
    parser.add_argument("--agentkit-bin", type=Path, default=VENV_BIN, metavar="DIR",
                        help="the agentkit whose agents run (default: this venv's bin). Sandboxed agents cannot "
                             "see /tmp, /root or /home (PrivateTmp=, ProtectHome=): a checkout there needs one "
                             "installed elsewhere")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout; the report on stderr")
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or any(m not in ("native", "proxy") for m in args.modes):
        parser.error("--modes: native and/or proxy")
    if not 1 <= args.rounds <= MAX_ROUNDS:
        parser.error(f"--rounds: 1 to {MAX_ROUNDS}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    say = (lambda *a: print(*a, file=sys.stderr, flush=True)) if args.json else (
        lambda *a: print(*a, flush=True))
    container_mod = _load_container_module()
    missing = container_mod.requirements_missing()
    if missing:
        print(f"bench/fleet.py: {missing}", file=sys.stderr)
        return 2
    reference = manifest_mod.load(str(REFERENCE))
    hosts = list(reference.hosts) if args.host == "all" else [args.host]
    signal.signal(signal.SIGTERM, _interrupted)  # unwind (containers, temp dir) as on ^C
    bench = Bench(args, say)
    bench.hosts = hosts
    bench.container_mod = container_mod
    started = time.monotonic()
    status = 0
    with tempfile.TemporaryDirectory(prefix="agentkit-bench-") as tmp:
        tmp = Path(tmp)
        log_dir = tmp / "logs"
        log_dir.mkdir()
        proxy_dir = None
        bench.manifests["native"] = reference
        if "proxy" in args.modes:
            proxy_dir = proxy_manifest(tmp / "proxy").parent
            bench.manifests["proxy"] = manifest_mod.load(str(proxy_dir / "agents"))
            wrong = [a.name for a in bench.manifests["proxy"].agents.values() if a.optional and a.activation != "proxy"]
            if wrong:
                print(f"bench/fleet.py: proxy copy of the manifest: not in proxy mode: {wrong}", file=sys.stderr)
                return 1
        busy = sorted({p for m in args.modes for p in ports_in_use(bench.manifests[m], hosts)})
        if busy:
            print(f"bench/fleet.py: ports of the fleet are in use on this machine: {', '.join(busy[:20])}",
                  file=sys.stderr)
            return 1
        try:
            for mode in args.modes:
                bench.run_mode(mode, hosts, proxy_dir if mode == "proxy" else None, log_dir, container_mod)
        except KeyboardInterrupt:
            say("interrupted: containers shut down, no report")
            return 130
        finally:
            bench.client.close()
            container_mod.close_all()
        if bench.failures:
            kept = Path(tempfile.mkdtemp(prefix="agentkit-bench-logs-"))
            shutil.copytree(log_dir, kept, dirs_exist_ok=True)
            say(f"container console logs kept in {kept}")
            status = 1

    summary = bench.summary(args.modes, hosts)
    elapsed = time.monotonic() - started
    if args.json:
        print_report(summary, bench, sys.stderr)
        print(json.dumps({
            "python": platform.python_version(), "cpus": os.cpu_count(), "kernel": platform.release(),
            "hosts": hosts, "modes": args.modes, "rounds": args.rounds, "elapsed_s": round(elapsed, 1),
            "budget_exceeded": bench.timed_out, "installs": bench.installs, **summary,
            "anomalies": bench.anomalies, "failures": bench.failures,
            "samples": [s.as_json() for s in bench.samples]}, indent=1))
    else:
        print_report(summary, bench, sys.stdout)
        print(f"\n{len(bench.samples)} samples in {elapsed:.0f} s; {len(bench.failures)} failure(s)"
              + ("; budget exceeded, some samples skipped" if bench.timed_out else ""))
    return status


if __name__ == "__main__":
    sys.exit(main())
