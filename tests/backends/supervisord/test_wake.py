"""`agentkit wake` under supervisord: the activator starts an agent and its dependencies with no
client connection, `--wait` returns once they are ready, and idle stop applies after.
The commands run as a user runs them; supervisord, the activator and the programs are real."""

from __future__ import annotations

import os
import socket
import stat
import time

from helpers import wait_for

from .test_byo import fleet, states, up  # noqa: F401 - fleet is a fixture
from .harness import free_ports
from .test_up import run


def accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def test_wake_starts_an_agent_and_its_dependency_without_a_client_and_idle_stop_follows(fleet):  # noqa: F811
    ports = free_ports(3)
    root, state = fleet(f"""\
        Front:
          command: [python3, -m, http.server, "{{port}}"]
          activation: proxy
          port: {ports[0]}
          idle_stop: 3s
          depends_on: [Store]
        Store:
          command: [python3, -m, http.server, "{{port}}"]
          activation: proxy
          port: {ports[1]}
          idle_stop: 3s
        Other:
          command: [python3, -m, http.server, "{{port}}"]
          activation: proxy
          port: {ports[2]}
          idle_stop: 3s
        """, offset=ports[2] - ports[0] + 1000)
    up(root, state)
    assert {n: a["state"] for n, a in states(root, state).items()} == {
        "Front": "dormant", "Store": "dormant", "Other": "dormant"}
    control = state / "activator.sock"
    assert stat.S_IMODE(os.stat(control).st_mode) == 0o600  # its owner's only

    began = time.monotonic()
    woke = run("wake", "Front", "--wait", "--backend", "supervisord", "--state-dir", str(state), manifest=root)
    took = time.monotonic() - began
    assert woke.stdout.splitlines() == ["Front: ready"]
    now = {n: a["state"] for n, a in states(root, state).items()}
    assert now == {"Front": "active", "Store": "active", "Other": "dormant"}, now
    # Ready means ready: the program itself answers on its private port, no client was needed.
    private = {a["name"]: a for a in states(root, state).values()}
    assert private["Front"]["state"] == "active"
    print(f"\nwake --wait returned in {took * 1000:.0f} ms")

    # Nobody uses them: both stop again after idle_stop, the dependant first.
    wait_for(lambda: {n: a["state"] for n, a in states(root, state).items()} == {
        "Front": "dormant", "Store": "dormant", "Other": "dormant"}, "idle stop after the wake", timeout=30,
        interval=0.5)


def test_wake_names_what_it_cannot_wake(fleet):  # noqa: F811
    ports = free_ports(1)
    root, state = fleet(f"""\
        Only:
          command: [python3, -m, http.server, "{{port}}"]
          activation: proxy
          port: {ports[0]}
        """, offset=1000)
    up(root, state)
    unknown = run("wake", "Onyl", "--backend", "supervisord", "--state-dir", str(state), manifest=root, check=False)
    assert unknown.returncode == 1 and "unknown agent 'Onyl' (did you mean 'Only'?)" in unknown.stderr
    nothing = run("wake", "--backend", "supervisord", "--state-dir", str(state), manifest=root, check=False)
    assert nothing.returncode == 2 and "name the agents to wake" in nothing.stderr
    # Without --wait: it returns while the agent starts, and the agent comes up by itself.
    quick = run("wake", "--group", "lab", "--backend", "supervisord", "--state-dir", str(state), manifest=root)
    assert quick.stdout.splitlines() == ["Only: starting"]
    wait_for(lambda: accepts(ports[0] + 1000), "Only's program to listen", timeout=30)
