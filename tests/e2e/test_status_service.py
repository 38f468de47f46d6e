"""The status service (agentkit-status) on a real systemd 252: /health, /metrics and /events
as a load balancer, Prometheus and a person see them, with real clients (curl, an HTTP
client reading the event stream, Prometheus' own text parser)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zmq
from helpers import EventStream, http_get, metric, wait_for

from . import test_fleet
from .test_fleet import install, lab_manifest, request, show

REPO = Path(__file__).resolve().parents[2]
STATUS_PORT = 8202


def health(port: int = STATUS_PORT) -> tuple[int, dict]:
    code, body = http_get(port, "/health", timeout=10)
    return code, json.loads(body)


def metrics(port: int = STATUS_PORT) -> str:
    code, body = http_get(port, "/metrics", timeout=10)
    assert code == 200
    return body.decode()


def test_curl_health_on_mainpc_lists_every_agent_and_reading_it_wakes_none(container_factory):
    """On a fresh install of the reference fleet's mainpc: `curl localhost:8202/health`, as the
    original promised."""
    container = container_factory(hostname="mainpc")
    install(container, REPO / "agents", "mainpc")
    assert show(container, "agentkit-status.service", "ActiveState")["ActiveState"] == "active"
    result = container.run(["curl", "-sS", "-w", "\\n%{http_code}", "http://localhost:8202/health"], check=False)
    body, _, code = result.stdout.rpartition("\n")
    assert code == "200", result.stdout + result.stderr
    answer = json.loads(body)
    agents = {a["name"]: a for a in answer["agents"]}
    assert len(agents) == 55 and answer["status"] == "ok" and answer["essential_down"] == []
    essential = {n for n, a in agents.items() if a["essential"]}
    assert len(essential) == 16 and all(agents[n]["state"] == "active" for n in essential)
    assert {a["state"] for n, a in agents.items() if n not in essential} == {"dormant"}
    assert all(agents[n]["memory"] for n in essential), "memory from each running agent's cgroup"
    # Scraping, reading /health and the page a few times wakes nothing.
    for _ in range(5):
        for path in ("/health", "/metrics", "/"):
            assert http_get(STATUS_PORT, path, timeout=10)[0] == 200
    services = container.systemctl("list-units", "--state=active", "--plain", "--no-legend",
                                   "agentkit-*.service").stdout
    running = {line.split()[0] for line in services.splitlines() if line.strip()}
    woken = {f"agentkit-{n}.service" for n in agents if n not in essential} & running
    assert woken == set(), woken
    page = metrics()
    assert metric(page, "agentkit_agent_state", agent="LazyLoader", state="active") == 1
    assert metric(page, "agentkit_agent_state", agent="CodeGenerator", state="dormant") == 1
    assert metric(page, "agentkit_status_source_up", host="mainpc") == 1
    # Read-only: nothing but GET (and HEAD) is answered.
    post = container.run(["curl", "-sS", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST",
                          "http://localhost:8202/health"], check=False)
    assert post.stdout == "405"


@pytest.fixture
def lab(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Base:
          essential: true
          port: 17101
          restart: {delay: 200ms}
        Lazy:
          port: 17102
          idle_stop: 3s
          restart: {burst: 10}
        Crashy:
          port: 17103
          command: [agentkit-agent, --crash-at-start]
          idle_stop: 1min
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    install(container, manifest, "lab")
    wait_for(lambda: health()[0] == 200, "/health to answer 200")
    container.manifest = manifest  # for the tests that run agentkit in it
    return container


def test_a_wake_a_crash_and_a_start_limit_show_on_events_and_in_metrics(lab):
    container = lab
    with EventStream(STATUS_PORT) as stream:
        # A first connection wakes Lazy: wake, then ready, counted as a cold start.
        assert request(17102, {"action": "ping"})["ok"]
        woke = stream.wait("Lazy", "wake")
        ready = stream.wait("Lazy", "ready")
        assert ready["cause"] == "first_connection" and 0 < ready["seconds"] < 30
        assert woke["id"] < ready["id"]
        page = metrics()
        assert metric(page, "agentkit_agent_starts_total", agent="Lazy", cause="first_connection") == 1
        assert metric(page, "agentkit_agent_cold_start_seconds_count", agent="Lazy") == 1
        assert metric(page, "agentkit_agent_cold_start_seconds_sum", agent="Lazy") == pytest.approx(
            ready["seconds"])
        assert metric(page, "agentkit_agent_state", agent="Lazy", state="active") == 1
        # Idle, it stops by itself: an idle stop, and dormant again.
        stream.wait("Lazy", "idle-stop", timeout=30)
        wait_for(lambda: {a["name"]: a["state"] for a in health()[1]["agents"]}["Lazy"] == "dormant",
                 "Lazy to be dormant again")

        # SIGKILL of an essential agent: a crash, systemd's restart, ready again.
        container.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "agentkit-Base.service")
        crash = stream.wait("Base", "crash")
        assert crash["result"] == "signal"
        stream.wait("Base", "restart")
        wait_for(lambda: [k for k in stream.kinds("Base") if k in ("crash", "restart", "ready")][-3:]
                 == ["crash", "restart", "ready"], "Base to be ready after its restart")
        page = metrics()
        assert metric(page, "agentkit_agent_restarts_total", agent="Base") == 1
        assert metric(page, "agentkit_agent_starts_total", agent="Base", cause="restart") == 1

        # An agent that crashes at every start: systemd gives up, and says so.
        with pytest.raises(zmq.Again):
            request(17103, {"action": "ping"}, timeout=5)
        stream.wait("Crashy", "start-limit-hit")
        assert metric(metrics(), "agentkit_agent_start_limit_hits_total", agent="Crashy") == 1
        crashy = {a["name"]: a for a in health()[1]["agents"]}["Crashy"]
        assert crashy["state"] == "failed" and "start limit hit" in crashy["detail"], crashy
        delays = [e["received"] - e["time"] for e in stream.events]
        print(f"\n{len(stream.events)} events, delivered within {max(delays) * 1000:.0f} ms of being published")


def test_health_answers_503_while_an_essential_agent_is_down(lab):
    container = lab
    container.systemctl("stop", "agentkit-Base.service")
    code, answer = wait_for(lambda: (lambda r: r if r[0] == 503 else None)(health()), "/health to answer 503")
    assert answer["status"] == "degraded" and answer["essential_down"] == ["Base"]
    assert metric(metrics(), "agentkit_status_healthy", host="lab") == 0
    container.systemctl("start", "agentkit-Base.service")
    wait_for(lambda: health()[0] == 200, "/health to answer 200 again")


def test_the_status_service_follows_an_install_that_adds_an_agent(lab, tmp_path):
    container = lab
    manifest = Path(str(tmp_path / "lab-agents"))
    with open(manifest / "lab.yaml", "a", encoding="utf-8") as handle:
        handle.write("  Later:\n    port: 17104\n")
    install(container, manifest, "lab")
    wait_for(lambda: "Later" in {a["name"] for a in health()[1]["agents"]}, "Later on /health after the install",
             timeout=30)
    assert {a["name"]: a["state"] for a in health()[1]["agents"]}["Later"] == "dormant"


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


def test_the_status_service_comes_back_after_the_system_bus_restarts(lab):
    """dbus-daemon restarted: the signals stop without a word. The service notices, says so,
    connects again, and events flow as before."""
    container = lab
    container.systemctl("restart", "dbus.service")
    wait_for(lambda: "connected to systemd again" in container.journal("agentkit-status.service"),
             "the status service to connect to systemd again", timeout=60)
    assert "systemd does not answer" in container.journal("agentkit-status.service")
    wait_for(lambda: health()[0] == 200, "/health to answer 200 again")
    with EventStream(STATUS_PORT) as stream:
        assert request(17102, {"action": "ping"})["ok"]
        stream.wait("Lazy", "ready")


def test_wake_starts_an_agent_with_no_client_and_idle_stop_follows(lab):
    container = lab
    with EventStream(STATUS_PORT) as stream:
        woke = container.run([test_fleet.AGENTKIT, "-m", str(container.manifest), "wake", "Lazy", "--wait",
                              "--host", "lab"], check=False, timeout=60)
        assert woke.returncode == 0 and woke.stdout.splitlines() == ["Lazy: ready"], woke.stdout + woke.stderr
        assert show(container, "agentkit-Lazy.service", "ActiveState")["ActiveState"] == "active"
        stream.wait("Lazy", "ready")
        stream.wait("Lazy", "idle-stop", timeout=30)  # nobody used it: it stops by itself
    # The idle stop is told as it begins (active -> stopping); dormant once the unit is down.
    wait_for(lambda: {a["name"]: a["state"] for a in health()[1]["agents"]}["Lazy"] == "dormant",
             "Lazy dormant after its idle stop")
    unknown = container.run([test_fleet.AGENTKIT, "-m", str(container.manifest), "wake", "Lazzy",
                             "--host", "lab"], check=False)
    assert unknown.returncode == 1 and "unknown agent 'Lazzy' (did you mean 'Lazy'?)" in unknown.stderr


def test_the_status_service_is_sandboxed_at_most_as_exposed_as_the_router(lab):
    container = lab
    result = container.run(["systemd-analyze", "security", "--no-pager", "agentkit-status.service"], check=False)
    exposure = float(result.stdout.strip().splitlines()[-1].split("level for agentkit-status.service:")[1].split()[0])
    print(f"\nsystemd-analyze security agentkit-status.service: {exposure}")
    assert exposure <= 1.7, result.stdout[-3000:]



def test_gpu_memory_per_agent_from_nvml_per_process_figures(lab, tmp_path):
    """The stand-in libnvidia-ml.so.1 (tests/router/fake_nvml.c) reports the processes using the
    GPU; the status service adds them up by agent, by each process's cgroup."""
    from router.nvml import STATE_VARIABLE, FakeGpu, build_fake_nvml

    container = lab
    nvml = tmp_path / "nvml"
    gpu = FakeGpu(nvml / "state", build_fake_nvml(nvml))
    base = int(show(container, "agentkit-Base.service", "MainPID")["MainPID"])
    gpu.set(("GPU0", 16384, 4096), processes=((0, base, 6144),))
    # The library and its state where the sandboxed service can read them, and a drop-in that
    # points it there (on a host with a GPU, the driver's own library is found without one).
    inside = container.root / "srv" / "nvml"
    inside.mkdir(parents=True, exist_ok=True)
    for name in ("libnvidia-ml.so.1", "state"):
        (inside / name).write_bytes((nvml / name).read_bytes())
        (inside / name).chmod(0o644)
    container.write_file("/etc/systemd/system/agentkit-status.service.d/nvml.conf",
                         f"[Service]\nEnvironment=LD_LIBRARY_PATH=/srv/nvml {STATE_VARIABLE}=/srv/nvml/state\n")
    container.systemctl("daemon-reload")
    container.systemctl("restart", "agentkit-status.service")
    wait_for(lambda: health()[0] == 200, "/health after the restart")
    answer = health()[1]
    agents = {a["name"]: a for a in answer["agents"]}
    assert answer["gpu"] == "NVML per-process figures", answer["gpu"]
    assert agents["Base"]["gpu_memory"] == 6144 << 20 and agents["Lazy"]["gpu_memory"] is None
    assert metric(metrics(), "agentkit_agent_gpu_memory_bytes", agent="Base") == 6144 << 20
