"""The fleet on a real systemd: install, socket activation, dependency order, idle
stop, crash recovery with no request lost, crash loops, and removal.

Each test boots a container, runs `agentkit install` inside it (as a user would on
the host), and talks to the agents from outside over loopback (the container
shares the host's network). Small fleets with their own ports ("lab") cover the
behaviours that need short timings; the reference fleet covers the real shape.
"""

from __future__ import annotations

import json
import textwrap
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import zmq
from helpers import wait_for

REPO = Path(__file__).resolve().parents[2]

@pytest.fixture(autouse=True)
def _agentkit(agentkit_bin):
    """The agentkit the containers run (see conftest.agentkit_bin)."""
    global AGENTKIT
    AGENTKIT = str(agentkit_bin / "agentkit")


AGENTKIT = ""


# --- helpers ---------------------------------------------------------------------------

def request(port: int, payload: dict, timeout: float = 30.0) -> dict:
    """One ZeroMQ REQ on a fresh socket: what a client of the original fleet does."""
    ctx = zmq.Context.instance()
    sock = ctx.socket(zmq.REQ)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVTIMEO, int(timeout * 1000))
    sock.setsockopt(zmq.SNDTIMEO, int(timeout * 1000))
    try:
        sock.connect(f"tcp://127.0.0.1:{port}")
        sock.send_json(payload)
        return sock.recv_json()
    finally:
        sock.close()


def health(port: int) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
        assert response.status == 200
        return json.loads(response.read())


def install(container, manifest: Path, host: str, *extra: str, check: bool = True):
    bin_dir = str(Path(AGENTKIT).parent)
    result = container.run([AGENTKIT, "-m", str(manifest), "install", "--host", host, "--bin-dir", bin_dir, *extra],
                           timeout=300, check=False)
    if check:
        assert result.returncode == 0, f"install failed:\n{result.stdout}\n{result.stderr}"
    return result


def status(container, manifest: Path, host: str) -> dict[str, dict]:
    result = container.run([AGENTKIT, "-m", str(manifest), "status", "--json", "--host", host], check=False)
    assert result.returncode in (0, 1), result.stderr
    return {a["name"]: a for a in json.loads(result.stdout)["agents"]}


def show(container, unit: str, *props: str) -> dict[str, str]:
    out = container.systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def lab_manifest(tmp_path: Path, agents: str, defaults: str = "") -> Path:
    """A small fleet on host 'lab', ports 17100 and up: none of the reference fleet's."""
    root = tmp_path / "lab-agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent("""\
        name: lab
        hosts:
          lab: {address: 127.0.0.1}
        defaults:
          command: [agentkit-agent]
          service_type: notify
          restart: {policy: on-failure, delay: 200ms, burst: 4, interval: 10s}
        """) + textwrap.indent(textwrap.dedent(defaults), "  "))
    (root / "lab.yaml").write_text("host: lab\nagents:\n" + textwrap.indent(textwrap.dedent(agents), "  "))
    return root


# --- the reference fleet -------------------------------------------------------------------

@pytest.fixture
def pc2(container_factory):
    """pc2 of the reference fleet, installed: 8 essential and 14 optional agents."""
    container = container_factory(hostname="pc2")
    result = install(container, REPO / "agents", "pc2")
    return container, result


def test_install_starts_essentials_and_leaves_optional_agents_dormant(pc2):
    container, result = pc2
    assert "[23/23]" in result.stdout  # 14 sockets, 8 essential services and the status service, each reported
    assert container.systemctl("is-active", "agentkit.target").stdout.strip() == "active"
    agents = status(container, REPO / "agents", "pc2")
    essential = {n for n, a in agents.items() if a["essential"]}
    assert len(essential) == 8 and len(agents) == 22
    assert {agents[n]["state"] for n in essential} == {"active"}
    assert {a["state"] for n, a in agents.items() if n not in essential} == {"dormant"}
    # Essential agents answer on their ports, health included.
    reply = request(7140, {"action": "ping"})
    assert (reply["ok"], reply["agent"]) == (True, "MemoryOrchestratorService")
    assert health(8140)["agent"] == "MemoryOrchestratorService"
    # A dormant agent has no process, and its health port is closed: a health
    # check must not wake it, so it is not on the socket.
    assert show(container, "agentkit-CacheManager.service", "MainPID")["MainPID"] == "0"
    with pytest.raises(OSError):
        health(8102)
    assert status(container, REPO / "agents", "pc2")["CacheManager"]["state"] == "dormant"
    # What a person looks at.
    target = container.systemctl("status", "agentkit.target", "--no-pager", check=False)
    assert target.returncode == 0 and "Active: active" in target.stdout
    table = container.run([AGENTKIT, "-m", str(REPO / "agents"), "status", "--host", "pc2"])
    lines = table.stdout.splitlines()
    assert lines[0].split() == ["AGENT", "STATE", "SINCE", "RESTARTS", "MEMORY", "START"]
    assert lines[-1] == "8 active, 14 dormant"
    hub = agents["ObservabilityHub_PC2"]
    assert hub["restarts"] == 0 and 0 < hub["last_start_s"] < 30 and hub["since"] > 0
    assert 5 << 20 < hub["memory"] < 500 << 20  # a Python agent with zmq: tens of MB
    assert agents["CacheManager"]["memory"] is None  # dormant: no process
    print("\n" + table.stdout)


def test_first_request_starts_the_deepest_chain_together(pc2):
    container, _ = pc2
    chain = ["UnifiedWebAgent", "FileSystemAssistantAgent", "UnifiedUtilsAgent"]
    started = time.monotonic()
    reply = request(7126, {"action": "chain"})
    elapsed = time.monotonic() - started
    assert reply["ok"] is True, reply
    # The answer comes through every link: A called B called C.
    assert reply["agent"] == "UnifiedWebAgent"
    names = [d["agent"] for d in reply["deps"]]
    assert names == ["FileSystemAssistantAgent", "MemoryOrchestratorService", "ObservabilityHub_PC2"]
    assert reply["deps"][0]["deps"][0]["agent"] == "UnifiedUtilsAgent"
    # systemd started the chain together (Wants= the dependencies, Requires= and After= their
    # sockets): the head began before the tail was ready, which one after another cannot do;
    # the answer above shows each call waited in its dependency's socket until it was ready.
    times = {n: show(container, f"agentkit-{n}.service", "ExecMainStartTimestampMonotonic",
                     "ActiveEnterTimestampMonotonic") for n in chain}
    began = {n: int(t["ExecMainStartTimestampMonotonic"]) for n, t in times.items()}
    ready = {n: int(t["ActiveEnterTimestampMonotonic"]) for n, t in times.items()}
    assert all(began.values()) and all(ready.values())
    assert began["UnifiedWebAgent"] < ready["UnifiedUtilsAgent"], (began, ready)
    agents = status(container, REPO / "agents", "pc2")
    assert [agents[n]["state"] for n in chain] == ["active"] * 3
    assert elapsed < 30, "the original's SLA; the benchmark measures the real figure"


def test_reinstall_without_change_changes_nothing(pc2):
    container, _ = pc2
    pid = show(container, "agentkit-TieredResponder.service", "MainPID")["MainPID"]
    again = install(container, REPO / "agents", "pc2")
    assert "unit files unchanged" in again.stdout
    assert show(container, "agentkit-TieredResponder.service", "MainPID")["MainPID"] == pid
    dry = container.run([AGENTKIT, "-m", str(REPO / "agents"), "install", "--host", "pc2", "--dry-run",
                         "--bin-dir", str(Path(AGENTKIT).parent)], check=False)
    assert dry.returncode == 0 and dry.stderr.strip() == "nothing to change"


# --- behaviours that need short timings: the lab fleet ------------------------------------

def test_an_idle_agent_stops_by_itself_and_is_dormant_again(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Echo:
          port: 17101
          health_port: 17201
          idle_stop: 3s
          restart: {burst: 6}  # 10s / 3s + 1 wake-ups must stay under the burst
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    install(container, manifest, "lab")
    assert status(container, manifest, "lab")["Echo"]["state"] == "dormant"
    first = request(17101, {"action": "ping"})
    assert status(container, manifest, "lab")["Echo"]["state"] == "active"
    wait_for(lambda: status(container, manifest, "lab")["Echo"]["state"] == "dormant", "Echo to stop after 3s idle", timeout=30)
    assert show(container, "agentkit-Echo.service", "Result")["Result"] == "success"  # exited 0: no restart
    second = request(17101, {"action": "ping"})  # the socket still listens: a new start
    assert second["ok"] and second["pid"] != first["pid"]


def test_sigkill_under_a_steady_stream_loses_no_request(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Steady:
          port: 17102
          idle_stop: 5min
          restart: {delay: 100ms}
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    install(container, manifest, "lab")
    before = request(17102, {"action": "ping"})["pid"]
    total, kill_at, period = 200, 50, 0.01
    replies: list[dict | None] = [None] * total
    latencies = [0.0] * total
    errors: list[str] = []

    def stream():
        next_at = time.monotonic()
        for i in range(total):
            if i == kill_at:
                # Between two requests, so none is in flight inside the agent: what
                # is measured is what systemd's socket gives clients during the restart.
                container.systemctl("kill", "--signal=SIGKILL", "--kill-who=main", "agentkit-Steady.service")
            next_at += period
            started = time.monotonic()
            try:
                replies[i] = request(17102, {"action": "ping"}, timeout=20)
            except Exception as exc:  # recorded, asserted below
                errors.append(f"request {i}: {exc!r}")
            latencies[i] = time.monotonic() - started
            time.sleep(max(0.0, next_at - time.monotonic()))

    thread = threading.Thread(target=stream)
    thread.start()
    thread.join(timeout=120)
    assert not thread.is_alive(), "the stream did not finish"
    assert errors == []
    assert all(r is not None and r["ok"] for r in replies)
    pids = [r["pid"] for r in replies]
    assert set(pids[:kill_at]) == {before}
    assert len(set(pids[kill_at:])) == 1 and pids[kill_at] != before  # one restart, then steady
    props = show(container, "agentkit-Steady.service", "NRestarts", "ActiveState")
    assert (props["NRestarts"], props["ActiveState"]) == ("1", "active")
    print(f"\nworst latency across the restart: {max(latencies[kill_at:]) * 1000:.0f} ms")


def test_a_crash_looping_agent_is_given_up_on_but_its_socket_comes_back(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Crashy:
          port: 17103
          command: [agentkit-agent, --crash-at-start]
          idle_stop: 1min
        Fine:
          port: 17104
          idle_stop: 1min
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    install(container, manifest, "lab")
    with pytest.raises(zmq.Again):
        request(17103, {"action": "ping"}, timeout=5)  # wakes it: it crashes at every start
    wait_for(lambda: show(container, "agentkit-Crashy.socket", "Result")["Result"]
             == "service-start-limit-hit", "systemd to give up on Crashy", timeout=30)
    # burst 4: four starts ran, then systemd refused the next restart.
    assert container.journal("agentkit-Crashy.service").count("as asked (--crash-at-start)") == 4
    assert show(container, "agentkit-Crashy.service", "ActiveState")["ActiveState"] == "failed"
    crashy = status(container, manifest, "lab")["Crashy"]
    assert crashy["state"] == "failed" and "start limit hit" in crashy["detail"], crashy
    # systemd failed the socket too; it listens again after the start-limit
    # window, through agentkit-rearm@.timer.
    wait_for(lambda: show(container, "agentkit-Crashy.socket", "ActiveState",
                                                        "SubState") == {"ActiveState": "active",
                                                                         "SubState": "listening"}, "the socket to listen again", timeout=30)
    assert status(container, manifest, "lab")["Fine"]["state"] == "dormant"  # the neighbour is untouched
    assert request(17104, {"action": "ping"})["ok"]


def test_reinstall_without_an_agent_removes_its_units_and_nothing_else(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Keep:
          essential: true
          port: 17105
        Drop:
          port: 17106
          idle_stop: 1min
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    container.write_file("/etc/systemd/system/agentkit-mine.service", "[Service]\nExecStart=/bin/true\n")
    install(container, manifest, "lab")
    keep_pid = show(container, "agentkit-Keep.service", "MainPID")["MainPID"]
    assert request(17106, {"action": "ping"})["ok"]  # Drop is running when it goes away
    lab = manifest / "lab.yaml"
    lab.write_text(lab.read_text().split("  Drop:")[0])
    result = install(container, manifest, "lab")
    # Drop's service and socket, and with the last optional agent gone, the
    # optional slice and the re-arm templates.
    assert "removed: 5 unit file(s)" in result.stdout
    units = container.root / "etc/systemd/system"
    for name in ("agentkit-Drop.service", "agentkit-Drop.socket", "agentkit-optional.slice",
                 "agentkit-rearm@.timer", "agentkit-rearm@.service"):
        assert not (units / name).exists(), name
    assert (units / "agentkit-mine.service").exists()  # not agentkit's: untouched
    assert show(container, "agentkit-Drop.service", "LoadState", "ActiveState") == \
        {"LoadState": "not-found", "ActiveState": "inactive"}
    assert show(container, "agentkit-Keep.service", "MainPID")["MainPID"] == keep_pid
    with pytest.raises(zmq.Again):
        request(17106, {"action": "ping"}, timeout=2)


def test_proxy_mode_starts_the_agent_behind_systemd_socket_proxyd_and_stops_both_when_idle(
        container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Legacy:
          port: 17107
          health_port: 17207
          activation: proxy
          idle_stop: 3s
          restart: {burst: 6}
        Caller:
          port: 17108
          idle_stop: 1min
          depends_on: [Legacy]
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    install(container, manifest, "lab")
    assert status(container, manifest, "lab")["Legacy"]["state"] == "dormant"
    reply = request(17107, {"action": "ping"})
    assert (reply["ok"], reply["agent"]) == (True, "Legacy")
    # The agent listens on its private address; the proxy holds the public port.
    assert health(17207)["activation"] == "proxy"
    for unit in ("agentkit-Legacy.service", "agentkit-Legacy-proxy.service"):
        assert show(container, unit, "ActiveState")["ActiveState"] == "active", unit
    # Idle: the proxy exits, and the agent, no longer needed, is stopped with it.
    wait_for(lambda: show(container, "agentkit-Legacy.service", "ActiveState")["ActiveState"] == "inactive"
             and show(container, "agentkit-Legacy-proxy.service", "ActiveState")["ActiveState"] == "inactive", "the proxy and the agent to stop after 3s idle", timeout=30)
    assert show(container, "agentkit-Legacy-proxy.service", "Result")["Result"] == "success"
    assert status(container, manifest, "lab")["Legacy"]["state"] == "dormant"
    # A native agent that depends on it starts it (Requires=) and reaches it through
    # the proxy; while that agent runs, the proxied one stays needed.
    chain = request(17108, {"action": "chain"})
    assert chain["ok"] and chain["deps"][0]["agent"] == "Legacy" and chain["deps"][0]["pid"] != reply["pid"]


def test_install_names_an_essential_agent_that_fails_and_uninstall_removes_everything(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Good:
          essential: true
          port: 17109
        Broken:
          essential: true
          port: 17110
          command: [agentkit-agent, --crash-at-start]
          restart: {policy: "no"}
        Lazy:
          port: 17111
          idle_stop: 1min
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    result = install(container, manifest, "lab", check=False)
    assert result.returncode == 1
    assert "agentkit: agentkit-Broken.service did not start: job failed, state failed/failed, result exit-code" \
        in result.stderr
    assert "exiting with status 1 at start, as asked (--crash-at-start)" in result.stderr  # its journal
    assert "agentkit-Good.service" not in result.stderr
    assert request(17109, {"action": "ping"})["ok"]  # the others are up all the same
    units = container.root / "etc/systemd/system"
    container.write_file("/etc/systemd/system/other.service", "[Service]\nExecStart=/bin/true\n")
    removed = container.run([AGENTKIT, "-m", str(manifest), "uninstall"])
    assert "removed" in removed.stdout
    assert sorted(p.name for p in units.iterdir() if p.name.startswith(("agentkit", "other"))) == ["other.service"]
    assert not (units / "multi-user.target.wants" / "agentkit.target").exists()
    for unit in ("agentkit-Good.service", "agentkit-Lazy.socket", "agentkit.target"):
        assert show(container, unit, "LoadState")["LoadState"] == "not-found", unit
    with pytest.raises(zmq.Again):
        request(17109, {"action": "ping"}, timeout=2)


def test_down_stops_the_target_and_every_agent_unit_and_nothing_else(container_factory, tmp_path):
    manifest = lab_manifest(tmp_path, """\
        Keep:
          essential: true
          port: 17107
        Lazy:
          port: 17108
          idle_stop: 1min
        """)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    container.write_file("/etc/systemd/system/mine.service", "[Service]\nExecStart=/bin/sleep infinity\n")
    container.systemctl("daemon-reload")
    container.systemctl("start", "mine.service")
    install(container, manifest, "lab")
    assert request(17108, {"action": "ping"})["ok"]  # Lazy runs when the fleet goes down
    down = container.run([AGENTKIT, "-m", str(manifest), "down"], check=False, timeout=120)
    assert down.returncode == 0, down.stderr
    assert down.stdout.strip() == "stopped agentkit.target and its units"
    for unit in ("agentkit.target", "agentkit-Keep.service", "agentkit-Lazy.service", "agentkit-Lazy.socket"):
        assert show(container, unit, "ActiveState")["ActiveState"] == "inactive", unit
    assert show(container, "mine.service", "ActiveState")["ActiveState"] == "active"  # not agentkit's
    with pytest.raises(zmq.Again):
        request(17108, {"action": "ping"}, timeout=2)
    install(container, manifest, "lab")  # and up again
    assert request(17107, {"action": "ping"})["ok"] and request(17108, {"action": "ping"})["ok"]
