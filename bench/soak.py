"""Soak: the reference fleet on the two-host systemd lab, under traffic and faults, for N minutes.

    .venv/bin/python bench/soak.py --minutes 30 [--seed 1] [--fault-every 6] [--out DIR]
                                   [--proxy] [--agentkit-bin DIR]

What runs (all of it made here, all of it taken down on exit, failure, ^C or SIGTERM):

- tests/e2e/twohosts.Lab: two systemd 252 containers, mainpc and pc2, on a bridge of their
  own (10.77.n.0/24; this machine is .1). `agentkit install` of a copy of the reference
  manifest on each, `--address` giving each host its lab address; the copy differs from
  agents/ only in the router's backend URLs, which point at three stand-in backends
  (tests/router/standin.py: local, the pc2 peer, cloud) served here on the bridge address.
- Traffic, each kind on a thread of its own, every loop bounded in time and count:
  steady pings to essential agents (two streams), dependency chains ({"action": "chain"}
  to agents that have dependencies), first connections to dormant optional agents (the
  status services' /health says which are dormant), and chat completions to the router
  through the official `openai` client (streamed and not, light and heavy task types).
  Agents are asked as the original fleet's clients ask: a fresh ZeroMQ REQ socket per
  request, which waits (reconnecting) while nothing listens, up to REQUEST_TIMEOUT.
- A fault every --fault-every seconds, seeded (--seed): the first five are the five kinds
  in a seeded order (so even a short run has each), then a seeded random choice of
  SIGKILL of an agent (`systemctl kill -s KILL`), an optional agent crash-looping for a
  while (a runtime drop-in, /run/systemd/system/UNIT.d/, whose ExecStartPre= fails;
  removed later), a router backend down / answering 503 / hanging for a while,
  `agentkit install` of a changed manifest (one agent's environment), and
  `agentkit install --restart` on both hosts at once.
- A monitor samples, every SAMPLE_EVERY s: RSS and open fds of every agentkit process
  (router, status services, proxies; found by their units' cgroups), the agents' total,
  OOM kills (memory.events of agentkit's cgroups), failed units; and per minute the
  journals' lines at priority err or worse.

The report directory (--out) gets report.json, report.md (a table per minute, the summary)
and plot.svg (latency and memory over time; a small SVG written here, no plotting library).

Losses are classified. A request in flight on an agent at the moment a fault SIGKILLed it,
or sent to an agent while the soak itself makes it crash-loop (or through one, in a chain),
is unavoidable: counted under that cause. Any other loss (router errors while a backend is
down: the router must fail over; anything lost on an install or a restart) is avoidable.
Exit status: 0 pass; 1 on any avoidable loss, any OOM kill, an unexpected failed install,
or growth of an agentkit process's RSS or fds beyond the bounds below; 2 when it cannot run
here (needs root, systemd-nspawn, sshd and iproute2, like the e2e tests); 130 interrupted
(a partial report is still written). Timings are reported, never asserted.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import os
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import yaml
import zmq

REPO = Path(__file__).resolve().parent.parent
TESTS = REPO / "tests"
sys.path.insert(0, str(TESTS))  # the e2e and router helpers, as the tests import them

from e2e.container import SystemdContainer, close_all, requirements_missing  # noqa: E402
from e2e.twohosts import SSHD_UNIT, Lab, close_all_labs, lab_requirements_missing  # noqa: E402
from router.standin import StandinBackend  # noqa: E402

from agentkit import graph  # noqa: E402
from agentkit import manifest as manifest_mod  # noqa: E402

REFERENCE = REPO / "agents"
VENV_BIN = Path(sys.prefix) / "bin"
HOSTS = ("mainpc", "pc2")

MAX_MINUTES = 24 * 60
REQUEST_TIMEOUT = 15.0  # an agent request: a restart is RestartSec=1s plus ~0.1 s; a cold chain ~0.3 s
CHAIN_TIMEOUT = 10.0  # what a chain request gives its agents (each dependency gets 90 % of what is left)
ROUTER_TIMEOUT = 70.0  # the router's own deadline is 60 s (failover and backoff included)
INSTALL_TIMEOUT = 300.0
SAMPLE_EVERY = 5.0
CRASH_LOOP_S = (8.0, 15.0)  # how long an agent crash-loops
BACKEND_FAULT_S = (5.0, 10.0)  # how long a backend stays down / 5xx / hung
SETTLE_S = 5.0  # after a crash loop ends: the agent's socket re-arms, queued clients get answered
FAULT_KINDS = ("kill", "crash-loop", "backend", "install-changed", "install-restart")
FAULT_WEIGHTS = (4, 2, 3, 1, 1)  # kills are cheap and common; an install --restart costs ~all CPU for a while
MAX_LOSSES_LISTED = 100

# Growth bound: the last minute's median against the second minute's (the first minute is
# warm-up: imports, caches, pools filling). Python processes' RSS moves by a few MiB as the
# allocator's arenas come and go; the router's and status service's steady state is 30-60 MiB
# here and a restart (install --restart) brings it back to its warm-up size within seconds.
# 16 MiB and 25 % over a minute is three to four times the swings seen between minutes of a
# quiet run, while a leak of 1 KiB per request at the router's ~5 req/s crosses 16 MiB
# within an hour, and one of 10 KiB within six minutes. File descriptors are counted, not
# sampled from an allocator: the soak's clients hold at most a few connections at once
# (one router client thread, keep-alive pools of a few connections per backend), so 16 more
# than in the second minute (and 25 %) is beyond anything its concurrency explains.
RSS_BOUND_MIB, RSS_BOUND_FRACTION = 16.0, 0.25
FD_BOUND, FD_BOUND_FRACTION = 16, 0.25

# Router task types: light ones go local (or to the pc2 peer), heavy ones to the cloud.
ROUTER_TASKS = (("simple_chat", False), ("greeting", True), ("command_parsing", False),
                ("emotion_detection", True), ("code_generation", False), ("training", True))


def say(*parts) -> None:
    print(time.strftime("%H:%M:%S"), *parts, file=sys.stderr, flush=True)


# --- what happened ----------------------------------------------------------------------------

@dataclass(slots=True)
class Sent:
    """One request: when it was sent, how long it took, why it was lost (None: answered)."""
    kind: str  # essential, chain, first-connection, router
    target: str  # "host/Agent" or "router"
    path: frozenset  # {(host, agent)}: every agent the request reaches (a chain's dependencies too)
    sent: float  # monotonic
    seconds: float
    cause: str | None = None
    detail: str = ""
    unavoidable: str | None = None  # set by classify(): the fault that made the loss unavoidable


@dataclass
class Fault:
    kind: str
    started: float  # monotonic, before the action
    acted: float = 0.0  # monotonic, once the action returned (a kill: signal sent)
    ends: float | None = None  # windowed faults: when it is to be undone
    ended: float | None = None  # when it was undone
    host: str = ""
    agent: str = ""
    affected: frozenset = frozenset()  # {(host, agent)} whose requests it may make unavoidable losses
    detail: str = ""
    ok: bool = True
    output: str = ""

    def as_json(self, t0: float) -> dict:
        rel = lambda t: None if t is None else round(t - t0, 3)  # noqa: E731
        return {"kind": self.kind, "at_s": rel(self.started), "acted_s": rel(self.acted), "ended_s": rel(self.ended),
                "host": self.host, "agent": self.agent, "detail": self.detail, "ok": self.ok,
                "output": self.output[-2000:]}


class Ledger:
    """Every request and fault, appended from many threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.requests: list[Sent] = []
        self.faults: list[Fault] = []

    def add(self, sent: Sent) -> None:
        with self.lock:
            self.requests.append(sent)

    def fault(self, fault: Fault) -> Fault:
        with self.lock:
            self.faults.append(fault)
        return fault


# --- the fleet in the lab ------------------------------------------------------------------------

class Fleet:
    """The lab's two hosts with the fleet installed: addresses, agents, commands run inside."""

    def __init__(self, lab: Lab, manifest_dir: Path, agentkit_bin: Path):
        self.lab = lab
        self.manifest_dir = manifest_dir
        self.agentkit_bin = agentkit_bin
        self.address = {name: host.address for name, host in lab.hosts.items()}
        self.reload_model()
        self.agent_files = agent_files(manifest_dir)
        self.generation = 0

    def reload_model(self) -> None:
        self.manifest = manifest_mod.load(str(self.manifest_dir))
        self.agents = {a.name: a for a in graph.selected(self.manifest)}
        self.status_port = {h: self.manifest.hosts[h].status_port for h in HOSTS}
        self.router_port = self.manifest.router.port

    def container(self, host: str) -> SystemdContainer:
        return self.lab.hosts[host].container

    def essential(self) -> list:
        return [a for a in self.agents.values() if a.essential]

    def optional(self) -> list:
        return [a for a in self.agents.values() if a.optional]

    def path(self, name: str, chain: bool) -> frozenset:
        """Every (host, agent) a request to name reaches: itself, and for a chain its dependencies."""
        found = {(self.agents[name].host, name)}
        todo = [name] if chain else []
        for _ in range(len(self.agents) + 1):  # bounded: a DAG has at most that many levels
            if not todo:
                break
            nxt = []
            for n in todo:
                for d in self.agents[n].depends_on:
                    if (self.agents[d].host, d) not in found:
                        found.add((self.agents[d].host, d))
                        nxt.append(d)
            todo = nxt
        return frozenset(found)

    def agentkit(self, host: str, *args: str, timeout: float = INSTALL_TIMEOUT):
        addresses = [f"--address={h}={a}" for h, a in self.address.items()]
        argv = [str(self.agentkit_bin / "agentkit"), "-m", str(self.manifest_dir), *addresses, *args]
        return self.container(host).run(argv, check=False, timeout=timeout)

    def install(self, host: str, *extra: str):
        return self.agentkit(host, "install", "--host", host, "--bin-dir", str(self.agentkit_bin), *extra)

    def systemctl(self, host: str, *args: str, timeout: float = 60.0):
        return self.container(host).systemctl(*args, check=False, timeout=timeout)


def agent_files(manifest_dir: Path) -> dict[str, Path]:
    """Agent name -> the group file that defines it."""
    found = {}
    for path in sorted(manifest_dir.glob("*.yaml")):
        doc = yaml.safe_load(path.read_text()) or {}
        for name in (doc.get("agents") or {}) if isinstance(doc, dict) else ():
            found[name] = path
    return found


def soak_manifest(tmp: Path, backends: dict[str, StandinBackend], proxy: bool) -> Path:
    """A copy of agents/ whose router talks to the stand-ins (and, with --proxy, every optional
    agent behind systemd-socket-proxyd). agents/ itself is never touched."""
    dst = tmp / "agents"
    shutil.copytree(REFERENCE, dst, dirs_exist_ok=True)  # into the directory bound into the hosts
    fleet_file = dst / "fleet.yaml"
    fleet = yaml.safe_load(fleet_file.read_text())
    router = fleet["router"]
    router["local"]["url"] = backends["local"].url
    router["peers"]["pc2"]["url"] = backends["pc2"].url
    router["cloud"]["url"] = backends["cloud"].url
    if proxy:
        fleet["defaults"]["activation"] = "proxy"
    fleet_file.write_text("# A copy for bench/soak.py: the router's backends are its stand-ins.\n"
                          + yaml.safe_dump(fleet, sort_keys=False))
    for path in (tmp, dst):
        os.chmod(path, 0o755)
    return dst


# --- traffic ---------------------------------------------------------------------------------------

def zmq_ask(ctx: zmq.Context, address: str, port: int, payload: dict, timeout: float) -> tuple[dict | None, str]:
    """One request on a fresh REQ socket, as the original fleet's clients send it: (reply, "") or
    (None, why). ZeroMQ connects in the background and keeps trying while nothing listens, so a
    restarting agent delays a request rather than refusing it; a reply that cannot come (the
    agent died holding the request) is a timeout."""
    sock = ctx.socket(zmq.REQ)
    try:
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{address}:{port}")
        sock.send_json(payload)
        if not sock.poll(int(timeout * 1000)):
            return None, "timeout"
        raw = sock.recv()
    finally:
        sock.close()
    try:
        reply = json.loads(raw)
    except ValueError:
        return None, f"not JSON: {raw[:60]!r}"
    return reply, ""


def port_refuses(address: str, port: int) -> bool:
    """After a timeout: whether the port refuses connections now (nothing listened) or accepts."""
    try:
        socket.create_connection((address, port), timeout=1.0).close()
        return False
    except OSError:
        return True


class Traffic:
    """The request streams, each a bounded loop on a thread of its own."""

    def __init__(self, fleet: Fleet, ledger: Ledger, seed: int, deadline: float):
        self.fleet = fleet
        self.ledger = ledger
        self.deadline = deadline
        self.stop = threading.Event()
        self.ctx = zmq.Context(io_threads=1)
        self.rng = random.Random(seed * 7919 + 1)
        self.rng_lock = threading.Lock()
        self.dormant: dict[str, set[str]] = {h: set() for h in HOSTS}  # the monitor fills it
        self.threads: list[threading.Thread] = []
        chains = [a.name for a in fleet.agents.values() if a.depends_on]
        self.streams = {
            "essential-1": (0.1, lambda: self.agent_request("essential", self.pick(fleet.essential()).name)),
            "essential-2": (0.1, lambda: self.agent_request("essential", self.pick(fleet.essential()).name)),
            "chain": (0.5, lambda: self.agent_request("chain", self.pick(chains))),
            "first-connection": (1.0, self.first_connection),
            "router": (0.2, self.router_request),
        }

    def pick(self, items):
        with self.rng_lock:
            return self.rng.choice(list(items))

    def start(self) -> None:
        for name, (interval, one) in self.streams.items():
            thread = threading.Thread(target=self.loop, args=(interval, one), name=f"traffic-{name}", daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(ROUTER_TIMEOUT + 5)
        self.ctx.term()

    def loop(self, interval: float, one) -> None:
        for _ in range(int((self.deadline - time.monotonic()) / interval) + 2):  # bounded in count
            if self.stop.is_set() or time.monotonic() >= self.deadline:
                return
            one()
            self.stop.wait(interval)

    def agent_request(self, kind: str, name: str) -> None:
        agent = self.fleet.agents[name]
        address = self.fleet.address[agent.host]
        chain = kind == "chain"
        payload = {"action": "chain", "timeout": CHAIN_TIMEOUT} if chain else {"action": "ping"}
        sent = time.monotonic()
        reply, why = zmq_ask(self.ctx, address, agent.port, payload, REQUEST_TIMEOUT)
        record = Sent(kind, f"{agent.host}/{name}", self.fleet.path(name, chain), sent, time.monotonic() - sent)
        if reply is None:
            if why == "timeout":
                record.cause = "timeout (port refused connections)" if port_refuses(address, agent.port) \
                    else "timeout (accepted, no answer)"
            else:
                record.cause = "bad answer"
            record.detail = why
        elif reply.get("ok") is not True or reply.get("agent") != name:
            record.cause = "chain failed" if chain else "bad answer"
            record.detail = str(reply.get("error") or reply)[:300]
        self.ledger.add(record)

    def first_connection(self) -> None:
        """A ping to an optional agent the status service last saw dormant (else any optional one)."""
        dormant = [(h, n) for h in HOSTS for n in sorted(self.dormant[h])]
        if dormant:
            host, name = self.pick(dormant)
            self.dormant[host].discard(name)  # it wakes now; the next poll tells again
        else:
            name = self.pick(self.fleet.optional()).name
        self.agent_request("first-connection", name)

    def router_request(self) -> None:
        import openai

        task, stream = self.pick(ROUTER_TASKS)
        client = self.router_client()
        sent = time.monotonic()
        record = Sent("router", "router", frozenset({("mainpc", "router")}), sent, 0.0)
        try:
            raw = client.chat.completions.with_raw_response.create(
                model="auto", messages=[{"role": "user", "content": f"soak {task}"}],
                metadata={"task_type": task}, stream=stream)
            reply = raw.parse()
            if stream:
                text = "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices)
            else:
                text = reply.choices[0].message.content or ""
            if not text:
                record.cause, record.detail = "router: empty answer", raw.headers.get("x-agentkit-backend", "")
        except openai.APIStatusError as exc:
            record.cause = f"router {exc.status_code // 100}xx"
            record.detail = f"{exc.status_code}: {str(exc.message)[:200]}"
        except openai.APITimeoutError:
            record.cause, record.detail = "router timeout", f"no answer within {ROUTER_TIMEOUT:g} s"
        except openai.APIConnectionError as exc:
            record.cause, record.detail = "router connection error", repr(exc.__cause__ or exc)[:200]
        except openai.OpenAIError as exc:  # a stream cut short, and the like
            record.cause, record.detail = "router: broken answer", repr(exc)[:200]
        record.seconds = time.monotonic() - sent
        self.ledger.add(record)

    _client = None

    def router_client(self):
        """One official client for the whole run (keep-alive, as applications use it); no retries
        of its own, so that whatever the router loses is seen."""
        if self._client is None:
            import openai
            url = f"http://{self.fleet.address['mainpc']}:{self.fleet.router_port}/v1"
            self._client = openai.OpenAI(base_url=url, api_key="soak", max_retries=0, timeout=ROUTER_TIMEOUT)
        return self._client


# --- faults ------------------------------------------------------------------------------------------

CRASH_DROPIN = "soak-crash-loop.conf"
CRASH_TEXT = ("# bench/soak.py: this agent crash-loops until the soak removes this file.\n"
              "[Service]\nExecStartPre=/usr/bin/false\n")


class Faults:
    """Makes one fault at a time, and undoes the windowed ones when their time comes."""

    def __init__(self, fleet: Fleet, ledger: Ledger, backends: dict[str, StandinBackend], traffic: Traffic,
                 seed: int):
        self.fleet = fleet
        self.ledger = ledger
        self.backends = backends
        self.traffic = traffic
        self.rng = random.Random(seed)
        self.first = list(FAULT_KINDS)
        self.rng.shuffle(self.first)  # each kind once, in a seeded order, then at random
        self.open: list[Fault] = []  # windowed faults not undone yet

    def next_kind(self) -> str:
        kind = self.first.pop(0) if self.first else self.rng.choices(FAULT_KINDS, FAULT_WEIGHTS)[0]
        busy = {f.kind for f in self.open}
        return "kill" if kind in busy else kind  # one crash loop, one backend fault at a time

    def make(self, kind: str) -> Fault:
        return getattr(self, kind.replace("-", "_"))()

    def undo_due(self, now: float, force: bool = False) -> None:
        for fault in list(self.open):
            if force or (fault.ends is not None and now >= fault.ends):
                self.open.remove(fault)
                try:
                    self.undo(fault)
                finally:
                    fault.ended = time.monotonic()

    def running_agents(self) -> list:
        """Essential agents, and optional ones the status services last saw running."""
        dormant = {(h, n) for h in HOSTS for n in self.traffic.dormant[h]}
        crash = {f.agent for f in self.open if f.kind == "crash-loop"}
        return [a for a in self.fleet.agents.values()
                if (a.essential or (a.host, a.name) not in dormant) and a.name not in crash]

    def kill(self) -> Fault:
        agent = self.rng.choice(self.running_agents())
        fault = self.ledger.fault(Fault("kill", time.monotonic(), host=agent.host, agent=agent.name,
                                        affected=frozenset({(agent.host, agent.name)})))
        result = self.fleet.systemctl(agent.host, "kill", "-s", "KILL", f"agentkit-{agent.name}.service")
        fault.acted = time.monotonic()
        fault.detail = f"systemctl kill -s KILL agentkit-{agent.name}.service"
        fault.output = result.stdout + result.stderr
        return fault

    def crash_loop(self) -> Fault:
        """An optional agent whose every start fails, until undo(). Optional ones only: an essential
        agent that fails for good fails every install until it recovers (install waits for the
        essential agents), which is what install is for, not something a soak can count."""
        agent = self.rng.choice([a for a in self.fleet.optional()])
        unit = f"agentkit-{agent.name}.service"
        now = time.monotonic()
        fault = self.ledger.fault(Fault("crash-loop", now, host=agent.host, agent=agent.name,
                                        affected=frozenset({(agent.host, agent.name)}),
                                        ends=now + self.rng.uniform(*CRASH_LOOP_S)))
        self.fleet.container(agent.host).write_file(f"/run/systemd/system/{unit}.d/{CRASH_DROPIN}", CRASH_TEXT)
        self.fleet.systemctl(agent.host, "daemon-reload")
        # Running: killed, it fails to start again; dormant: started now, it fails the same way.
        self.fleet.systemctl(agent.host, "kill", "-s", "KILL", unit)
        result = self.fleet.systemctl(agent.host, "--no-block", "start", unit)
        fault.acted = time.monotonic()
        fault.detail = f"{unit}: ExecStartPre=/usr/bin/false for {fault.ends - now:.0f} s"
        fault.output = result.stderr
        self.open.append(fault)
        return fault

    def backend(self) -> Fault:
        name = self.rng.choice(sorted(self.backends))
        mode = self.rng.choice(("down", "5xx", "hang"))
        backend = self.backends[name]
        now = time.monotonic()
        fault = self.ledger.fault(Fault("backend", now, agent=name, detail=f"{name} {mode}",
                                        ends=now + self.rng.uniform(*BACKEND_FAULT_S)))
        if mode == "down":
            backend.stop()
        elif mode == "5xx":
            backend.set_mode("error", status=503)
        else:
            backend.set_mode("hang")
        fault.acted = time.monotonic()
        fault.detail += f" for {fault.ends - now:.0f} s"
        self.open.append(fault)
        return fault

    def install_changed(self) -> Fault:
        """One running agent's environment changes in the manifest; install restarts it (and what
        Requires= it) under traffic."""
        agent = self.rng.choice(self.running_agents())
        self.fleet.generation += 1
        path = self.fleet.agent_files[agent.name]
        doc = yaml.safe_load(path.read_text())
        own = doc["agents"][agent.name] = doc["agents"][agent.name] or {}
        own.setdefault("environment", {})["SOAK_GENERATION"] = str(self.fleet.generation)
        path.write_text(yaml.safe_dump(doc, sort_keys=False))
        fault = self.ledger.fault(Fault("install-changed", time.monotonic(), host=agent.host, agent=agent.name,
                                        detail=f"{agent.name}: environment SOAK_GENERATION={self.fleet.generation}"))
        result = self.fleet.install(agent.host)
        fault.acted = time.monotonic()
        fault.ok = result.returncode == 0
        fault.output = result.stdout[-1500:] + result.stderr[-1500:]
        fault.detail += f"; install {'ok' if fault.ok else f'exit {result.returncode}'} in " \
                        f"{fault.acted - fault.started:.1f} s"
        return fault

    def install_restart(self) -> Fault:
        """agentkit install --restart on both hosts at once: every agent restarted under traffic."""
        fault = self.ledger.fault(Fault("install-restart", time.monotonic(), host="mainpc+pc2",
                                        detail="agentkit install --restart"))
        results = {}
        threads = [threading.Thread(target=lambda h=h: results.__setitem__(h, self.fleet.install(h, "--restart")))
                   for h in HOSTS]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(INSTALL_TIMEOUT + 30)
        fault.acted = time.monotonic()
        fault.ok = all(h in results and results[h].returncode == 0 for h in HOSTS)
        fault.output = "\n".join(f"--- {h}: exit {r.returncode}\n{r.stdout[-1000:]}{r.stderr[-1000:]}"
                                 for h, r in results.items())
        fault.detail += f": {'ok' if fault.ok else 'FAILED'} in {fault.acted - fault.started:.1f} s"
        return fault

    def undo(self, fault: Fault) -> None:
        if fault.kind == "backend":
            backend = self.backends[fault.agent]
            backend.set_mode("ok")
            backend.start()  # idempotent; up again on the same port after "down"
        elif fault.kind == "crash-loop":
            unit = f"agentkit-{fault.agent}"
            dropin = self.fleet.container(fault.host).root / f"run/systemd/system/{unit}.service.d"
            shutil.rmtree(dropin, ignore_errors=True)
            self.fleet.systemctl(fault.host, "daemon-reload")
            # What an operator does once the agent is fixed: clear the failure, listen again.
            self.fleet.systemctl(fault.host, "reset-failed", f"{unit}.service", f"{unit}.socket",
                                 f"{unit}-proxy.service", f"{unit}-proxy.socket")
            sock = f"{unit}-proxy.socket" if self.fleet.agents[fault.agent].activation == "proxy" else f"{unit}.socket"
            self.fleet.systemctl(fault.host, "start", sock)


# --- what is watched -----------------------------------------------------------------------------------

def read_int_file(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def proc_rss_fds(pid: int) -> tuple[int, int] | None:
    """(RSS bytes, open fds) of a host PID; None when it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
        rss = next((int(line.split()[1]) * 1024 for line in status.splitlines() if line.startswith("VmRSS:")), 0)
        fds = len(os.listdir(f"/proc/{pid}/fd"))
        return rss, fds
    except (OSError, ValueError):
        return None


def unit_cgroups(container: SystemdContainer) -> dict[str, Path]:
    """agentkit's units' cgroups in a container, seen from here: unit name -> directory."""
    found = {}
    for root in container._cgroups[:1]:  # the unified hierarchy (or the named systemd one)
        for path in root.rglob("agentkit*"):
            if path.is_dir() and path.name.endswith((".service", ".slice")) and path.name != SSHD_UNIT:
                found.setdefault(path.name, path)
    return found


def cgroup_pids(path: Path) -> list[int]:
    try:
        return [int(p) for p in (path / "cgroup.procs").read_text().split()]
    except (OSError, ValueError):
        return []


def oom_kills(path: Path) -> int | None:
    try:
        for line in (path / "memory.events").read_text().splitlines():
            key, value = line.split()
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        return None
    return None


class Monitor:
    """Samples agentkit's processes and the hosts' state every SAMPLE_EVERY s, on a thread."""

    def __init__(self, fleet: Fleet, traffic: Traffic, t0: float, deadline: float):
        self.fleet = fleet
        self.traffic = traffic
        self.t0 = t0
        self.deadline = deadline
        self.stop = threading.Event()
        self.samples: list[dict] = []  # {t, procs: {"host unit": {pid, rss, fds}}, agents: {...}, oom, failed}
        self.journal: dict[int, dict[str, list[str]]] = {}  # minute -> host -> lines (err or worse)
        self.oom_available = False
        self.failed_why: dict[str, dict] = {}  # "host unit" -> when first seen failed, its Result, journal tail
        self.thread = threading.Thread(target=self.loop, name="monitor", daemon=True)

    def start(self) -> None:
        self.sample()  # the start figures, before any traffic
        self.thread.start()

    def close(self) -> None:
        self.stop.set()
        self.thread.join(60)
        self.sample()
        self.collect_journal(final=True)

    def loop(self) -> None:
        for _ in range(int((self.deadline - time.monotonic()) / SAMPLE_EVERY) + 2):
            if self.stop.wait(SAMPLE_EVERY):
                return
            try:
                self.poll_status()
                self.sample()
                self.collect_journal()
            except Exception as exc:  # noqa: BLE001 - a monitor hiccup must not end the soak
                say(f"monitor: {type(exc).__name__}: {exc}")

    def poll_status(self) -> None:
        """Each status service's /health (as a load balancer reads it): which agents are dormant."""
        for host in HOSTS:
            url = f"http://{self.fleet.address[host]}:{self.fleet.status_port[host]}/health"
            try:
                with urllib.request.urlopen(url, timeout=5) as answer:
                    body = json.loads(answer.read())
            except urllib.error.HTTPError as exc:  # 503 while an essential agent is down: still a list
                try:
                    body = json.loads(exc.read())
                except ValueError:
                    continue
            except (OSError, ValueError):
                continue
            self.traffic.dormant[host] = {a["name"] for a in body.get("agents", []) if a.get("state") == "dormant"}

    def sample(self) -> None:
        now = time.monotonic()
        procs, agents, oom, failed = {}, {"processes": 0, "rss": 0}, {}, []
        for host in HOSTS:
            container = self.fleet.container(host)
            for unit, path in unit_cgroups(container).items():
                kills = oom_kills(path)
                if kills is not None:
                    self.oom_available = True
                    oom[f"{host} {unit}"] = kills
                if unit.endswith(".slice"):
                    continue
                name = unit[len("agentkit-"):-len(".service")]
                for pid in cgroup_pids(path):
                    got = proc_rss_fds(pid)
                    if got is None:
                        continue
                    if name in self.fleet.agents:  # the agents themselves: restarted all the time, summed
                        agents["processes"] += 1
                        agents["rss"] += got[0]
                    else:  # agentkit's own: router, status, proxies, ...
                        key = f"{host} {unit}" + ("" if len(cgroup_pids(path)) == 1 else f" pid{pid}")
                        procs[key] = {"pid": pid, "rss": got[0], "fds": got[1]}
            listed = self.fleet.systemctl(host, "list-units", "--state=failed", "--all", "--plain", "--no-legend",
                                          "agentkit*", timeout=30).stdout
            units = [line.split()[0] for line in listed.splitlines() if line.strip()]
            failed += [f"{host} {unit}" for unit in units]
            for unit in units:
                self.explain_failed(host, unit, now)
        self.samples.append({"t": round(now - self.t0, 3), "procs": procs, "agents": agents, "oom": oom,
                             "failed": failed})

    def explain_failed(self, host: str, unit: str, now: float) -> None:
        """The first time a unit is seen failed: systemd's Result for it and its last journal lines."""
        key = f"{host} {unit}"
        if key in self.failed_why or len(self.failed_why) >= 100:
            return
        show = self.fleet.systemctl(host, "show", "-p", "Result,ExecMainCode,ExecMainStatus,NRestarts", unit,
                                    timeout=30).stdout
        journal = self.fleet.container(host).run(["journalctl", "--no-pager", "-q", "-o", "short-precise",
                                                  "-u", unit, "-n", "12"], check=False, timeout=30).stdout
        self.failed_why[key] = {"first_seen_s": round(now - self.t0, 1), "show": " ".join(show.split()),
                                "journal": journal.splitlines()[-12:]}

    def collect_journal(self, final: bool = False) -> None:
        """The journal lines at priority err or worse of every whole minute not yet collected."""
        minute_now = int((time.monotonic() - self.t0) // 60)
        wall0 = time.time() - (time.monotonic() - self.t0)
        last = minute_now + 1 if final else minute_now
        for minute in range(last):
            if minute in self.journal:
                continue
            since, until = wall0 + minute * 60, wall0 + (minute + 1) * 60
            self.journal[minute] = {}
            for host in HOSTS:
                out = self.fleet.container(host).run(
                    ["journalctl", "--no-pager", "-q", "-p", "err", "-o", "short-iso",
                     f"--since=@{since:.0f}", f"--until=@{until:.0f}"], check=False, timeout=30).stdout
                self.journal[minute][host] = [line for line in out.splitlines() if line.strip()]


def journal_ooms(fleet: Fleet) -> dict[str, list[str]]:
    """The journals' lines about OOM kills (systemd says so for each unit whose process it lost)."""
    found = {}
    for host in HOSTS:
        out = fleet.container(host).run(["journalctl", "--no-pager", "-q", "-o", "short-iso",
                                         "--grep=OOM killer|oom-kill|Out of memory"], check=False, timeout=60).stdout
        found[host] = [line for line in out.splitlines() if line.strip()]
    return found


def kernel_ooms(containers: list[str], since_uptime: float) -> list[str]:
    """The kernel's oom-kill lines since the soak began whose memory cgroup is one of our containers'."""
    try:
        out = subprocess_run(["dmesg"])
    except (OSError, subprocess.SubprocessError):
        return []
    lines = []
    for line in out.splitlines():
        if "oom-kill" in line and any(name in line for name in containers):
            try:
                stamp = float(line.split("]", 1)[0].strip("[ "))
            except ValueError:
                stamp = since_uptime
            if stamp >= since_uptime:
                lines.append(line)
    return lines


def subprocess_run(argv: list[str]) -> str:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def uptime() -> float:
    return float(Path("/proc/uptime").read_text().split()[0])


# --- the report -------------------------------------------------------------------------------------------

def classify(requests: list[Sent], faults: list[Fault]) -> None:
    """Mark the losses a fault made unavoidable; the rest stay avoidable."""
    kills = [f for f in faults if f.kind == "kill"]
    loops = [f for f in faults if f.kind == "crash-loop"]
    for r in requests:
        if r.cause is None:
            continue
        end = r.sent + r.seconds
        for k in kills:  # in flight on the agent when the signal went
            if k.affected & r.path and r.sent <= (k.acted or k.started) and end >= k.started:
                r.unavoidable = f"in flight on {k.agent} when SIGKILLed"
                break
        else:
            for f in loops:  # to (or through) the agent while it crash-looped, or its socket re-armed
                until = (f.ended or end) + SETTLE_S
                if f.affected & r.path and r.sent <= until and end >= f.started:
                    r.unavoidable = f"{f.agent} crash-looping (the soak's fault)"
                    break


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def latency_by_kind(requests: list[Sent]) -> dict:
    by_kind = defaultdict(list)
    for r in requests:
        if r.cause is None:
            by_kind[r.kind].append(r.seconds * 1000)
    return {kind: {"n": len(v), "p50": round(percentile(v, 50), 2), "p99": round(percentile(v, 99), 2),
                   "max": round(max(v), 1)} for kind, v in sorted(by_kind.items())}


def near_fault(r: Sent, faults: list[Fault]) -> str:
    """For an avoidable loss: the faults it overlapped, so a person can tell what to look at."""
    end = r.sent + r.seconds
    near = [f"{f.kind} {f.agent or f.host}".strip() for f in faults
            if f.started <= end and (f.ended or f.acted or f.started) + 2 >= r.sent]
    return ", ".join(near[:4]) or "no fault in progress"


def minute_rows(ledger: Ledger, monitor: Monitor, minutes: int, t0: float) -> list[dict]:
    rows = []
    for m in range(minutes):
        reqs = [r for r in ledger.requests if m * 60 <= r.sent - t0 < (m + 1) * 60]
        answered = [r.seconds * 1000 for r in reqs if r.cause is None]
        samples = [s for s in monitor.samples if m * 60 <= s["t"] < (m + 1) * 60]
        procs = defaultdict(lambda: {"rss": [], "fds": []})
        for s in samples:
            for key, p in s["procs"].items():
                procs[key]["rss"].append(p["rss"] / 2**20)
                procs[key]["fds"].append(p["fds"])
        rows.append({
            "minute": m + 1,
            "sent": len(reqs),
            "sent_by_kind": dict(Counter(r.kind for r in reqs)),
            "answered": len(answered),
            "lost_unavoidable": dict(Counter(f"{r.cause}: {r.unavoidable}" for r in reqs if r.cause and r.unavoidable)),
            "lost_avoidable": dict(Counter(r.cause for r in reqs if r.cause and not r.unavoidable)),
            "p50_ms": percentile(answered, 50), "p99_ms": percentile(answered, 99),
            "max_ms": max(answered) if answered else None,
            "faults": dict(Counter(f.kind for f in ledger.faults if m * 60 <= f.started - t0 < (m + 1) * 60)),
            "procs": {k: {"rss_mib": round(statistics.median(v["rss"]), 2), "fds": statistics.median(v["fds"])}
                      for k, v in sorted(procs.items())},
            "agents_rss_mib": round(statistics.median([s["agents"]["rss"] / 2**20 for s in samples]), 1)
            if samples else None,
            "agent_processes": statistics.median([s["agents"]["processes"] for s in samples]) if samples else None,
            "failed_units": sorted({u for s in samples for u in s["failed"]}),
            "journal_err_lines": {h: len(v) for h, v in monitor.journal.get(m, {}).items()},
        })
    return rows


def growth(rows: list[dict]) -> list[dict]:
    """Each agentkit process's last-minute median against its second minute's, with the bounds."""
    if len(rows) < 3:
        return []
    base, last = rows[1]["procs"], rows[-1]["procs"]
    verdicts = []
    for key in sorted(set(base) & set(last)):
        b, e = base[key], last[key]
        rss_bound = max(RSS_BOUND_MIB, b["rss_mib"] * RSS_BOUND_FRACTION)
        fd_bound = max(FD_BOUND, b["fds"] * FD_BOUND_FRACTION)
        verdicts.append({"process": key, "rss_mib": [b["rss_mib"], e["rss_mib"]],
                         "rss_growth_mib": round(e["rss_mib"] - b["rss_mib"], 2), "rss_bound_mib": round(rss_bound, 2),
                         "fds": [b["fds"], e["fds"]], "fd_growth": e["fds"] - b["fds"], "fd_bound": round(fd_bound, 1),
                         "ok": e["rss_mib"] - b["rss_mib"] <= rss_bound and e["fds"] - b["fds"] <= fd_bound})
    return verdicts


def summarize(args, ledger: Ledger, monitor: Monitor, t0: float, minutes: int, ooms: dict, interrupted: bool) -> dict:
    classify(ledger.requests, ledger.faults)
    rows = minute_rows(ledger, monitor, minutes, t0)
    lost = [r for r in ledger.requests if r.cause]
    avoidable = [r for r in lost if not r.unavoidable]
    answered = [r.seconds * 1000 for r in ledger.requests if r.cause is None]
    first, final = (monitor.samples[0], monitor.samples[-1]) if monitor.samples else ({}, {})
    start_end = {}
    for key in sorted(set(first.get("procs", {})) | set(final.get("procs", {}))):
        a, b = first.get("procs", {}).get(key), final.get("procs", {}).get(key)
        start_end[key] = {"start": a and {"rss_mib": round(a["rss"] / 2**20, 2), "fds": a["fds"], "pid": a["pid"]},
                          "end": b and {"rss_mib": round(b["rss"] / 2**20, 2), "fds": b["fds"], "pid": b["pid"]}}
    oom_cgroup = {}
    if first and final:
        for key, value in final["oom"].items():
            if value - first["oom"].get(key, 0) > 0:
                oom_cgroup[key] = value - first["oom"].get(key, 0)
    grown = growth(rows)
    looped = {f.agent for f in ledger.faults if f.kind == "crash-loop"}
    about_loop = lambda text: any(f"agentkit-{a}." in text or f"agentkit-{a}-" in text for a in looped)  # noqa
    failed = sorted({u for row in rows for u in row["failed_units"]})
    journal_other = [line for m in sorted(monitor.journal) if m < minutes
                     for lines in monitor.journal[m].values() for line in lines if not about_loop(line)]
    bad_installs = [f for f in ledger.faults if f.kind.startswith("install") and not f.ok]
    reasons = []
    if avoidable:
        reasons.append(f"{len(avoidable)} avoidable lost request(s)")
    if oom_cgroup or any(ooms["journal"].values()) or ooms["kernel"]:
        reasons.append("OOM kill(s)")
    if bad_installs:
        reasons.append(f"{len(bad_installs)} failed install(s)")
    if [g for g in grown if not g["ok"]]:
        reasons.append("RSS or fd growth beyond the bound: " + ", ".join(g["process"] for g in grown if not g["ok"]))
    if minutes >= 3 and not grown:
        reasons.append("no agentkit process was sampled in both the second and the last minute")
    return {
        "seed": args.seed, "minutes": minutes, "fault_every_s": args.fault_every, "proxy": args.proxy,
        "interrupted": interrupted, "cpus": os.cpu_count(),
        "pass": not reasons and not interrupted, "reasons": reasons,
        "totals": {"sent": len(ledger.requests), "answered": len(ledger.requests) - len(lost), "lost": len(lost),
                   "lost_unavoidable": len(lost) - len(avoidable), "lost_avoidable": len(avoidable),
                   "sent_by_kind": dict(Counter(r.kind for r in ledger.requests)),
                   "lost_by_cause": dict(Counter(f"{r.cause}" + (f": {r.unavoidable}" if r.unavoidable else
                                                                 " (avoidable)") for r in lost)),
                   "p50_ms": percentile(answered, 50), "p99_ms": percentile(answered, 99),
                   "max_ms": max(answered) if answered else None,
                   "latency_by_kind_ms": latency_by_kind(ledger.requests)},
        "faults": dict(Counter(f.kind for f in ledger.faults)),
        "fault_log": [f.as_json(t0) for f in ledger.faults],
        "avoidable_losses": [{"at_s": round(r.sent - t0, 3), "kind": r.kind, "target": r.target, "cause": r.cause,
                              "detail": r.detail, "seconds": round(r.seconds, 3),
                              "near": near_fault(r, ledger.faults)} for r in avoidable[:MAX_LOSSES_LISTED]],
        "memory_start_end": start_end,
        "growth": grown,
        "bounds": {"rss": f"max({RSS_BOUND_MIB:g} MiB, {RSS_BOUND_FRACTION:.0%} of the second minute's median)",
                   "fds": f"max({FD_BOUND}, {FD_BOUND_FRACTION:.0%} of the second minute's median)",
                   "compared": "median of the last minute against the median of the second minute"},
        "oom_kills": {"cgroups": oom_cgroup, "cgroup_counters_available": monitor.oom_available,
                      "journal": ooms["journal"], "kernel": ooms["kernel"]},
        "minutes_table": rows,
        "failed_units": {"crash_looped_by_the_soak": [u for u in failed if about_loop(u)],
                         "other": [u for u in failed if not about_loop(u)]},
        "journal_err_not_about_crash_loops": journal_other[:50],
        "failed_units_why": monitor.failed_why,
        "journal_err_sample": {str(m): {h: lines[:10] for h, lines in hosts.items()}
                               for m, hosts in sorted(monitor.journal.items()) if m < minutes},
    }


def fmt(value, spec=".0f") -> str:
    return "-" if value is None else format(value, spec)


def write_markdown(report: dict, path: Path) -> None:
    t = report["totals"]
    out = [f"# agentkit soak: {report['minutes']} min, seed {report['seed']}, a fault every "
           f"{report['fault_every_s']:g} s{' (proxy mode)' if report['proxy'] else ''}", "",
           f"**{'PASS' if report['pass'] else 'FAIL'}**" + ("" if report["pass"] else ": " + "; ".join(
               report["reasons"] + (["interrupted"] if report["interrupted"] else []))), "",
           "## Summary", "",
           f"- requests sent {t['sent']}, answered {t['answered']}, lost {t['lost']} "
           f"({t['lost_unavoidable']} unavoidable, {t['lost_avoidable']} avoidable)",
           f"- sent by kind: " + ", ".join(f"{k} {v}" for k, v in sorted(t["sent_by_kind"].items())),
           f"- latency of answered requests: p50 {fmt(t['p50_ms'], '.1f')} ms, p99 {fmt(t['p99_ms'], '.1f')} ms, "
           f"max {fmt(t['max_ms'], '.0f')} ms",
           "- by kind (p50 / p99 / max ms): " + "; ".join(
               f"{k} {v['p50']:.1f} / {v['p99']:.0f} / {v['max']:.0f}" for k, v in t["latency_by_kind_ms"].items()),
           "- faults: " + ", ".join(f"{k} {v}" for k, v in sorted(report["faults"].items())),
           "", "Lost by cause:", ""]
    out += [f"- {cause}: {n}" for cause, n in sorted(t["lost_by_cause"].items())] or ["- none"]
    out += ["", "## Memory and file descriptors of agentkit's processes", "",
            "| process | RSS start | RSS end | fds start | fds end |", "|---|---|---|---|---|"]
    for key, se in report["memory_start_end"].items():
        a, b = se["start"] or {}, se["end"] or {}
        out.append(f"| {key} | {fmt(a.get('rss_mib'), '.1f')} MiB | {fmt(b.get('rss_mib'), '.1f')} MiB | "
                   f"{fmt(a.get('fds'), 'd')} | {fmt(b.get('fds'), 'd')} |")
    out += ["", f"Growth bound: {report['bounds']['rss']} for RSS, {report['bounds']['fds']} for fds; "
                f"{report['bounds']['compared']}.", "",
            "| process | RSS min 2 -> last (MiB) | growth / bound | fds min 2 -> last | growth / bound | ok |",
            "|---|---|---|---|---|---|"]
    for g in report["growth"]:
        out.append(f"| {g['process']} | {g['rss_mib'][0]:.1f} -> {g['rss_mib'][1]:.1f} | {g['rss_growth_mib']:+.1f} / "
                   f"{g['rss_bound_mib']:.1f} | {g['fds'][0]:g} -> {g['fds'][1]:g} | {g['fd_growth']:+g} / "
                   f"{g['fd_bound']:g} | {'yes' if g['ok'] else 'NO'} |")
    oom = report["oom_kills"]
    out += ["", f"OOM kills: cgroups {sum(oom['cgroups'].values())}"
                f"{'' if oom['cgroup_counters_available'] else ' (memory.events not available here)'}, "
                f"journal {sum(len(v) for v in oom['journal'].values())}, kernel {len(oom['kernel'])}", "",
            "## Per minute", "",
            "| min | sent | answered | lost (unavoidable) | lost (avoidable) | p50 ms | p99 ms | faults | "
            "router RSS MiB / fds | status RSS MiB (mainpc, pc2) | agents RSS MiB | failed units | journal err |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in report["minutes_table"]:
        procs = row["procs"]
        router = procs.get("mainpc agentkit-router.service", {})
        status = [procs.get(f"{h} agentkit-status.service", {}).get("rss_mib") for h in HOSTS]
        out.append(
            f"| {row['minute']} | {row['sent']} | {row['answered']} | {sum(row['lost_unavoidable'].values())} | "
            f"{sum(row['lost_avoidable'].values())} | {fmt(row['p50_ms'], '.1f')} | {fmt(row['p99_ms'], '.0f')} | "
            + ", ".join(f"{k} {v}" for k, v in sorted(row["faults"].items())) + " | "
            f"{fmt(router.get('rss_mib'), '.1f')} / {fmt(router.get('fds'), 'g')} | "
            f"{', '.join(fmt(s, '.1f') for s in status)} | {fmt(row['agents_rss_mib'], '.0f')} | "
            f"{len(row['failed_units'])} | {sum(row['journal_err_lines'].values())} |")
    if report["avoidable_losses"]:
        out += ["", "## Avoidable losses (first 100)", "", "| at s | kind | target | cause | detail | near |",
                "|---|---|---|---|---|---|"]
        for loss in report["avoidable_losses"]:
            out.append(f"| {loss['at_s']:.1f} | {loss['kind']} | {loss['target']} | {loss['cause']} | "
                       f"{loss['detail'][:120].replace('|', '/')} | {loss['near']} |")
    out += ["", "## Faults", "", "| at s | kind | what | ok |", "|---|---|---|---|"]
    for f in report["fault_log"]:
        out.append(f"| {f['at_s']:.1f} | {f['kind']} | {(f['host'] + ' ' + f['detail']).strip()} | "
                   f"{'yes' if f['ok'] else 'NO'} |")
    failed = report["failed_units"]
    out += ["", "Units seen failed, of the agents the soak made crash-loop: "
            + (", ".join(failed["crash_looped_by_the_soak"]) or "none"),
            "", "Other units seen failed: " + (", ".join(failed["other"]) or "none"), ""]
    for unit in failed["other"][:10]:
        why = report["failed_units_why"].get(unit)
        if why:
            out += [f"- {unit}, first seen failed at {why['first_seen_s']} s: {why['show']}"]
            out += [f"      {line}" for line in why["journal"][-6:]]
    out += [
            "Journal lines at priority err or worse not about a crash-looped agent (first 20):", ""]
    out += [f"    {line}" for line in report["journal_err_not_about_crash_loops"][:20]] or ["    none"]
    out += ["",
            "The plot: plot.svg (latency p50/p99 per 10 s, RSS of every agentkit process).", ""]
    path.write_text("\n".join(out))


COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf", "#7f7f7f")


def write_svg(ledger: Ledger, monitor: Monitor, t0: float, seconds: float, path: Path) -> None:
    """Two panels over time: latency (p50, p99 per 10 s, log scale) with the faults marked, and
    the RSS of every agentkit process."""
    W, H, L, R, PH, GAP = 960, 620, 70, 230, 230, 70
    span = max(seconds, 10.0)
    x = lambda t: L + (W - L - R) * min(max(t, 0), span) / span  # noqa: E731
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif" '
             f'font-size="11"><rect width="{W}" height="{H}" fill="white"/>']

    def frame(top, title, ticks, ylabel):
        parts.append(f'<text x="{L}" y="{top - 8}" font-size="13" font-weight="bold">{html.escape(title)}</text>')
        parts.append(f'<rect x="{L}" y="{top}" width="{W - L - R}" height="{PH}" fill="none" stroke="#888"/>')
        for value, y in ticks:
            parts.append(f'<line x1="{L}" x2="{W - R}" y1="{y:.1f}" y2="{y:.1f}" stroke="#eee"/>'
                         f'<text x="{L - 4}" y="{y + 4:.1f}" text-anchor="end">{value}</text>')
        parts.append(f'<text x="14" y="{top + PH / 2}" transform="rotate(-90 14 {top + PH / 2})" '
                     f'text-anchor="middle">{ylabel}</text>')
        step = 60 if span > 120 else 10
        for t in range(0, int(span) + 1, step * max(1, int(span / step / 12))):
            parts.append(f'<text x="{x(t):.1f}" y="{top + PH + 14}" text-anchor="middle">'
                         f'{t / 60:g} min</text>' if step == 60 else
                         f'<text x="{x(t):.1f}" y="{top + PH + 14}" text-anchor="middle">{t} s</text>')

    def polyline(points, colour, dash=""):
        if len(points) > 1:
            pts = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
            parts.append(f'<polyline points="{pts}" fill="none" stroke="{colour}" stroke-width="1.5" '
                         f'{f"stroke-dasharray={chr(34)}{dash}{chr(34)}" if dash else ""}/>')

    def legend(top, items):
        for i, (label, colour) in enumerate(items):
            y = top + 12 + 15 * i
            parts.append(f'<line x1="{W - R + 10}" x2="{W - R + 30}" y1="{y - 4}" y2="{y - 4}" stroke="{colour}" '
                         f'stroke-width="2"/><text x="{W - R + 34}" y="{y}">{html.escape(label)}</text>')

    # Panel 1: latency, log10 from 1 ms to 100 s.
    top1 = 30
    ly = lambda ms: top1 + PH - PH * (math.log10(min(max(ms, 1), 1e5)) / 5)  # noqa: E731
    frame(top1, "latency of answered requests (p50, p99 per 10 s; faults marked)",
          [(label, ly(v)) for v, label in ((1, "1 ms"), (10, "10 ms"), (100, "100 ms"), (1000, "1 s"),
                                           (10000, "10 s"), (100000, "100 s"))], "latency")
    bins = defaultdict(list)
    lost_bins = Counter()
    for r in ledger.requests:
        b = int((r.sent - t0) // 10)
        if r.cause is None:
            bins[b].append(r.seconds * 1000)
        elif not r.unavoidable:
            lost_bins[b] += 1
    for q, colour in ((50, COLOURS[0]), (99, COLOURS[1])):
        polyline([(x(b * 10 + 5), ly(percentile(v, q))) for b, v in sorted(bins.items())], colour)
    marks = {"kill": "K", "crash-loop": "C", "backend": "B", "install-changed": "I", "install-restart": "R"}
    for f in ledger.faults:
        fx = x(f.started - t0)
        parts.append(f'<line x1="{fx:.1f}" x2="{fx:.1f}" y1="{top1}" y2="{top1 + PH}" stroke="#bbb" '
                     f'stroke-dasharray="2,3"/><text x="{fx:.1f}" y="{top1 + 10}" text-anchor="middle" '
                     f'fill="#555">{marks.get(f.kind, "?")}</text>')
    for b, n in lost_bins.items():
        parts.append(f'<circle cx="{x(b * 10 + 5):.1f}" cy="{top1 + PH - 6}" r="4" fill="#000"/>')
    legend(top1, [("p50", COLOURS[0]), ("p99", COLOURS[1]), ("● avoidable loss", "#000")])
    parts.append(f'<text x="{W - R + 10}" y="{top1 + 70}">K kill, C crash loop,</text>'
                 f'<text x="{W - R + 10}" y="{top1 + 84}">B backend, I install,</text>'
                 f'<text x="{W - R + 10}" y="{top1 + 98}">R install --restart</text>')

    # Panel 2: RSS (MiB) of every agentkit process.
    top2 = top1 + PH + GAP
    series = defaultdict(list)
    for s in monitor.samples:
        for key, p in s["procs"].items():
            series[key].append((s["t"], p["rss"] / 2**20))
    top_mib = max([v for pts in series.values() for _, v in pts] + [1.0]) * 1.15
    my = lambda mib: top2 + PH - PH * mib / top_mib  # noqa: E731
    frame(top2, "RSS of agentkit's processes", [(f"{v:.0f}", my(v)) for v in
                                                 [top_mib * i / 4 for i in range(5)]], "MiB")
    items = []
    for i, (key, pts) in enumerate(sorted(series.items())):
        colour = COLOURS[i % len(COLOURS)]
        polyline([(x(t), my(v)) for t, v in pts], colour, "" if i < len(COLOURS) else "4,2")
        items.append((key.replace("agentkit-", "").replace(".service", ""), colour))
    legend(top2, items[:14])
    parts.append("</svg>")
    path.write_text("\n".join(parts))


# --- the run --------------------------------------------------------------------------------------------


def _on_signal(signum, frame):
    raise KeyboardInterrupt


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=30.0, help=f"traffic time (at most {MAX_MINUTES})")
    parser.add_argument("--seed", type=int, default=1, help="seeds the faults and the traffic's choices")
    parser.add_argument("--fault-every", type=float, default=6.0, metavar="S", help="seconds between faults")
    parser.add_argument("--out", type=Path, default=None, help="the report directory (default: ./soak-<time>)")
    parser.add_argument("--proxy", action="store_true", help="optional agents behind systemd-socket-proxyd")
    parser.add_argument("--agentkit-bin", type=Path, default=VENV_BIN, metavar="DIR",
                        help="the agentkit the containers run (default: this venv's). Sandboxed agents cannot see "
                             "/tmp, /root or /home: a checkout there needs one installed elsewhere")
    args = parser.parse_args(argv)
    if not 0 < args.minutes <= MAX_MINUTES:
        parser.error(f"--minutes: more than 0, at most {MAX_MINUTES}")
    if not 1 <= args.fault_every <= 3600:
        parser.error("--fault-every: 1 to 3600 seconds")
    args.out = args.out or Path.cwd() / time.strftime("soak-%Y%m%d-%H%M%S")
    return args


def build_lab(tmp: Path, manifest_dir: Path, agentkit_bin: Path) -> Lab:
    binds = [str(manifest_dir)]
    venv = agentkit_bin.resolve().parent
    if not str(venv).startswith(str(REPO)):  # the checkout is bound in anyway
        binds.append(str(venv))
    logs = tmp / "logs"
    logs.mkdir()
    return Lab(SystemdContainer, HOSTS, workdir=tmp / "lab", container_options={"bind_ro": binds, "log_dir": logs})


def install_fleet(fleet: Fleet) -> None:
    """agentkit install on both hosts, mainpc first (pc2's agents call mainpc's)."""
    key_file = "/etc/agentkit/credentials/router-cloud-key"
    fleet.container("mainpc").write_file(key_file, "sk-soak-never-a-real-key\n", 0o600)
    for host in HOSTS:
        started = time.monotonic()
        result = fleet.install(host)
        if result.returncode != 0:
            raise RuntimeError(f"agentkit install on {host} exited {result.returncode}:\n{result.stdout[-3000:]}\n"
                               f"{result.stderr[-3000:]}")
        say(f"{host}: installed in {time.monotonic() - started:.1f} s")


def wait_router(fleet: Fleet, timeout: float = 60.0) -> None:
    url = f"http://{fleet.address['mainpc']}:{fleet.router_port}/health"
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / 0.5) + 1):
        try:
            with urllib.request.urlopen(url, timeout=5) as answer:
                if answer.status == 200:
                    return
        except (OSError, ValueError):
            pass
        if time.monotonic() > deadline:
            break
        time.sleep(0.5)
    raise RuntimeError(f"the router did not answer {url} within {timeout:g} s")


def run_faults(faults: Faults, fault_every: float, deadline: float, stop_early) -> None:
    """The main thread's loop: a fault every fault_every s, windowed ones undone on time."""
    next_at = time.monotonic() + fault_every / 2
    for _ in range(int((deadline - time.monotonic()) / 0.2) + 2):
        now = time.monotonic()
        if now >= deadline or stop_early():
            break
        faults.undo_due(now)
        if now >= next_at:
            kind = faults.next_kind()
            fault = faults.make(kind)
            say(f"fault: {fault.kind} {fault.host} {fault.detail}".rstrip())
            next_at = max(time.monotonic(), next_at + fault_every)
        time.sleep(0.2)
    faults.undo_due(time.monotonic(), force=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    missing = requirements_missing() or lab_requirements_missing()
    if missing:
        print(f"bench/soak.py: {missing}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)  # unwind (threads, lab, stand-ins) as on ^C
    signal.signal(signal.SIGHUP, _on_signal)
    args.out.mkdir(parents=True, exist_ok=True)
    ledger = Ledger()
    interrupted = False
    traffic = monitor = fleet = None
    backends: dict[str, StandinBackend] = {}
    lab = None
    t0 = time.monotonic()
    report = None
    tmp = Path(tempfile.mkdtemp(prefix="agentkit-soak-"))
    try:
        (tmp / "agents").mkdir()  # bound into the hosts now; filled once the bridge's address is known
        os.chmod(tmp, 0o755)
        say("booting the lab (mainpc, pc2)")
        lab = build_lab(tmp, tmp / "agents", args.agentkit_bin)
        say(f"lab {lab.bridge}: " + ", ".join(f"{h.name} {h.address}" for h in lab.hosts.values())
            + f" (boot {lab.boot_seconds:.1f} s)")
        for name in ("local", "pc2", "cloud"):  # where the router reaches them: this machine on the bridge
            backends[name] = StandinBackend(name, host=lab.host_address, record=False).start()
        manifest_dir = soak_manifest(tmp, backends, args.proxy)
        fleet = Fleet(lab, manifest_dir, args.agentkit_bin)
        install_fleet(fleet)
        wait_router(fleet)
        uptime0 = uptime()
        t0 = time.monotonic()
        deadline = t0 + args.minutes * 60
        traffic = Traffic(fleet, ledger, args.seed, deadline)
        monitor = Monitor(fleet, traffic, t0, deadline)
        monitor.poll_status()
        monitor.start()
        traffic.start()
        faults = Faults(fleet, ledger, backends, traffic, args.seed)
        say(f"traffic and faults for {args.minutes:g} min (seed {args.seed}, a fault every {args.fault_every:g} s)")
        run_faults(faults, args.fault_every, deadline, lambda: False)
        traffic.close()
        monitor.close()
        ooms = {"journal": journal_ooms(fleet), "kernel": kernel_ooms([h.container.name for h in lab.hosts.values()],
                                                                      uptime0)}
    except KeyboardInterrupt:
        interrupted = True
        say("interrupted: taking everything down; a partial report follows")
        ooms = {"journal": {}, "kernel": []}
    finally:
        if traffic is not None:
            traffic.stop.set()
        if monitor is not None:
            monitor.stop.set()
        for backend in backends.values():
            backend.close()
        try:
            if lab is not None:
                lab.close()
        finally:
            close_all_labs()
            close_all()
            shutil.rmtree(tmp, ignore_errors=True)
    if monitor is None:
        return 130 if interrupted else 1
    minutes = max(1, math.ceil(min(time.monotonic() - t0, args.minutes * 60) / 60 - 1e-9))
    report = summarize(args, ledger, monitor, t0, minutes, ooms, interrupted)
    (args.out / "report.json").write_text(json.dumps(report, indent=1))
    write_markdown(report, args.out / "report.md")
    write_svg(ledger, monitor, t0, min(time.monotonic() - t0, args.minutes * 60), args.out / "plot.svg")
    print((args.out / "report.md").read_text())
    print(f"report: {args.out}/report.md, report.json, plot.svg")
    if interrupted:
        return 130
    return 0 if report["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
