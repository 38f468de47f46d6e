"""The status service under supervisord, as `agentkit up` runs it: /health, /metrics and /events
read with real clients while real programs (Python's http.server) are woken, killed and
crash-loop under supervisord and the activator."""

from __future__ import annotations

import json
import os
import signal
import socket
import textwrap
from pathlib import Path

import pytest
from helpers import EventStream, http_get, metric, wait_for

from agentkit.backends.supervisord import run as supervisor_run

from .harness import free_ports
from .test_up import run


@pytest.fixture
def lab(tmp_path):
    ports = free_ports(4)
    status_port, base, lazy, crashy = ports
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: statuslab
        hosts:
          lab: {{address: 127.0.0.1, status: {{port: {status_port}}}}}
        private_port_offset: 1000
        defaults:
          restart: {{policy: on-failure, delay: 200ms, burst: 3, interval: 10s}}
        """))
    (root / "lab.yaml").write_text(textwrap.dedent(f"""\
        host: lab
        agents:
          Base:
            essential: true
            command: [python3, -m, http.server, "{{port}}"]
            port: {base}
          Lazy:
            command: [python3, -m, http.server, "{{port}}"]
            activation: proxy
            port: {lazy}
            idle_stop: 3s
            restart: {{burst: 10}}
          Crashy:
            command: [python3, -c, "import sys; sys.exit(3)"]
            activation: proxy
            port: {crashy}
            idle_stop: 1min
        """))
    state = tmp_path / "state"
    run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root)
    try:
        wait_for(lambda: _health(status_port)[0] == 200, "/health to answer 200", timeout=30)
        yield {"root": root, "state": state, "status": status_port, "Base": base, "Lazy": lazy, "Crashy": crashy}
    finally:
        run("down", "--backend", "supervisord", "--state-dir", str(state), manifest=root, check=False, timeout=120)


def _health(port: int) -> tuple[int, dict]:
    try:
        code, body = http_get(port, "/health", timeout=10)
    except OSError:
        return 0, {}
    return code, json.loads(body)


def _answers(port: int) -> bool:
    try:
        return http_get(port, "/", timeout=5)[0] == 200
    except OSError:
        return False  # not listening yet


def _states(port: int) -> dict[str, str]:
    return {a["name"]: a["state"] for a in _health(port)[1]["agents"]}


def _metrics(port: int) -> str:
    code, body = http_get(port, "/metrics", timeout=10)
    assert code == 200
    return body.decode()


def test_health_lists_every_agent_and_reading_it_wakes_none(lab):
    port = lab["status"]
    assert _states(port) == {"Base": "active", "Crashy": "dormant", "Lazy": "dormant"}
    for _ in range(5):
        for path in ("/health", "/metrics", "/"):
            assert http_get(port, path, timeout=10)[0] == 200
    assert _states(port) == {"Base": "active", "Crashy": "dormant", "Lazy": "dormant"}
    page = _metrics(port)
    assert metric(page, "agentkit_agent_state", agent="Lazy", state="dormant") == 1
    assert metric(page, "agentkit_status_source_up", host="lab") == 1


def test_a_wake_a_kill_and_a_crash_loop_show_on_events_and_in_metrics(lab):
    port = lab["status"]
    with EventStream(port) as stream:
        code, _ = http_get(lab["Lazy"], "/")  # a first connection wakes Lazy through the activator
        assert code == 200
        stream.wait("Lazy", "wake")
        ready = stream.wait("Lazy", "ready")
        assert ready["cause"] == "first_connection" and 0 < ready["seconds"] < 30
        page = _metrics(port)
        assert metric(page, "agentkit_agent_starts_total", agent="Lazy", cause="first_connection") == 1
        assert metric(page, "agentkit_agent_cold_start_seconds_count", agent="Lazy") == 1
        wait_for(lambda: metric(_metrics(port), "agentkit_agent_accepted_connections_total", agent="Lazy") == 1,
                 "the activator's count of Lazy's connections", timeout=10)
        stream.wait("Lazy", "idle-stop", timeout=30)  # the activator stops it after idle_stop

        # SIGKILL of the essential agent: supervisord restarts it, and that shows.
        server = supervisor_run.rpc(str(lab["state"])).supervisor
        os.kill(server.getProcessInfo("Base")["pid"], signal.SIGKILL)
        stream.wait("Base", "crash", timeout=30)
        stream.wait("Base", "restart", timeout=30)
        wait_for(lambda: _states(port)["Base"] == "active", "Base active again", timeout=30)
        assert metric(_metrics(port), "agentkit_agent_restarts_total", agent="Base") == 1

        # A program that exits at every start: supervisord gives up (FATAL), the start limit.
        with socket.create_connection(("127.0.0.1", lab["Crashy"]), timeout=30) as sock:
            sock.settimeout(30)
            assert sock.recv(1) == b""  # closed without an answer, once the start failed
        stream.wait("Crashy", "start-limit-hit", timeout=30)
        assert metric(_metrics(port), "agentkit_agent_start_limit_hits_total", agent="Crashy") == 1
        crashy = {a["name"]: a for a in _health(port)[1]["agents"]}["Crashy"]
        assert crashy["state"] == "failed" and "start limit" in crashy["detail"], crashy


def test_health_answers_503_while_an_essential_agent_is_down(lab):
    port = lab["status"]
    server = supervisor_run.rpc(str(lab["state"])).supervisor
    server.stopProcess("Base", True)
    code, answer = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(_health(port)), "/health to answer 503")
    assert answer["essential_down"] == ["Base"]
    server.startProcess("Base", True)
    wait_for(lambda: _health(port)[0] == 200, "/health 200 again")


def test_a_hung_agent_is_killed_and_restarted_by_its_liveness_probe(tmp_path):

    program = Path(__file__).resolve().parents[2] / "e2e" / "programs" / "hangs_on_usr1.py"
    status_port, port = free_ports(2)
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: livelab
        hosts:
          lab: {{address: 127.0.0.1, status: {{port: {status_port}}}}}
        defaults:
          restart: {{policy: on-failure, delay: 200ms, burst: 5, interval: 10s}}
        """))
    (root / "lab.yaml").write_text(textwrap.dedent(f"""\
        host: lab
        agents:
          Hangs:
            essential: true
            command: [{program}, "{{port}}"]
            port: {port}
            liveness: {{http: /, interval: 1s, failures: 2}}
        """))
    state = tmp_path / "state"
    run("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state), manifest=root)
    try:
        server = supervisor_run.rpc(str(state)).supervisor
        wait_for(lambda: _health(status_port)[0] == 200, "/health 200", timeout=30)
        before = server.getProcessInfo("Hangs")["pid"]
        assert http_get(port, "/")[0] == 200
        os.kill(before, signal.SIGUSR1)  # from now on it accepts and never answers
        wait_for(lambda: server.getProcessInfo("Hangs")["pid"] not in (0, before), "a new Hangs process",
                 timeout=30, interval=0.1)
        wait_for(lambda: _answers(port), "the new process to answer", timeout=30)
        wait_for(lambda: metric(_metrics(status_port), "agentkit_agent_restarts_total", agent="Hangs") == 1,
                 "the restart counted", timeout=10)
        log = (state / "logs" / "agentkit-status.log").read_text()
        assert "Hangs stopped answering: killing it" in log, log[-2000:]
    finally:
        run("down", "--backend", "supervisord", "--state-dir", str(state), manifest=root, check=False, timeout=120)


def test_gpu_memory_per_agent_from_nvml_per_process_figures(lab, tmp_path):
    """The stand-in libnvidia-ml.so.1 (tests/router/fake_nvml.c) reports the processes using each
    GPU; the real status service, started beside the lab's own with it, adds them up by agent."""
    import subprocess
    import sys

    from router.nvml import FakeGpu, build_fake_nvml

    gpu = FakeGpu(tmp_path / "nvml" / "state", build_fake_nvml(tmp_path / "nvml"))
    server = supervisor_run.rpc(str(lab["state"])).supervisor
    base = server.getProcessInfo("Base")["pid"]
    gpu.set(("GPU0", 16384, 4096), processes=((0, base, 6144), (0, 1, 2048)))  # pid 1 is nobody's
    port = free_ports(1)[0]
    status = subprocess.Popen([str(Path(sys.executable).parent / "agentkit-status"), "--backend", "supervisord",
                               "--state-dir", str(lab["state"]), "--host", "lab", "--listen", f"127.0.0.1:{port}"],
                              env={**os.environ, **gpu.environ()}, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        wait_for(lambda: _health(port)[0] == 200, "the second status service", timeout=30)
        answer = _health(port)[1]
        agents = {a["name"]: a for a in answer["agents"]}
        assert answer["gpu"] == "NVML per-process figures"
        assert agents["Base"]["gpu_memory"] == 6144 << 20 and agents["Lazy"]["gpu_memory"] is None
        assert metric(_metrics(port), "agentkit_agent_gpu_memory_bytes", agent="Base") == 6144 << 20
        gpu.set(("GPU0", 16384, 8192), processes=((0, base, 2048),))  # it freed some
        wait_for(lambda: metric(_metrics(port), "agentkit_agent_gpu_memory_bytes", agent="Base") == 2048 << 20,
                 "the new figure (NVML is read at most every 100 ms)", timeout=10)
    finally:
        status.terminate()
        status.wait(timeout=30)
    # The lab's own service has no NVML: no figures, and it says why.
    own = _health(lab["status"])[1]
    assert own["gpu"].startswith("NVML unavailable") and {a["gpu_memory"] for a in own["agents"]} == {None}
