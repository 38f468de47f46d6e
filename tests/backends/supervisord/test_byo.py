"""Programs that are not ours, as agents under supervisord: `agentkit up` of the README's
example (Python's http.server and a relay script), a slow-loading server with twenty
clients waiting, two ordinary agents in a chain, idle stop and wake, a crash under
steady traffic, and a program that exits at once.

The commands run as a user runs them (`agentkit up/status/call/down` as subprocesses);
supervisord, the activator and the programs are real.
"""

from __future__ import annotations

import http.client
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from .harness import free_ports
from .test_up import run
from helpers import clients_during_start, http_get as get, wait_for

REPO = Path(__file__).resolve().parents[3]
PROGRAMS = REPO / "tests" / "e2e" / "programs"
SLOW = str(PROGRAMS / "slow_health.py")


@pytest.fixture
def fleet(tmp_path):
    """fleet(agents_yaml, ports) -> (manifest dir, state dir): a one-host fleet, brought down after."""
    made = []

    def make(agents: str, offset: int) -> tuple[Path, Path]:
        root = tmp_path / f"agents{len(made)}"
        root.mkdir()
        (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
            name: byolab{len(made)}
            hosts:
              lab: {{address: 127.0.0.1}}
            private_port_offset: {offset}
            defaults:
              restart: {{policy: on-failure, delay: 200ms, burst: 10, interval: 10s}}
            """))
        (root / "lab.yaml").write_text("host: lab\nagents:\n" + textwrap.indent(textwrap.dedent(agents), "  "))
        state = tmp_path / f"state{len(made)}"
        made.append((root, state))
        return root, state

    yield make
    for root, state in made:
        run("down", "--backend", "supervisord", "--state-dir", str(state), manifest=root, check=False, timeout=120)


def up(root: Path, state: Path, check: bool = True) -> subprocess.CompletedProcess:
    return run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root,
               check=check)


def states(root: Path, state: Path) -> dict[str, dict]:
    import json
    result = run("status", "--backend", "supervisord", "--state-dir", str(state), "--json", manifest=root, check=False)
    return {a["name"]: a for a in json.loads(result.stdout)["agents"]}


def _ports_free(*ports: int) -> bool:
    import socket
    for port in ports:
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return False
    return True


def test_the_readme_example_comes_up_with_agentkit_up_and_answers_every_port_cold(tmp_path):
    if not _ports_free(8601, 8602, 8603):
        pytest.fail("ports 8601-8603 (examples/byo) are in use on this machine")
    root = tmp_path / "byo"
    shutil.copytree(REPO / "examples" / "byo", root)
    state = tmp_path / "state"
    try:
        result = run("up", "--backend", "supervisord", "--state-dir", str(state), manifest=root)
        assert "1/1 essential agents running, 2 optional agents dormant" in result.stdout
        # The try-next lines repeat what up was given, and HTTP agents get a plain call.
        assert f"agentkit -m {root} status --backend supervisord --state-dir {state}" in result.stdout
        assert f"agentkit -m {root} call front " in result.stdout
        assert {n: a["state"] for n, a in states(root, state).items()} == {
            "files": "active", "catalog": "dormant", "front": "dormant"}
        code, body = get(8603)  # front and catalog, cold, together
        assert code == 200 and b"Directory listing for /" in body
        assert get(8602)[0] == 200
        code, body = get(8601)
        assert code == 200 and b"doc/" in body
        call = run("call", "front", "--path", "/", manifest=root)
        assert "Directory listing for /" in call.stdout and "front answered HTTP 200" in call.stderr
        # up noted where its state is: status and down without --state-dir find it.
        listed = run("status", "--backend", "supervisord", manifest=root, check=False)
        assert listed.returncode == 0 and "files    active" in listed.stdout, listed.stdout + listed.stderr
    finally:
        down = run("down", "--backend", "supervisord", manifest=root, check=False)
    assert down.returncode == 0, down.stderr
    assert str(state) in down.stdout  # it stopped the supervisord of that state directory
    assert _ports_free(8601, 8602, 8603)


def test_twenty_clients_during_a_slow_start_all_get_the_ready_answer(fleet):
    port, private = free_ports(2)
    root, state = fleet(f"""\
        Slow:
          activation: proxy
          command: [{SLOW}, "{{port}}", "3"]
          port: {port}
          ready: {{http: /health}}
          idle_stop: 5min
        """, private - port)
    up(root, state)
    answers, took = clients_during_start(port)
    assert all(isinstance(a, tuple) and a[0] == 200 and a[1].startswith(b"ready") for a in answers), answers
    assert took >= 2.5, f"answered after {took:.1f} s, before the server had loaded"


def test_two_ordinary_agents_start_together_and_the_call_waits_for_the_dependency(fleet):
    back, front, offset_port = free_ports(3)
    offset = offset_port - min(back, front)
    root, state = fleet(f"""\
        Back:
          activation: proxy
          command: [{SLOW}, "{{port}}", "1"]
          port: {back}
          ready: {{http: /health}}
        Front:
          activation: proxy
          command: [{SLOW}, "{{port}}", "1", "http://127.0.0.1:{back}/"]
          port: {front}
          depends_on: [Back]
          ready: {{http: /health}}
        """, offset)
    up(root, state)
    began = time.monotonic()
    code, body = get(front, "/call")
    took = time.monotonic() - began
    assert code == 200 and body.startswith(b"called: ready"), body
    assert took < 1.9, f"the cold chain of two 1 s loads took {took:.2f} s: one after the other"


def test_idle_stop_wake_again_a_crash_under_traffic_and_a_program_that_exits_at_once(fleet):
    plain, broken, offset_port = free_ports(3)
    root, state = fleet(f"""\
        Plain:
          activation: proxy
          command: [python3, -m, http.server, "{{port}}", --bind, 127.0.0.1, --directory, /usr/share]
          port: {plain}
          idle_stop: 2s
        Broken:
          activation: proxy
          command: [python3, -c, "import sys; print('cannot load /models/x.gguf', file=sys.stderr); sys.exit(3)"]
          port: {broken}
          start_timeout: 5s
          restart: {{burst: 2}}
        """, offset_port - min(plain, broken))
    up(root, state)
    assert get(plain)[0] == 200
    wait_for(lambda: states(root, state)["Plain"]["state"] == "dormant", "Plain to stop after 2 s idle", timeout=30)
    assert get(plain)[0] == 200  # woken again
    # SIGKILL under a steady stream: the activator holds each new client until the program
    # answers again (supervisord restarts it). A connection that reaches the program in the
    # instant it dies, its listening socket not yet closed, is lost with it: at most that one.
    from agentkit.backends.supervisord import run as supervisor_run
    pid = supervisor_run.rpc(str(state)).supervisor.getProcessInfo("Plain")["pid"]
    codes = []
    for i in range(80):
        if i == 30:
            os.kill(pid, signal.SIGKILL)
        try:
            codes.append(get(plain, timeout=20)[0])
        except Exception as exc:  # recorded, asserted below
            codes.append(repr(exc))
        time.sleep(0.01)
    lost = [(i, c) for i, c in enumerate(codes) if c != 200]
    assert len(lost) <= 1 and all(i == 30 for i, _ in lost), lost
    # A program that exits at once: the client is closed, and status and call say why.
    with pytest.raises((ConnectionError, http.client.HTTPException)):
        get(broken, timeout=20)
    row = states(root, state)["Broken"]
    assert row["state"] == "failed" and "cannot load /models/x.gguf" in row["detail"], row
    call = run("call", "Broken", manifest=root, check=False)
    assert call.returncode == 1
    assert "closed it without an answer" in call.stderr and "cannot load /models/x.gguf" in call.stderr, call.stderr


def test_uvicorn_runs_behind_the_activator(fleet):
    """uvicorn cannot adopt a socket here (supervisord hands none over: `--fd 3` is systemd's
    native mode), so it listens on {port}, the private port the activator forwards to."""
    uvicorn = Path(sys.executable).parent / "uvicorn"
    if not uvicorn.exists():
        pytest.fail(f"uvicorn is not installed beside {sys.executable} (the test extras include it)")
    port, private = free_ports(2)
    root, state = fleet(f"""\
        Asgi:
          activation: proxy
          command: [uvicorn, --host, 127.0.0.1, --port, "{{port}}", --app-dir, {PROGRAMS}, asgi_app:app]
          port: {port}
          ready: {{http: /}}
        """, private - port)
    up(root, state)
    assert states(root, state)["Asgi"]["state"] == "dormant"
    code, body = get(port)
    assert code == 200 and body.startswith(b"asgi "), body
