"""`agentkit up` / `status` / `call` / `down` on the supervisord backend, as a user runs them.

The commands run as subprocesses of this test (the installed `agentkit`), with
a lab fleet on free ports and the state directory in tmp_path; supervisord,
the activator and the agents are real.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from .harness import free_ports
from helpers import wait_for

AGENTKIT = str(Path(sys.executable).parent / "agentkit")


def run(*args: str, manifest: Path, check: bool = True, timeout: float = 180) -> subprocess.CompletedProcess:
    result = subprocess.run([AGENTKIT, "-m", str(manifest), *args], capture_output=True, text=True, timeout=timeout)
    if check:
        assert result.returncode == 0, f"agentkit {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture
def lab(tmp_path):
    """A lab fleet: one essential agent, a chain Top -> Middle -> Bottom of optional ones, one crash-looper."""
    ports = free_ports(10)
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: uplab
        hosts:
          lab: {{address: 127.0.0.1}}
        private_port_offset: {ports[9] - ports[0]}
        defaults:
          command: [agentkit-agent]
          service_type: notify
          idle_stop: 3s
          restart: {{policy: on-failure, delay: 200ms, burst: 3, interval: 2s}}
        """))
    (root / "lab.yaml").write_text(textwrap.dedent(f"""\
        host: lab
        agents:
          Base: {{essential: true, port: {ports[0]}}}
          Bottom: {{port: {ports[1]}, depends_on: [Base]}}
          Middle: {{port: {ports[2]}, depends_on: [Bottom]}}
          Top: {{port: {ports[3]}, depends_on: [Middle]}}
          Crashy: {{port: {ports[4]}, command: [agentkit-agent, --crash-at-start]}}
        """))
    state = tmp_path / "state"
    yield root, state
    # Whatever happened: supervisord and everything under it goes.
    subprocess.run([AGENTKIT, "-m", str(root), "down", "--backend", "supervisord", "--host", "lab",
                    "--state-dir", str(state), "--timeout", "30"], capture_output=True, timeout=60)
    pid_file = state / "supervisord.pid"
    if pid_file.exists():
        try:
            pid = int(pid_file.read_text())
            os.killpg(os.getpgid(pid), signal.SIGKILL)
        except (ValueError, OSError):
            pass


def status(root: Path, state: Path) -> dict[str, dict]:
    result = run("status", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), "--json",
                 manifest=root, check=False)
    assert result.returncode in (0, 1), result.stderr
    return {a["name"]: a for a in json.loads(result.stdout)["agents"]}


def links(reply: dict) -> list[str]:
    """The agents a chain reply went through, outermost first."""
    out = [reply["agent"]]
    for dep in reply.get("deps", []):
        out += links(dep)
    return out


def test_up_runs_the_fleet_and_a_request_wakes_a_dormant_chain(lab):
    root, state = lab
    result = run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root)
    assert "lab: 1/1 essential agents running, 4 optional agents dormant" in result.stdout
    # The try-next lines work pasted: they repeat the -m, --backend and --state-dir up was given.
    assert "try next:" in result.stdout and f"agentkit -m {root} call Top --action chain" in result.stdout
    assert f"agentkit -m {root} down --backend supervisord --state-dir {state}" in result.stdout
    assert oct((state / "supervisor.sock").stat().st_mode & 0o777) == "0o700"
    states = status(root, state)
    assert {n: s["state"] for n, s in states.items()} == {
        "Base": "active", "Bottom": "dormant", "Middle": "dormant", "Top": "dormant", "Crashy": "dormant"}

    # The first request to the top of the chain starts Bottom, Middle, Top in order and gets every link.
    reply = json.loads(run("call", "Top", "--action", "chain", manifest=root).stdout)
    assert links(reply) == ["Top", "Middle", "Bottom", "Base"] and reply["ok"] is True
    states = status(root, state)
    # supervisord says STARTING for its startsecs (1 s) even once the agent answers.
    assert all(states[n]["state"] in ("starting", "active") for n in ("Top", "Middle", "Bottom")), states
    starts = [states[n]["since"] for n in ("Bottom", "Middle", "Top")]
    assert starts == sorted(starts), starts

    # Idle: all three are dormant again after their idle time, and wake again.
    wait_for(lambda: all(
        s["state"] == "dormant" for n, s in status(root, state).items() if n in ("Top", "Middle", "Bottom")), "the chain to go dormant", timeout=40)
    assert json.loads(run("call", "Middle", manifest=root).stdout)["agent"] == "Middle"

    # A second up changes nothing and keeps the running agents.
    pid_before = (state / "supervisord.pid").read_text()
    again = run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root)
    assert "supervisord is running; no change" in again.stdout
    assert (state / "supervisord.pid").read_text() == pid_before

    # down stops supervisord and every agent.
    pid = int(pid_before)
    down = run("down", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root)
    assert "supervisord and every agent stopped" in down.stdout
    assert not os.path.exists(f"/proc/{pid}")


def test_a_crash_looping_agent_is_given_up_on_and_reported(lab):
    root, state = lab
    run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root)
    failed = run("call", "Crashy", "--timeout", "20", manifest=root, check=False)
    assert failed.returncode == 1 and "accepted the connection, but no ZeroMQ answer came" in failed.stderr
    # ... and what supervisord knows: the agent's state and its own last line.
    assert "Crashy is " in failed.stderr and "exiting with status 1 at start" in failed.stderr, failed.stderr
    crashy = wait_for(lambda: (s := status(root, state)["Crashy"])["state"] == "failed" and s, "Crashy to be given up on")
    assert crashy["detail"].startswith("FATAL: start limit hit")
    result = run("status", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root,
                 check=False)
    assert result.returncode == 1 and "Crashy" in result.stdout and "1 failed" in result.stdout
    assert json.loads(run("call", "Bottom", manifest=root).stdout)["agent"] == "Bottom"  # neighbours are fine
