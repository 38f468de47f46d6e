"""What the GPUs say, through NVIDIA's pynvml: each device's total and free memory, and each
process's use. A Sampler asks NVML at most once per `interval` and hands out the last sample
in between, so a burst of admissions costs one query; `fresh=True` (after a stop, waiting for
its memory to come back) asks now, and its callers wait `due()` first.

Without NVML (no GPU, no driver, no pynvml) `reason` says why and every sample is empty.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

log = logging.getLogger("agentkit.gpu")

INTERVAL = 0.1  # s: the most often NVML is asked


@dataclass(frozen=True)
class Sample:
    taken: float                                      # time.monotonic()
    devices: dict[int, tuple[int, int]] = field(default_factory=dict)  # index -> (total, free) bytes
    processes: dict[int, dict[int, int]] = field(default_factory=dict)  # index -> {pid: bytes}
    ok: bool = False

    def free(self, index: int) -> int | None:
        device = self.devices.get(index)
        return device[1] if self.ok and device else None

    def used_by(self, index: int, pids) -> int:
        on = self.processes.get(index, {})
        return sum(on.get(pid, 0) for pid in pids)


class Sampler:
    def __init__(self, interval: float = INTERVAL) -> None:
        self.interval = interval
        self.queries = 0          # how often NVML was read: the benchmark counts them
        self.reason = ""
        self._nvml = None
        self._last = Sample(0.0)
        self._lock = threading.Lock()
        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError (no driver, no library)
            self.reason = f"NVML unavailable: {exc}"

    @property
    def available(self) -> bool:
        return self._nvml is not None and not self.reason

    def source(self) -> str:
        return "NVML" if self.available else f"by the manifest's figures; {self.reason or 'NVML unavailable'}"

    def sample(self, fresh: bool = False) -> Sample:
        """The last sample if younger than `interval`, else a new one; `fresh`: a new one now
        (the caller waits `due()` first, so NVML is still asked at most once per interval)."""
        with self._lock:
            if fresh or time.monotonic() - self._last.taken >= self.interval:
                self._last = self._read()
            return self._last

    def due(self) -> float:
        """Seconds until a new sample may be taken."""
        return max(0.0, self.interval - (time.monotonic() - self._last.taken))

    def _read(self) -> Sample:
        now = time.monotonic()
        nvml = self._nvml
        if nvml is None:
            return Sample(now)
        self.queries += 1
        devices: dict[int, tuple[int, int]] = {}
        processes: dict[int, dict[int, int]] = {}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                handle = nvml.nvmlDeviceGetHandleByIndex(index)
                memory = nvml.nvmlDeviceGetMemoryInfo(handle)
                devices[index] = (memory.total, memory.free)
                on = processes[index] = {}
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if process.usedGpuMemory is not None:
                        on[process.pid] = on.get(process.pid, 0) + process.usedGpuMemory
        except nvml.NVMLError as exc:
            if self.reason != f"NVML: {exc}":
                log.warning("NVML: %s", exc)
            self.reason = f"NVML: {exc}"
            return Sample(now)
        self.reason = ""
        return Sample(now, devices, processes, True)
