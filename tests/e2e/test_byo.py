"""Programs that are not ours, as agents on a real systemd: Python's http.server, uvicorn,
a slow-loading server and a relay script, none of which knows anything of agentkit.

The programs live in the container's own /srv (what a user installs under /opt or
/srv): the sandbox hides /tmp and /root, where a test's files would otherwise be.
"""

from __future__ import annotations

import shutil
import textwrap
import time
from pathlib import Path

import pytest
from helpers import clients_during_start, http_get as get, wait_for

from . import test_fleet
from .test_fleet import install, show, status

REPO = Path(__file__).resolve().parents[2]
PROGRAMS = Path(__file__).resolve().parent / "programs"
BYO = REPO / "examples" / "byo"


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    global BIN
    BIN = str(agentkit_bin)
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")  # its install() and status() run this agentkit


BIN = ""


def put(container, source: Path, target: str) -> str:
    """Copy a directory's files into the container at `target`, modes kept."""
    for item in sorted(source.iterdir()):
        if item.is_file():
            container.write_file(f"{target}/{item.name}", item.read_text(), item.stat().st_mode & 0o777)
    return target


def manifest(container, agents: str, fleet: str = "") -> str:
    """A one-host fleet ("lab") written into the container at /srv/lab-agents."""
    container.write_file("/srv/lab-agents/fleet.yaml", textwrap.dedent("""\
        name: lab
        hosts:
          lab: {address: 127.0.0.1}
        defaults:
          restart: {policy: on-failure, delay: 200ms, burst: 5, interval: 10s}
        """) + textwrap.dedent(fleet))
    container.write_file("/srv/lab-agents/lab.yaml", "host: lab\nagents:\n" + textwrap.indent(textwrap.dedent(agents), "  "))
    return "/srv/lab-agents"


def monotonic(container, unit: str, prop: str) -> int:
    return int(show(container, unit, prop)[prop])


def test_the_byo_example_comes_up_and_answers_curl_on_every_port_cold(container_factory):
    """The README's "Bring your own agent", as written: an essential http.server, an optional
    one behind the proxy, and an optional relay script that depends on it."""
    container = container_factory(hostname="local")
    root = put(container, BYO, "/srv/byo")
    # As the README says it: `agentkit up`, which picks systemd (PID 1 here) and this host by name.
    result = container.run([test_fleet.AGENTKIT, "-m", root, "up", "--bin-dir", BIN], timeout=300, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "did not start" not in result.stdout + result.stderr and "try next:" in result.stdout
    agents = status(container, Path(root), "local")
    assert {n: a["state"] for n, a in agents.items()} == {"files": "active", "catalog": "dormant", "front": "dormant"}
    # The dependant first, cold: both start at once, and the relay's call to catalog waits
    # in catalog's socket until catalog answers (no 502 from the relay).
    code, body = get(8603)
    assert code == 200 and b"Directory listing for /" in body, body[:200]
    front_active = monotonic(container, "agentkit-front.service", "ActiveEnterTimestampMonotonic")
    catalog_began = monotonic(container, "agentkit-catalog.service", "ExecMainStartTimestampMonotonic")
    assert catalog_began < front_active, "catalog started only after front was ready: one after another"
    code, body = get(8602)
    assert code == 200 and b"Directory listing for /" in body
    code, body = get(8601)
    assert code == 200 and b"doc/" in body  # files serves /usr/share
    agents = status(container, Path(root), "local")
    assert {a["state"] for a in agents.values()} == {"active"}


def test_twenty_clients_during_a_slow_start_all_get_the_ready_answer(container_factory):
    """A server that listens at once but answers 503 for 3 s: with ready: {http: /health} the
    proxy connects only once /health says 200, so no client sees the 503, a refusal or an
    empty close."""
    container = container_factory(hostname="lab")
    put(container, PROGRAMS, "/srv/programs")
    root = manifest(container, """\
        Slow:
          activation: proxy
          command: [/srv/programs/slow_health.py, "{port}", "3"]
          port: 17301
          ready: {http: /health}
          idle_stop: 5min
        """)
    install(container, Path(root), "lab")
    answers, took = clients_during_start(17301)
    assert all(isinstance(a, tuple) and a[0] == 200 and a[1].startswith(b"ready") for a in answers), answers
    assert len({a[1] for a in answers}) == 1  # one process answered them all
    assert took >= 2.5, f"answered after {took:.1f} s: before the server had loaded"
    print(f"\n20 clients during a 3 s load: all answered after {took:.2f} s")


def test_two_ordinary_agents_start_together_and_the_call_waits_for_the_dependency(container_factory):
    """Back depends on nothing and loads for 1 s; Front depends on Back and loads for 1 s:
    cold, both start at once (about 1 s, not 2), and Front's call reaches Back only when
    Back is ready (Back's loading 503 would fail Front's call)."""
    container = container_factory(hostname="lab")
    put(container, PROGRAMS, "/srv/programs")
    root = manifest(container, """\
        Back:
          activation: proxy
          command: [/srv/programs/slow_health.py, "{port}", "1"]
          port: 17311
          ready: {http: /health}
        Front:
          activation: proxy
          command: [/srv/programs/slow_health.py, "{port}", "1", "http://127.0.0.1:17311/"]
          port: 17312
          depends_on: [Back]
          ready: {http: /health}
        """)
    install(container, Path(root), "lab")
    began = time.monotonic()
    code, body = get(17312, "/call")
    took = time.monotonic() - began
    assert code == 200 and body.startswith(b"called: ready"), body
    back_began = monotonic(container, "agentkit-Back.service", "ExecMainStartTimestampMonotonic")
    front_began = monotonic(container, "agentkit-Front.service", "ExecMainStartTimestampMonotonic")
    assert abs(back_began - front_began) < 500_000, "the two started more than 0.5 s apart"
    assert took < 1.9, f"the cold chain of two 1 s loads took {took:.2f} s: one after the other"
    print(f"\ncold chain of two ordinary agents, 1 s load each: {took:.2f} s")


def test_uvicorn_adopts_the_socket_natively(container_factory):
    """uvicorn --fd 3 serves on systemd's own socket: no proxy, no private port."""
    if shutil.which("uvicorn", path=BIN) is None:
        pytest.fail(f"uvicorn is not installed in {BIN} (the test extras and the e2e venv include it)")
    container = container_factory(hostname="lab")
    put(container, PROGRAMS, "/srv/programs")
    root = manifest(container, """\
        Asgi:
          command: [uvicorn, --fd, "3", --app-dir, /srv/programs, asgi_app:app]
          port: 17321
          ready: {http: /}
          restart: {delay: 100ms}
        """)
    install(container, Path(root), "lab")
    assert status(container, Path(root), "lab")["Asgi"]["state"] == "dormant"
    code, body = get(17321)
    assert code == 200 and body.startswith(b"asgi "), body
    # Its first answer can come before the probe's (the unit is active once the probe has it).
    wait_for(lambda: show(container, "agentkit-Asgi.service", "ActiveState")["ActiveState"] == "active",
             "agentkit-Asgi.service active", timeout=10)
    assert "agentkit-Asgi-proxy.service" not in container.systemctl("list-units", "--all", "agentkit-*").stdout
    # Natively, systemd itself holds the listening socket: across a SIGKILL and the restart
    # every client waits in its queue, and none is lost.
    codes = steady(container, "agentkit-Asgi.service", 17321)
    assert codes == [200] * TOTAL, [(i, c) for i, c in enumerate(codes) if c != 200]
    assert show(container, "agentkit-Asgi.service", "NRestarts")["NRestarts"] == "1"


def test_idle_stop_wake_again_and_sigkill_under_steady_traffic(container_factory):
    container = container_factory(hostname="lab")
    root = manifest(container, """\
        Plain:
          activation: proxy
          command: [python3, -m, http.server, "{port}", --bind, 127.0.0.1, --directory, /usr/share]
          port: 17331
          idle_stop: 2s
          restart: {burst: 10}
        """)
    install(container, Path(root), "lab")
    assert get(17331)[0] == 200
    first = show(container, "agentkit-Plain.service", "MainPID")["MainPID"]
    wait_for(lambda: show(container, "agentkit-Plain.service", "ActiveState")["ActiveState"] == "inactive",
             "Plain to stop after 2 s idle", timeout=30)
    assert status(container, Path(root), "lab")["Plain"]["state"] == "dormant"
    assert get(17331)[0] == 200  # woken again
    assert show(container, "agentkit-Plain.service", "MainPID")["MainPID"] != first
    # A steady stream; SIGKILL between two requests. The proxy is bound to the program
    # (BindsTo=): systemd stops it as the program dies, its socket holds the next clients
    # while the program restarts, and each is answered. A connection made in the instant
    # between the death and that stop reaches a proxy with nothing behind it: at most one.
    codes = steady(container, "agentkit-Plain.service", 17331)
    lost = [(i, c) for i, c in enumerate(codes) if c != 200]
    assert len(lost) <= 1 and all(i == KILL_AT for i, _ in lost), lost
    assert show(container, "agentkit-Plain.service", "NRestarts")["NRestarts"] == "1"


TOTAL, KILL_AT = 120, 40


def steady(container, unit: str, port: int) -> list:
    """TOTAL requests one after another, SIGKILL of the unit's program before request KILL_AT:
    each request's status, or what went wrong."""
    codes: list[int | str] = []
    for i in range(TOTAL):
        if i == KILL_AT:
            container.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", unit)
        try:
            codes.append(get(port, timeout=20)[0])
        except Exception as exc:  # recorded, asserted by the caller
            codes.append(repr(exc))
        time.sleep(0.01)
    return codes


def test_a_program_that_exits_at_once_is_reported_failed_with_its_last_words(container_factory):
    container = container_factory(hostname="lab")
    root = manifest(container, """\
        Broken:
          essential: true
          command: [python3, -c, "import sys; print('cannot load /models/x.gguf: no such file', file=sys.stderr); sys.exit(3)"]
          port: 17341
          restart: {policy: 'no'}
        """)
    result = install(container, Path(root), "lab", check=False)
    assert result.returncode == 1
    assert "cannot load /models/x.gguf: no such file" in result.stdout + result.stderr
    agent = status(container, Path(root), "lab")["Broken"]
    assert agent["state"] == "failed" and "cannot load /models/x.gguf" in agent["detail"], agent


def test_install_reports_programs_that_cannot_run_before_writing_anything(container_factory):
    container = container_factory(hostname="lab")
    container.write_file("/srv/programs/not-executable", "#!/bin/sh\n", 0o644)
    container.write_file("/srv/private/tool", "#!/bin/sh\nexit 0\n", 0o755)
    container.run(["chmod", "700", "/srv/private"])
    container.write_file("/root/tool", "#!/bin/sh\nexit 0\n", 0o755)
    root = manifest(container, """\
        Missing: {essential: true, command: [no-such-program-here], port: 17351}
        NotExec: {essential: true, command: [/srv/programs/not-executable], port: 17352}
        Hidden: {essential: true, command: [/root/tool], port: 17353}
        Closed: {essential: true, command: [/srv/private/tool], port: 17354}
        """)
    result = install(container, Path(root), "lab", check=False)
    assert result.returncode == 1
    lines = result.stderr.strip().splitlines()
    assert any("lab.yaml:3: agents.Missing.command: program 'no-such-program-here' is neither in agentkit's bin "
               "directory" in line for line in lines), lines
    assert any("lab.yaml:4: agents.NotExec.command: /srv/programs/not-executable is not an executable file" in line
               for line in lines), lines
    assert any("lab.yaml:5: agents.Hidden.command: /root/tool is under /root (ProtectHome=yes), which the sandbox "
               "hides" in line for line in lines), lines
    assert any("lab.yaml:6: agents.Closed.command: /srv/private/tool cannot be run by its DynamicUser=: "
               "/srv/private is not open to it" in line for line in lines), lines
    assert not container.run(["ls", "/etc/systemd/system"]).stdout.count("agentkit")  # nothing written
