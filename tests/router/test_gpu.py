"""The router's GPU sampler (agentkit.router.gpu) against a stand-in NVML.

The real pynvml loads libnvidia-ml.so.1 once per process and the dynamic
loader reads LD_LIBRARY_PATH at process start, so each test runs the sampler
in a subprocess (DRIVER below) with the environment it needs, and talks to it
over stdin/stdout: one command a line, one JSON answer a line.
"""

import json
import os
import select
import subprocess
import sys
import time

import pytest

from agentkit.router.gpu import GpuSampler
from .conftest import fail_or_skip
from .nvml import FakeGpu, build_fake_nvml

MIB = 1024 * 1024
INTERVAL = 0.05
STALE_AFTER = 0.4

DRIVER = r"""
import json, sys, threading, time
from dataclasses import asdict
from agentkit.router.gpu import GpuSampler

sampler = GpuSampler(interval=float(sys.argv[1]), stale_after=float(sys.argv[2]))

def look():
    now = time.monotonic()
    snapshot = sampler.latest()
    return {
        "available": sampler.available,
        "reason": sampler.reason,
        "driver_version": sampler.driver_version,
        "memory_v2": sampler._memory_v2,
        "latest": None if snapshot is None else asdict(snapshot),
        "free": [sampler.free_bytes(i, now) for i in (0, 1, 2, -1)],
        "status": sampler.status(now),
    }

for line in sys.stdin:
    command = line.strip()
    if command == "start":
        sampler.start()
        answer = look()
    elif command == "look":
        answer = look()
    elif command == "stop":
        sampler.stop()
        sampler.stop()
        answer = look()
        answer["threads"] = [t.name for t in threading.enumerate()
                             if t is not threading.main_thread()]
    else:
        answer = {"error": "unknown command " + repr(command)}
    print(json.dumps(answer), flush=True)
"""


class Driver:
    """A subprocess running one GpuSampler, asked for its state over a pipe."""

    def __init__(self, env: dict[str, str]) -> None:
        self.process = subprocess.Popen(
            [sys.executable, "-c", DRIVER, str(INTERVAL), str(STALE_AFTER)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True, env=env)

    def ask(self, command: str, timeout: float = 10.0) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        ready, _, _ = select.select([self.process.stdout], [], [], timeout)
        if not ready:
            pytest.fail(f"the sampler driver did not answer {command!r} within {timeout} s")
        line = self.process.stdout.readline()
        if not line:
            self.process.wait(timeout=5)
            pytest.fail(f"the sampler driver exited ({self.process.returncode}):\n"
                        f"{self.process.stderr.read()}")
        return json.loads(line)

    def wait_for(self, predicate, what: str, timeout: float = 5.0, step: float = 0.02) -> dict:
        """Ask "look" until predicate(answer) holds; fail after `timeout` s."""
        deadline = time.monotonic() + timeout
        answer = None
        for _ in range(int(timeout / step) + 1):
            answer = self.ask("look")
            if predicate(answer):
                return answer
            if time.monotonic() >= deadline:
                break
            time.sleep(step)   # pace the polling: the sampler works on its own clock
        pytest.fail(f"timed out after {timeout} s waiting for {what}; last answer: {answer}")

    def close(self) -> None:
        if self.process.poll() is None:
            self.process.stdin.close()
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(timeout=5)
        self.process.stdout.close()
        self.process.stderr.close()


@pytest.fixture
def start_driver():
    drivers = []

    def start(env: dict[str, str]) -> Driver:
        driver = Driver(env)
        drivers.append(driver)
        return driver

    yield start
    for driver in drivers:
        driver.close()


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("LD_LIBRARY_PATH", "AGENTKIT_FAKE_NVML_STATE")}
    env.update(extra)
    return env


def _real_nvml_installed() -> bool:
    try:
        listing = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True,
                                 timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        listing = ""
    return "libnvidia-ml.so" in listing or any(
        os.path.exists(os.path.join(d, "libnvidia-ml.so.1"))
        for d in ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/lib"))


def test_never_started_sampler_is_unavailable_and_stops_safely():
    sampler = GpuSampler()
    assert sampler.available is False
    assert sampler.latest() is None
    assert sampler.free_bytes(0, time.monotonic()) is None
    sampler.stop()
    sampler.stop()
    status = sampler.status(time.monotonic())
    assert status == {"nvml": False, "reason": "GPU sampler not started", "devices": [],
                      "age_seconds": None, "stale": True}


@pytest.mark.parametrize("interval, stale_after", [(0, 1), (-1, 1), (0.1, 0), (float("nan"), 1)])
def test_rejects_nonsense_timing(interval, stale_after):
    with pytest.raises(ValueError):
        GpuSampler(interval=interval, stale_after=stale_after)


def test_no_library_means_unavailable_with_a_clear_reason(tmp_path, start_driver):
    if _real_nvml_installed():
        pytest.skip("this host has a real libnvidia-ml.so.1; the missing-library case cannot be made")
    empty = tmp_path / "no-nvml-here"
    empty.mkdir()
    driver = start_driver(_env(LD_LIBRARY_PATH=str(empty)))
    started = driver.ask("start")
    reason = "NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this host)"
    assert started["available"] is False
    assert started["reason"] == reason
    assert started["latest"] is None
    assert started["free"] == [None, None, None, None]
    assert started["status"] == {"nvml": False, "reason": reason, "devices": [],
                                 "age_seconds": None, "stale": True}
    stopped = driver.ask("stop")
    assert stopped["threads"] == []
    assert stopped["reason"] == reason


def test_missing_state_file_is_driver_not_loaded(fake_gpu, start_driver):
    fake_gpu.remove()
    driver = start_driver(_env(**fake_gpu.environ()))
    started = driver.ask("start")
    assert started["available"] is False
    assert started["reason"] == "NVML initialisation failed: Driver Not Loaded (NVML error 9)"
    assert started["free"] == [None, None, None, None]
    assert driver.ask("stop")["threads"] == []


def test_two_devices_in_bytes_with_names(fake_gpu, start_driver):
    fake_gpu.set(("NVIDIA_A100-SXM4-80GB", 81920, 40960), ("NVIDIA_L4", 23034, 1000))
    driver = start_driver(_env(**fake_gpu.environ()))
    started = driver.ask("start")
    assert started["available"] is True
    assert started["reason"] is None
    assert started["driver_version"] == "999.99.99-agentkit-fake"
    assert started["memory_v2"] is True
    # start() takes the first sample itself.
    latest = started["latest"]
    assert latest["free"] == [40960 * MIB, 1000 * MIB]
    assert latest["total"] == [81920 * MIB, 23034 * MIB]
    assert latest["names"] == ["NVIDIA_A100-SXM4-80GB", "NVIDIA_L4"]
    assert started["free"] == [40960 * MIB, 1000 * MIB, None, None]
    status = started["status"]
    assert status["nvml"] is True and status["reason"] is None and status["stale"] is False
    assert 0 <= status["age_seconds"] < STALE_AFTER
    assert status["devices"] == [
        {"index": 0, "name": "NVIDIA_A100-SXM4-80GB", "free_bytes": 40960 * MIB,
         "total_bytes": 81920 * MIB},
        {"index": 1, "name": "NVIDIA_L4", "free_bytes": 1000 * MIB, "total_bytes": 23034 * MIB},
    ]
    # The thread keeps the snapshot fresh.
    later = driver.wait_for(lambda a: a["latest"]["taken"] > latest["taken"], "a second sample")
    assert later["free"][:2] == [40960 * MIB, 1000 * MIB]
    stopped = driver.ask("stop")
    assert stopped["threads"] == []


def test_free_memory_follows_the_state_file(fake_gpu, start_driver):
    fake_gpu.set(("gpu0", 24576, 20000), ("gpu1", 24576, 24576))
    driver = start_driver(_env(**fake_gpu.environ()))
    assert driver.ask("start")["free"][:2] == [20000 * MIB, 24576 * MIB]
    fake_gpu.set(("gpu0", 24576, 512), ("gpu1", 24576, 12288))
    answer = driver.wait_for(lambda a: a["free"][:2] == [512 * MIB, 12288 * MIB],
                             "the new free memory")
    assert answer["reason"] is None
    assert answer["status"]["devices"][0]["free_bytes"] == 512 * MIB
    assert driver.ask("stop")["threads"] == []


def test_sampling_error_keeps_snapshot_goes_stale_then_recovers(fake_gpu, start_driver):
    fake_gpu.set(("gpu0", 16384, 8192), ("gpu1", 16384, 4096))
    driver = start_driver(_env(**fake_gpu.environ()))
    good = driver.ask("start")["latest"]

    fake_gpu.fail(15)
    failing = driver.wait_for(lambda a: a["reason"] is not None, "the sampling error")
    assert failing["reason"] == "NVML sampling failed: GPU is lost (NVML error 15)"
    assert failing["available"] is True
    assert failing["status"]["reason"] == failing["reason"]

    stale = driver.wait_for(lambda a: a["free"][0] is None, "the snapshot to go stale")
    assert stale["latest"]["free"] == good["free"]         # kept, not mutated
    assert stale["latest"]["taken"] <= failing["latest"]["taken"] + 1e-9
    assert stale["free"] == [None, None, None, None]
    assert stale["status"]["stale"] is True
    assert stale["status"]["age_seconds"] > STALE_AFTER
    assert stale["status"]["devices"][0]["free_bytes"] == 8192 * MIB
    assert stale["reason"] == "NVML sampling failed: GPU is lost (NVML error 15)"

    fake_gpu.set(("gpu0", 16384, 100), ("gpu1", 16384, 200))
    recovered = driver.wait_for(lambda a: a["free"][:2] == [100 * MIB, 200 * MIB], "recovery")
    assert recovered["reason"] is None
    assert recovered["status"]["stale"] is False
    assert driver.ask("stop")["threads"] == []


def test_nvml_error_without_a_pynvml_name_uses_nvml_error_string(fake_gpu, start_driver):
    fake_gpu.set(("gpu0", 1024, 1024))
    driver = start_driver(_env(**fake_gpu.environ()))
    driver.ask("start")
    fake_gpu.fail(19)   # NVML_ERROR_IN_USE: pynvml asks the library's nvmlErrorString
    answer = driver.wait_for(lambda a: a["reason"] is not None, "the sampling error")
    assert answer["reason"] == "NVML sampling failed: In use by another client (NVML error 19)"
    assert driver.ask("stop")["threads"] == []


def test_device_count_change_is_picked_up_after_an_error(fake_gpu, start_driver):
    fake_gpu.set(("gpu0", 1024, 1000), ("gpu1", 1024, 900))
    driver = start_driver(_env(**fake_gpu.environ()))
    driver.ask("start")
    fake_gpu.fail(15)
    driver.wait_for(lambda a: a["reason"] is not None, "the sampling error")
    fake_gpu.set(("gpu0", 1024, 800))
    answer = driver.wait_for(lambda a: a["reason"] is None and a["latest"]["free"] == [800 * MIB],
                             "one device")
    assert answer["latest"]["names"] == ["gpu0"]
    assert answer["free"] == [800 * MIB, None, None, None]
    assert driver.ask("stop")["threads"] == []


def test_falls_back_to_memory_info_v1_on_old_drivers(tmp_path, start_driver):
    try:
        lib_dir = build_fake_nvml(tmp_path / "old-driver", without_memory_info_v2=True)
    except RuntimeError as error:
        fail_or_skip(str(error))
    gpu = FakeGpu(tmp_path / "state", lib_dir)
    gpu.set(("old", 8192, 6000))
    driver = start_driver(_env(**gpu.environ()))
    started = driver.ask("start")
    assert started["reason"] is None
    assert started["memory_v2"] is False
    assert started["free"] == [6000 * MIB, None, None, None]
    assert started["latest"]["total"] == [8192 * MIB]
    assert driver.ask("stop")["threads"] == []
