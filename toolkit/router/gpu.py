"""Free GPU memory, sampled through NVML (NVIDIA's pynvml, package nvidia-ml-py).

A GpuSampler initialises NVML once, then a daemon thread reads every device's
memory every `interval` seconds into a GpuSnapshot. The snapshot is immutable
and replaced whole (one attribute assignment, atomic under the GIL), so the
router's hot path reads it without locks: free_bytes() is a handful of
attribute loads and comparisons.

A host without the NVIDIA driver is a normal case, not a crash: start() leaves
`available` False and says why in `reason`. A sampling error (GPU lost, driver
reset...) keeps the previous snapshot, which then goes stale after
`stale_after` seconds, so free_bytes() answers None rather than old numbers.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import pynvml

from ..values import seconds
from .settings import default

__all__ = ["GpuSampler", "GpuSnapshot"]

LIBRARY = "libnvidia-ml.so.1"


@dataclass(frozen=True, slots=True)
class GpuSnapshot:
    taken: float               # time.monotonic() when the read began
    free: tuple[int, ...]      # free bytes per device, index = NVML device index
    total: tuple[int, ...]     # total bytes per device
    names: tuple[str, ...]


def _nvml_reason(prefix: str, error: BaseException) -> str:
    """One line naming an NVML error: its text and, for NVMLError, its code."""
    if isinstance(error, pynvml.NVMLError):
        # str() of a code pynvml does not know calls nvmlErrorString, which
        # raises if the library is gone; pynvml falls back to the bare code.
        return f"{prefix}: {error} (NVML error {error.value})"
    return f"{prefix}: {type(error).__name__}: {error}"


class GpuSampler:
    """Samples free memory of every NVIDIA GPU in a daemon thread."""

    def __init__(self, interval: float = seconds(default("gpu.interval")),
                 stale_after: float = seconds(default("gpu.stale_after"))) -> None:
        if not interval > 0:
            raise ValueError(f"interval must be positive, not {interval!r}")
        if not stale_after > 0:
            raise ValueError(f"stale_after must be positive, not {stale_after!r}")
        self.interval = float(interval)
        self.stale_after = float(stale_after)
        self.available: bool = False
        self.reason: str | None = "GPU sampler not started"
        self.driver_version: str | None = None
        # (snapshot, taken + stale_after), replaced whole: free_bytes() reads
        # it once, so the snapshot and its deadline always belong together,
        # and the deadline is computed once per sample, not once per call.
        self._current: tuple[GpuSnapshot, float] | None = None
        self._handles: list | None = None      # device handles, sampler thread only
        self._names: tuple[str, ...] = ()
        self._memory_v2 = True                 # nvmlDeviceGetMemoryInfo_v2 until it fails
        self._initialised = False
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()     # a new one for each start()
        self._control = threading.Lock()       # start() and stop(), never the hot path

    # -- lifecycle ---------------------------------------------------------

    def start(self) -> None:
        """Initialise NVML, take a first sample, start the sampling thread.

        Never raises for NVML problems: `available` and `reason` say how it
        went. Calling start() again while running does nothing.
        """
        with self._control:
            if self._thread is not None:
                return
            self._current = None
            try:
                pynvml.nvmlInit()
            except pynvml.NVMLError_LibraryNotFound:
                self.available = False
                self.reason = f"NVML library {LIBRARY} not found (no NVIDIA driver on this host)"
                return
            except pynvml.NVMLError as error:
                self.available = False
                self.reason = _nvml_reason("NVML initialisation failed", error)
                return
            self._initialised = True
            try:
                self.driver_version = pynvml.nvmlSystemGetDriverVersion()
            except pynvml.NVMLError:
                self.driver_version = None
            self.available = True
            self.reason = None
            self._handles = None
            # The first sample here, so that the router has numbers as soon
            # as start() returns; the thread takes the rest.
            self._sample()
            self._stopping = threading.Event()
            self._thread = threading.Thread(target=self._run, args=(self._stopping,),
                                            name="agentkit-gpu-sampler", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the sampling thread and shut NVML down. Safe to call at any time, repeatedly."""
        with self._control:
            thread = self._thread
            self._stopping.set()
            if thread is not None:
                # An NVML call can block in the driver; never wait forever.
                thread.join(timeout=max(2.0, 4 * self.interval))
                if thread.is_alive():
                    # Shutting NVML down under a call in progress is asking for
                    # trouble: leave it initialised and the thread recorded, so
                    # that start() does not start a second one and another
                    # stop() waits again.
                    self.reason = "GPU sampler thread did not stop (NVML call blocked)"
                    return
                self._thread = None
            if self._initialised:
                self._initialised = False
                self._handles = None
                try:
                    pynvml.nvmlShutdown()
                except pynvml.NVMLError:
                    pass

    # -- sampling (sampler thread) -------------------------------------------

    def _run(self, stopping: threading.Event) -> None:
        while not stopping.wait(self.interval):
            self._sample()

    def _devices(self) -> list:
        if self._handles is None:
            count = pynvml.nvmlDeviceGetCount()
            handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._names = tuple(pynvml.nvmlDeviceGetName(h) for h in handles)
            self._handles = handles
        return self._handles

    def _memory(self, handle):
        if self._memory_v2:
            try:
                return pynvml.nvmlDeviceGetMemoryInfo(handle, version=pynvml.nvmlMemory_v2)
            except (pynvml.NVMLError_FunctionNotFound, pynvml.NVMLError_ArgumentVersionMismatch):
                # Drivers before 510 have only the first version.
                self._memory_v2 = False
        return pynvml.nvmlDeviceGetMemoryInfo(handle)

    def _sample(self) -> None:
        taken = time.monotonic()
        try:
            handles = self._devices()
            memory = [self._memory(h) for h in handles]
        except Exception as error:  # NVMLError above all; anything else must not kill the thread
            # Enumerate again next time: after a GPU is lost or reset the
            # handles and even the device count may have changed.
            self._handles = None
            self.reason = _nvml_reason("NVML sampling failed", error)
            return
        snapshot = GpuSnapshot(
            taken=taken,
            free=tuple(int(m.free) for m in memory),
            total=tuple(int(m.total) for m in memory),
            names=self._names,
        )
        self._current = (snapshot, taken + self.stale_after)
        self.reason = None

    # -- readers (any thread) ----------------------------------------------------

    def latest(self) -> GpuSnapshot | None:
        """The last good snapshot, however old; None before the first one."""
        current = self._current
        return None if current is None else current[0]

    def free_bytes(self, device: int, now: float) -> int | None:
        """Free bytes of `device` at monotonic time `now`, None if not known and fresh.

        The router's hot path: no locks, no I/O, no allocation.
        """
        current = self._current
        if current is None or now > current[1] or not self.available:
            return None
        free = current[0].free
        if device < 0 or device >= len(free):
            return None
        return free[device]

    def status(self, now: float) -> dict:
        """For /health. `stale` is True when free_bytes() would answer None for
        want of a fresh snapshot (none yet, or older than stale_after)."""
        current = self._current
        if current is None:
            return {"nvml": self.available, "reason": self.reason, "devices": [],
                    "age_seconds": None, "stale": True}
        snapshot, fresh_until = current
        return {
            "nvml": self.available,
            "reason": self.reason,
            "devices": [
                {"index": i, "name": name, "free_bytes": free, "total_bytes": total}
                for i, (name, free, total)
                in enumerate(zip(snapshot.names, snapshot.free, snapshot.total))
            ],
            "age_seconds": max(0.0, now - snapshot.taken),
            "stale": now > fresh_until,
        }
