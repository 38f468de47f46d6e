"""GPU memory per agent: NVML's per-process figures (pynvml, NVIDIA's own bindings), summed by
the agent each process belongs to (the source says which: its cgroup under systemd, its
parentage under supervisord). Without NVML (no GPU, no driver) the figures are unknown and
/health says why; nothing is estimated."""

from __future__ import annotations

import logging

from .. import units

log = logging.getLogger(units.STATUS_PROGRAM)


class GpuProcesses:
    def __init__(self) -> None:
        self.nvml = None
        self.reason = ""
        try:
            import pynvml

            pynvml.nvmlInit()
            self.nvml = pynvml
        except Exception as exc:  # noqa: BLE001 - ImportError, NVMLError (no driver, no library)
            self.reason = f"NVML unavailable: {exc}"

    def used(self) -> dict[int, int]:
        """pid -> bytes of GPU memory, over every device; {} when NVML cannot say."""
        if self.nvml is None:
            return {}
        nvml, out = self.nvml, {}
        try:
            for index in range(nvml.nvmlDeviceGetCount()):
                for process in nvml.nvmlDeviceGetComputeRunningProcesses(nvml.nvmlDeviceGetHandleByIndex(index)):
                    if process.usedGpuMemory is not None:
                        out[process.pid] = out.get(process.pid, 0) + process.usedGpuMemory
            self.reason = ""
        except nvml.NVMLError as exc:
            if not self.reason:
                log.warning("NVML: %s", exc)
            self.reason = f"NVML: {exc}"
            return {}
        return out

    def state(self) -> str:
        return self.reason or "NVML per-process figures"


def attribute(board, gpu: GpuProcesses, owner) -> None:
    """Each row's gpu_memory: the sum over the processes `owner(pid)` says are the agent's
    (None for every agent when NVML cannot say; 0 for a running agent that uses none)."""
    used = gpu.used()
    known = gpu.nvml is not None and not gpu.reason
    for row in board.rows.values():
        row.gpu_memory = 0 if known and row.seen.state in ("active", "starting", "stopping") else None
    for pid, amount in used.items():
        name = owner(pid)
        row = board.rows.get(name) if name else None
        if row is not None:
            row.gpu_memory = (row.gpu_memory or 0) + amount
    board.gpu = gpu.state()
