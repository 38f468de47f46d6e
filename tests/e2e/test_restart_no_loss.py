"""Nothing lost on restart or upgrade: steady traffic from several client threads while
`agentkit install --restart` restarts every agent, and while an install changes one agent.

Each request must get its answer. Real clients: the reference agent's ZeroMQ client
(toolkit/client.py, what `agentkit call` sends) and a REQ socket asking for a little work
(so that requests are in flight inside the agent when SIGTERM comes), and plain HTTP for an
ordinary program behind the proxy. Every loop is bounded; lost requests are counted by
agent and asserted.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq
from helpers import http_get

from agentkit import client

from . import test_fleet
from .test_fleet import install, show

AGENTS = """\
    Native:
      command: [agentkit-agent]
      service_type: notify
      port: 27411
      idle_stop: 10min
    Proxied:
      activation: proxy
      command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1, --directory, /usr/share]
      port: 27412
      idle_stop: 10min
    Essential:
      essential: true
      command: [agentkit-agent]
      service_type: notify
      port: 27413
    EssentialNative:
      essential: true
      activation: native
      command: [agentkit-agent]
      service_type: notify
      port: 27414
    """
CHANGED = AGENTS.replace("      idle_stop: 10min\n    Proxied:", "      idle_stop: 10min\n      environment: {ANSWER: '42'}\n    Proxied:")
THREADS = 3  # per agent
MAX_REQUESTS = 5000  # per thread: the loops are bounded whatever happens


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


def work(port: int, seconds: float) -> dict:
    """A request that takes `seconds` inside the agent: in flight when SIGTERM comes."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, 5_000)
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_json({"action": "work", "seconds": seconds})
        return sock.recv_json()
    finally:
        sock.close()


class Traffic:
    """THREADS client threads per target, each request after the other until stopped."""

    def __init__(self, targets: dict):
        self.targets = targets  # name -> list of callables, one per thread; each returns True when answered
        self.sent = {name: 0 for name in targets}
        self.lost: dict[str, list[str]] = {name: [] for name in targets}
        self.lock = threading.Lock()
        self.done = threading.Event()
        self.threads = [threading.Thread(target=self._run, args=(name, call), daemon=True)
                        for name, calls in targets.items() for call in calls]

    def _run(self, name, call):
        for _ in range(MAX_REQUESTS):
            if self.done.is_set():
                return
            try:
                ok, why = call(), "wrong answer"
            except Exception as exc:  # counted, asserted by the test
                ok, why = False, repr(exc)
            with self.lock:
                self.sent[name] += 1
                if not ok:
                    self.lost[name].append(why)
            if not ok:
                self.done.wait(0.02)  # a client backs off a little after a failure, as real ones do

    def __enter__(self):
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc):
        self.done.set()
        for thread in self.threads:
            thread.join(timeout=60)
        assert not any(t.is_alive() for t in self.threads), "a client thread did not finish"

    def wait_sent(self, each: int):
        """Until every target has had `each` more requests answered or lost (bounded)."""
        start = dict(self.sent)
        for _ in range(2000):
            with self.lock:
                if all(self.sent[n] - start[n] >= each for n in self.sent):
                    return
            time.sleep(0.01)  # the client threads do the work; this only looks at their counts
        pytest.fail(f"traffic stalled: {self.sent}; lost: { {n: v[:3] for n, v in self.lost.items()} }")

    def summary(self) -> str:
        return ", ".join(f"{n}: {self.sent[n]} sent, {len(self.lost[n])} lost" for n in self.sent)


def targets() -> dict:
    """Per agent, THREADS clients: for a reference agent one `agentkit call`-style ping and two
    REQ sockets asking for work; for the proxied http.server, plain HTTP."""
    def reference(name: str, port: int) -> list:
        def ping():
            reply, _ = client.zmq_request(name, port, "ping", timeout=5)
            return reply.get("ok") is True

        def some_work():
            return work(port, 0.05).get("ok") is True

        return [ping, some_work, some_work]

    def proxied():
        return http_get(27412, "/", timeout=5)[0] == 200

    return {"Native": reference("Native", 27411), "Essential": reference("Essential", 27413),
            "EssentialNative": reference("EssentialNative", 27414), "Proxied": [proxied] * THREADS}


def mains(container) -> dict[str, str]:
    return {n: show(container, f"agentkit-{n}.service", "MainPID")["MainPID"]
            for n in ("Native", "Proxied", "Essential", "EssentialNative")}


FLEET = """\
name: lab
hosts:
  lab: {address: 127.0.0.1, status: {port: 27499}}
defaults:
  restart: {policy: on-failure, delay: 200ms, burst: 20, interval: 10s}
"""


def test_install_restart_and_a_changed_agent_lose_no_request(container_factory):
    container = container_factory(hostname="lab")
    root = Path("/srv/lab-agents")
    container.write_file(f"{root}/fleet.yaml", FLEET)
    container.write_file(f"{root}/lab.yaml", "host: lab\nagents:\n" + _indent(AGENTS))
    install(container, root, "lab")
    assert client.zmq_request("Native", 27411, "ping", 30)[0]["ok"] and http_get(27412)[0] == 200
    first = mains(container)
    assert "0" not in first.values(), first
    report = []
    with Traffic(targets()) as traffic:
        traffic.wait_sent(20)
        restart = install(container, root, "lab", "--restart")
        assert "running service(s)" in restart.stdout, restart.stdout
        traffic.wait_sent(20)
        restarted = mains(container)
        assert all(restarted[n] != first[n] for n in first), (first, restarted)  # each really restarted
        report.append(f"install --restart: {traffic.summary()}")
        after_restart = {n: len(v) for n, v in traffic.lost.items()}
        container.write_file(f"{root}/lab.yaml", "host: lab\nagents:\n" + _indent(CHANGED))
        changed = install(container, root, "lab")
        assert "changed: 1 unit file(s)" in changed.stdout and "restarting 1 changed running" in changed.stdout, \
            changed.stdout
        traffic.wait_sent(20)
        now = mains(container)
        assert now["Native"] != restarted["Native"] and now["Essential"] == restarted["Essential"]
    report.append(f"both installs: {traffic.summary()}")
    print("\n" + "\n".join(report))
    print({n: v[:3] for n, v in traffic.lost.items() if v})
    # Natively the socket is systemd's and the agent drains: nothing lost, optional or essential.
    assert after_restart["Native"] == 0 and traffic.lost["Native"] == [], traffic.lost["Native"][:5]
    assert after_restart["EssentialNative"] == 0 and traffic.lost["EssentialNative"] == [], \
        traffic.lost["EssentialNative"][:5]
    # Known limits, counted above (README, "Restarts and upgrades without losing requests"): an essential
    # agent that binds its own port (no activation: native), while it restarts, refuses (the ZeroMQ client that checks
    # with a plain connect first says so; a REQ socket that just sends reconnects and is answered);
    # systemd-socket-proxyd, restarted with its program, closes the connections it holds.
    # (A REQ socket's connect is retried in the background while the port refuses: on a busy machine
    # the restart can outlast its 5 s, and it times out: Again.) The agents that adopt systemd's
    # socket above lose nothing; here only those two kinds of loss are allowed.
    assert all("nothing accepted the connection" in why or why.startswith("Again(")
               for why in traffic.lost["Essential"]), sorted(set(traffic.lost["Essential"]))
    assert all(why.startswith(("RemoteDisconnected", "ConnectionResetError")) for why in traffic.lost["Proxied"]), \
        traffic.lost["Proxied"][:5]


def _indent(text: str) -> str:
    import textwrap
    return textwrap.indent(textwrap.dedent(text), "  ")
