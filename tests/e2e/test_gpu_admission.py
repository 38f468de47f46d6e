"""GPU admission on systemd 252 in a container: agentkit-admit (each optional GPU agent's
ExecStartPre=) admits, stops idle agents for room and refuses, with the reference agent taking
its gpu_memory through the stand-in CUDA runtime at start-up (--gpu-allocate). The stand-in
(tests/router/fake_nvml.c) fails any allocation that does not fit, and counts it."""

from __future__ import annotations

import json
import os
import socket
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import at_once, http_get, metric, wait_for

from agentkit.client import zmq_request

from . import test_fleet
from .test_fleet import install
from .test_status_page import browser_missing, chromium

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from router.nvml import STATE_VARIABLE, FakeGpu, build_fake_nvml  # noqa: E402

pytestmark = pytest.mark.e2e

GiB = 1 << 30
STATUS = 8202
START_TIMEOUT = 3
PORTS = {"A": 17121, "B": 17122, "C": 17123, "D": 17124, "E": 17125, "P": 17126, "Q": 17127}
NVML = "/srv/nvml"  # in the container: the stand-in library, its state, the agents' allocations


def _manifest(tmp_path: Path) -> Path:
    root = tmp_path / "gpu-agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: gpulab
        hosts:
          lab:
            address: 127.0.0.1
            gpus: {{0: 16G, 1: 16G, 2: 16G}}
        defaults:
          command: [agentkit-agent, --gpu-allocate]
          service_type: notify
          idle_stop: 10min
          start_timeout: {START_TIMEOUT}s
          writable_paths: [{NVML}]
          restart: {{policy: on-failure, delay: 200ms, burst: 4, interval: 10s}}
        """))
    (root / "lab.yaml").write_text(textwrap.dedent(f"""\
        host: lab
        agents:
          A: {{port: {PORTS["A"]}, gpu_memory: 10G}}
          B: {{port: {PORTS["B"]}, gpu_memory: 10G, activation: proxy, private_port: 17132}}  # its proxy needs it too
          C: {{port: {PORTS["C"]}, gpu_memory: 10G, gpu: 1}}
          D: {{port: {PORTS["D"]}, gpu_memory: 10G, gpu: 1}}
          E: {{port: {PORTS["E"]}, gpu_memory: 4G, gpu: 1, essential: true}}
          P: {{port: {PORTS["P"]}, gpu_memory: 10G, gpu: 2}}
          Q: {{port: {PORTS["Q"]}, gpu_memory: 10G, gpu: 2, activation: proxy, private_port: 17137}}
        """))
    return root


@pytest.fixture(autouse=True)
def _bin(agentkit_bin):
    test_fleet.AGENTKIT = str(agentkit_bin / "agentkit")


@pytest.fixture
def gpulab(container_factory, tmp_path):
    built = tmp_path / "nvml"
    gpu_host = FakeGpu(built / "state", build_fake_nvml(built))
    gpu_host.set(("GPU0", 16384, 16384), ("GPU1", 16384, 16384), ("GPU2", 16384, 16384))
    manifest = _manifest(tmp_path)
    container = container_factory(hostname="lab", bind_ro=[str(manifest)])
    inside = container.root / NVML.lstrip("/")
    inside.mkdir(parents=True, exist_ok=True)
    # The agents (DynamicUser=, each its own user) record their allocations here, replacing each
    # other's file: no sticky bit, which would forbid that.
    inside.chmod(0o777)
    for name in ("libnvidia-ml.so.1", "libcudart.so.12", "state"):
        (inside / name).write_bytes((built / name).read_bytes())
        (inside / name).chmod(0o644)
    # A drop-in for every agentkit-*.service (the agents, their admission, the status service)
    # points them at the stand-in; on a host with a GPU the driver's library is found without one.
    container.write_file("/etc/systemd/system/agentkit-.service.d/nvml.conf",
                         f"[Service]\nEnvironment=LD_LIBRARY_PATH={NVML} {STATE_VARIABLE}={NVML}/state\n")
    install(container, manifest, "lab")
    wait_for(lambda: _health().get("status") == "ok", "/health to say ok", timeout=60)
    container.gpu = FakeGpu(inside / "state", inside)
    container.manifest = manifest
    yield container
    for name in PORTS:  # shown by pytest when the test failed
        print(container.journal(f"agentkit-{name}.service", lines=40))


def _health() -> dict:
    try:
        return json.loads(http_get(STATUS, "/health", timeout=10)[1])
    except (OSError, ValueError):
        return {}


def _metrics() -> str:
    return http_get(STATUS, "/metrics", timeout=10)[1].decode()


def _expect(**expected) -> None:
    seen = {}

    def states():
        seen.update({a["name"]: (a["state"], a["detail"]) for a in _health().get("agents", [])})
        return {name: state for name, (state, _) in seen.items()}
    try:
        wait_for(lambda: all(states().get(k) == v for k, v in expected.items()),
                 f"the status service to show {expected}", timeout=15)
    except BaseException:
        print("the status service showed:", seen)
        raise


def _ask(name: str, timeout: float = 20) -> dict:
    return zmq_request(name, PORTS[name], "ping", timeout)[0]


def _figures(index: int = 0) -> dict:
    page = _metrics()
    return {key: (metric(page, f"agentkit_gpu_memory_{key}_bytes", gpu=str(index)) or 0) / GiB
            for key in ("total", "free", "claimed", "available")}


def _counted(name: str, **labels) -> float:
    return metric(_metrics(), name, **labels) or 0


def test_eviction_both_ways_and_a_busy_agent_kept_on_systemd(gpulab):
    container = gpulab
    figures = [("at rest", _figures())]
    _ask("A")
    _expect(A="active")
    wait_for(lambda: _figures()["free"] == 6, "A's 10 GiB in NVML's figures", timeout=10)
    figures.append(("A woken", _figures()))

    _ask("B")  # A is idle: agentkit-admit stops it, then B starts
    _expect(A="dormant", B="active")
    figures.append(("B woken, A stopped for it", _figures()))
    _ask("A")  # and back
    _expect(A="active", B="dormant")
    figures.append(("A woken, B stopped for it", _figures()))
    wait_for(lambda: _counted("agentkit_gpu_evictions_total", gpu="0", victim="B") == 1, "B's eviction counted")
    assert _counted("agentkit_gpu_evictions_total", gpu="0", victim="A") == 1
    journal = container.journal("agentkit-B.service")
    assert "A: stopping it to make room on GPU 0 for B" in journal, journal

    # A busy: an open connection, and requests answered all along. B waits, then fails.
    held = socket.create_connection(("127.0.0.1", PORTS["A"]), timeout=5)
    answered, errors, stop = [], [], threading.Event()

    def keep_asking():
        while not stop.is_set() and len(answered) < 300:
            try:
                answered.append(_ask("A", timeout=10))
            except Exception as exc:  # noqa: BLE001 - asserted below
                errors.append(exc)
                return

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        wait_for(lambda: answered, "A's first answer", timeout=10)
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", PORTS["B"]), timeout=START_TIMEOUT + 20) as client:
            client.sendall(b"\x00")
            try:
                got = client.recv(1)
            except ConnectionResetError:
                got = b""
        waited = time.monotonic() - began
    finally:
        stop.set()
        asker.join(timeout=30)
        held.close()
    assert got == b"", "B's waiting client was answered, not closed"
    assert START_TIMEOUT - 1 <= waited <= START_TIMEOUT + 10, waited
    assert answered and not errors, errors
    _expect(A="active")
    wait_for(lambda: _counted("agentkit_gpu_refusals_total", gpu="0", agent="B") == 1, "B's refusal counted")
    row = next(r for r in _health()["agents"] if r["name"] == "B")
    assert row["why"].startswith("no room on GPU 0 for B: needs 10.0 GiB, 6.0 GiB available; not stopped: A ("), row
    assert "open connection" in row["why"]
    journal = container.journal("agentkit-B.service")
    assert "no room on GPU 0 for B" in journal, journal
    status = container.run([test_fleet.AGENTKIT, "-m", str(container.manifest), "status", "--json", "--host", "lab"], check=False)
    b = next(a for a in json.loads(status.stdout)["agents"] if a["name"] == "B")
    assert "no room on GPU 0 for B" in json.dumps(b), b
    assert container.gpu.out_of_memory() == []
    print("\nGPU 0 over the scenario on systemd (GiB, from /metrics):")
    for step, row in figures:
        print(f"  {step:<28} " + "  ".join(f"{k} {v:5.1f}" for k, v in row.items()))
    assert all(r["total"] == 16 for _, r in figures) and figures[1][1]["available"] == 6


def test_a_burst_makes_one_admission_and_essential_and_other_gpus_are_kept_on_systemd(gpulab):
    container = gpulab
    # P and Q (GPU 2) woken at the same moment: one is admitted, the other waits while it
    # starts and serves, then has it stopped; both answer.
    answered, failed = at_once(lambda names=iter(("P", "Q")): _ask(next(names), timeout=30), 2)
    assert not failed and len(answered) == 2, failed
    wait_for(lambda: _counted("agentkit_gpu_evictions_total", gpu="2", victim="P")
             + _counted("agentkit_gpu_evictions_total", gpu="2", victim="Q") == 1, "one eviction on GPU 2")

    replies, errors = at_once(lambda: _ask("B", timeout=30), 20)
    assert not errors and len(replies) == 20, errors
    wait_for(lambda: _counted("agentkit_gpu_admissions_total", gpu="0", agent="B") == 1, "B's admission counted")

    _ask("A")  # a first connection to A: B is stopped for it, not anything on GPU 1
    _expect(A="active", B="dormant", E="active")
    _ask("C")  # 4 GiB (E, essential) + 10 of 16: fits
    _ask("D")  # needs C's room: C is stopped, E never, A (GPU 0) never
    _expect(D="active", C="dormant", E="active", A="active")
    wait_for(lambda: _counted("agentkit_gpu_evictions_total", gpu="1", victim="C") == 1, "C's eviction counted")
    page = _metrics()
    assert metric(page, "agentkit_gpu_evictions_total", gpu="1", victim="E") is None
    assert metric(page, "agentkit_gpu_evictions_total", gpu="0", victim="A") == 0
    assert metric(page, "agentkit_gpu_admissions_total", gpu="0", agent="B") == 1
    assert container.gpu.out_of_memory() == []


@pytest.mark.skipif(bool(browser_missing()) and not os.environ.get("CI"),
                    reason=f"status page in a browser: {browser_missing()}")
def test_the_status_page_shows_the_gpus_and_a_refused_start(gpulab, tmp_path, monkeypatch):
    assert not browser_missing(), browser_missing()  # under CI a missing browser fails
    _ask("A")
    held = socket.create_connection(("127.0.0.1", PORTS["A"]), timeout=5)  # A busy: B's start is refused
    try:
        with chromium(tmp_path, monkeypatch) as driver:
            driver.get(f"http://127.0.0.1:{STATUS}/")
            wait_for(lambda: driver.execute_script('return document.getElementById("gpus").textContent')
                     .startswith("GPU 0: 6.0 GiB available of 16.0 GiB, GPU 1: 12.0 GiB available"),
                     "the page's GPU line", timeout=30)
            with socket.create_connection(("127.0.0.1", PORTS["B"]), timeout=START_TIMEOUT + 20) as client:
                client.sendall(b"\x00")
                try:
                    client.recv(1)
                except ConnectionResetError:
                    pass

            def b_row():
                return driver.execute_script(
                    'const tr = document.querySelector(\'#agents tr[data-agent="B"]\');'
                    'return tr ? tr.children[8].textContent : "";')
            # Live, from the gpu-refuse event: no reload.
            wait_for(lambda: "no room on GPU 0 for B" in b_row(), "the refusal on B's row", timeout=30)
            log = driver.execute_script(
                'return [...document.querySelectorAll("#events > div")].map(d => d.textContent);')
            assert any("B  gpu-refuse  no room on GPU 0 for B" in line for line in log), log
    finally:
        held.close()
