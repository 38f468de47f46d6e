"""GPU admission under supervisord, as `agentkit up` runs it: the reference agent takes its
gpu_memory through the CUDA runtime at start-up (--gpu-allocate), from the stand-in
libcudart/libnvidia-ml (tests/router/fake_nvml.c), which fails an allocation that does not
fit and counts it. The activator admits, evicts and refuses; the status service shows it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
from helpers import at_once, http_get, metric, wait_for

from agentkit.client import zmq_request

from .harness import free_ports

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from router.nvml import FakeGpu, build_fake_nvml  # noqa: E402

AGENTKIT = str(Path(sys.executable).with_name("agentkit"))
GiB = 1 << 30
START_TIMEOUT = 3  # s: how long a start waits for room before it fails


@pytest.fixture(scope="module")
def gpulab(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpulab")
    gpu = FakeGpu(tmp / "nvml" / "state", build_fake_nvml(tmp / "nvml"))
    gpu.set(("GPU0", 16384, 16384), ("GPU1", 16384, 16384), ("GPU2", 16384, 16384))
    status, a, b, c, d, e, p, q, offset_base = free_ports(9)
    root = tmp / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text(textwrap.dedent(f"""\
        name: gpulab
        hosts:
          lab: {{address: 127.0.0.1, status: {{port: {status}}}, gpus: {{0: 16G, 1: 16G, 2: 16G}}}}
        private_port_offset: {offset_base - a}
        defaults:
          command: [agentkit-agent, --gpu-allocate]
          service_type: notify
          idle_stop: 10min
          start_timeout: {START_TIMEOUT}s
          restart: {{policy: on-failure, delay: 200ms, burst: 3, interval: 10s}}
        """))
    (root / "lab.yaml").write_text(textwrap.dedent(f"""\
        host: lab
        agents:
          A: {{port: {a}, gpu_memory: 10G}}
          B: {{port: {b}, gpu_memory: 10G}}
          C: {{port: {c}, gpu_memory: 10G, gpu: 1}}
          D: {{port: {d}, gpu_memory: 10G, gpu: 1}}
          E: {{port: {e}, gpu_memory: 4G, gpu: 1, essential: true}}
          P: {{port: {p}, gpu_memory: 10G, gpu: 2}}
          Q: {{port: {q}, gpu_memory: 10G, gpu: 2}}
        """))
    state = tmp / "state"
    env = {**os.environ, **gpu.environ()}

    def agentkit(*args, check=True):
        result = subprocess.run([AGENTKIT, "-m", str(root), *args], capture_output=True, text=True, timeout=180,
                                env=env)
        assert not check or result.returncode == 0, f"agentkit {' '.join(args)}:\n{result.stdout}\n{result.stderr}"
        return result

    agentkit("up", "--backend", "supervisord", "--host", "lab", "--state-dir", str(state))
    lab = {"gpu": gpu, "status": status, "state": state, "agentkit": agentkit,
           "ports": {"A": a, "B": b, "C": c, "D": d, "E": e, "P": p, "Q": q}}
    try:
        wait_for(lambda: _health(status).get("status") == "ok", "/health to say ok", timeout=30)
        yield lab
    finally:
        agentkit("down", "--backend", "supervisord", "--state-dir", str(state), "--timeout", "30", check=False)


def _health(port):
    try:
        code, body = http_get(port, "/health", timeout=10)
    except OSError:
        return {}
    return json.loads(body)


def _states(lab):
    return {row["name"]: row["state"] for row in _health(lab["status"])["agents"]}


def _expect(lab, **expected):
    """Wait until the status service shows these states (it learns of a change within 0.5 s)."""
    wait_for(lambda: all(_states(lab).get(k) == v for k, v in expected.items()),
             f"the status service to show {expected}", timeout=10)
    return _states(lab)


def _metrics(lab):
    code, body = http_get(lab["status"], "/metrics", timeout=10)
    assert code == 200
    return body.decode()


def _ask(lab, name, timeout=20):
    reply, _ = zmq_request(name, lab["ports"][name], "ping", timeout)
    assert reply.get("ok", True), reply
    return reply


def _gpu_figures(lab, index=0):
    page = _metrics(lab)
    return {key: metric(page, f"agentkit_gpu_memory_{key}_bytes", host="lab", gpu=str(index)) / GiB
            for key in ("total", "free", "claimed", "available")}


def _decided(lab, kind, name):
    """How many `kind` records for agent `name` the activator's ledger holds."""
    path = lab["state"] / "gpu-admissions.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return sum(1 for r in records if r["kind"] == kind and r["agent"] == name)


def _held(lab, index):
    """MiB the stand-in counts as allocated on GPU `index`, by live processes (what NVML reports)."""
    return sum(mib for gpu, pid, mib in lab["gpu"].allocations() if gpu == index and _alive(pid))


def _alive(pid):
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def test_waking_b_stops_idle_a_and_a_request_to_a_stops_b_again(lab_figures):
    lab, figures = lab_figures
    assert lab["gpu"].out_of_memory() == []
    expected = {("evictions", "victim", "A"): 1, ("evictions", "victim", "B"): 1,
                ("admissions", "agent", "A"): 2, ("admissions", "agent", "B"): 1}

    def counted():
        page = _metrics(lab)
        return {key: metric(page, f"agentkit_gpu_{key[0]}_total", host="lab", gpu="0", **{key[1]: key[2]})
                for key in expected}
    # The status service reads the ledger every 0.2 s: it may be between two records.
    wait_for(lambda: counted() == expected, "the admissions and evictions in /metrics", timeout=10)
    print("\nGPU 0 over the scenario (GiB, from /metrics):")
    for step, row in figures:
        print(f"  {step:<28} " + "  ".join(f"{k} {v:5.1f}" for k, v in row.items()))


@pytest.fixture(scope="module")
def lab_figures(gpulab):
    """The two-agent scenario, with the status service's GPU 0 figures after each step."""
    lab = gpulab
    figures = [("at rest", _gpu_figures(lab))]
    _ask(lab, "A")
    wait_for(lambda: _held(lab, 0) == 10240, "A's 10 GiB on GPU 0", timeout=10)
    _expect(lab, A="active")
    figures.append(("A woken", _gpu_figures(lab)))
    _ask(lab, "B")  # A is idle: stopped for B
    _expect(lab, A="dormant", B="active")
    assert _held(lab, 0) == 10240
    figures.append(("B woken, A stopped for it", _gpu_figures(lab)))
    _ask(lab, "A")  # and back
    _expect(lab, A="active", B="dormant")
    figures.append(("A woken, B stopped for it", _gpu_figures(lab)))
    assert all(row["total"] == 16 for _, row in figures)
    assert figures[1][1]["free"] == 6 and figures[1][1]["available"] == 6
    return lab, figures


def test_a_busy_agent_is_not_stopped_and_the_waiting_start_fails_with_its_reason(lab_figures):
    lab, _ = lab_figures
    assert _states(lab)["A"] == "active"
    held = socket.create_connection(("127.0.0.1", lab["ports"]["A"]), timeout=5)  # A: an open connection
    answered, stop = [], threading.Event()

    def keep_asking():
        while not stop.is_set() and len(answered) < 200:
            answered.append(_ask(lab, "A", timeout=10))

    asker = threading.Thread(target=keep_asking, daemon=True)
    asker.start()
    try:
        wait_for(lambda: answered, "A's first answer", timeout=10)
        began = time.monotonic()
        with socket.create_connection(("127.0.0.1", lab["ports"]["B"]), timeout=START_TIMEOUT + 10) as client:
            client.sendall(b"\x00")  # waits in the activator for B's start
            try:
                got = client.recv(1)
            except ConnectionResetError:
                got = b""
        waited = time.monotonic() - began
        assert got == b"", "B's waiting client was answered, not closed"
        assert START_TIMEOUT - 0.5 <= waited <= START_TIMEOUT + 5, waited
    finally:
        stop.set()
        asker.join(timeout=30)
        held.close()
    assert answered and all("agent" in reply or reply for reply in answered)
    _expect(lab, A="active")
    wait_for(lambda: next(r for r in _health(lab["status"])["agents"] if r["name"] == "B")["why"],
             "B's reason on /health", timeout=10)
    row = next(r for r in _health(lab["status"])["agents"] if r["name"] == "B")
    assert row["why"].startswith("no room on GPU 0 for B: needs 10.0 GiB, 6.0 GiB available; not stopped: A (")
    assert "open connection" in row["why"] and "waited" in row["why"]
    wait_for(lambda: metric(_metrics(lab), "agentkit_gpu_refusals_total", host="lab", gpu="0", agent="B") == 1,
             "B's refusal in /metrics", timeout=10)
    status = lab["agentkit"]("status", "--backend", "supervisord", "--host", "lab", "--state-dir", str(lab["state"]),
                             "--json", check=False)
    b = next(a for a in json.loads(status.stdout)["agents"] if a["name"] == "B")
    assert "no room on GPU 0 for B" in json.dumps(b), b
    log = (lab["state"] / "logs" / "agentkit-activator.log").read_text()
    assert "B: start failed" in log and "no room on GPU 0 for B" in log
    assert lab["gpu"].out_of_memory() == []


def test_a_burst_of_first_connections_makes_one_admission(lab_figures):
    lab, _ = lab_figures
    before = _decided(lab, "admit", "B")
    assert _states(lab)["B"] in ("dormant", "failed")
    replies, errors = at_once(lambda: _ask(lab, "B", timeout=30), 20)
    assert not errors and len(replies) == 20
    assert _decided(lab, "admit", "B") == before + 1  # the activator's own record: one admission
    wait_for(lambda: metric(_metrics(lab), "agentkit_gpu_admissions_total", host="lab", gpu="0", agent="B")
             == before + 1, "the status service's count", timeout=10)
    _expect(lab, A="dormant", B="active")  # A stopped for B, once
    assert lab["gpu"].out_of_memory() == []


def test_an_essential_agent_and_other_gpus_are_never_stopped_for_room(lab_figures):
    lab, _ = lab_figures
    assert _states(lab)["E"] == "active" and _held(lab, 1) == 4096
    _ask(lab, "C")  # 4 + 10 of 16 GiB: fits
    _ask(lab, "D")  # needs C's room, not E's (essential), not B's (GPU 0)
    _expect(lab, D="active", C="dormant", E="active", B="active")
    wait_for(lambda: metric(_metrics(lab), "agentkit_gpu_evictions_total", host="lab", gpu="1", victim="C") == 1,
             "C's eviction in /metrics", timeout=10)
    page = _metrics(lab)
    assert metric(page, "agentkit_gpu_evictions_total", host="lab", gpu="1", victim="E") is None
    assert metric(page, "agentkit_gpu_evictions_total", host="lab", gpu="0", victim="B") == 1  # from the first test
    assert _held(lab, 1) == 4096 + 10240
    assert lab["gpu"].out_of_memory() == []



def test_two_agents_woken_at_once_on_one_gpu_never_share_its_memory(gpulab):
    """P and Q (GPU 2, 10 of 16 GiB each) both dormant, a first connection to each at the same
    moment: one is admitted; the other waits while it starts and serves, then has it stopped.
    Both answer, and no allocation fails."""
    lab = gpulab
    answered, failed = at_once(lambda name=iter(("P", "Q")): _ask(lab, next(name), timeout=30), 2)
    assert not failed and len(answered) == 2, failed
    assert _decided(lab, "evict", "P") + _decided(lab, "evict", "Q") == 1
    assert _decided(lab, "admit", "P") == _decided(lab, "admit", "Q") == 1
    assert lab["gpu"].out_of_memory() == []
