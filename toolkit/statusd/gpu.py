"""GPU memory on the board: per agent (NVML's per-process figures, summed by the agent each
process belongs to: its cgroup under systemd, its parentage under supervisord), per GPU (total,
free, claimed and available, as admission counts them: agentkit.gpu.admission.room), and what
admission decided (its ledger, followed: events, counts, each refusal's reason).

Without NVML the per-agent figures are unknown and /health says why; the per-GPU ones are the
manifest's bookkeeping, and say so.
"""

from __future__ import annotations

import collections
import logging
from dataclasses import replace

from .. import units
from ..gpu import admission, ledger
from ..gpu.nvml import Sampler

log = logging.getLogger(units.STATUS_PROGRAM)

# Seconds an admission waited (0 when there was room): the buckets of its histogram.
WAIT_BUCKETS = (0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
KINDS = {"admit": "gpu-admit", "evict": "gpu-evict", "refuse": "gpu-refuse"}  # ledger kind -> event kind
RUNNING = ("active", "starting", "stopping")


class GpuView:
    def __init__(self, table=None, ledger_path: str | None = None, sampler: Sampler | None = None) -> None:
        self.table = table
        self.sampler = sampler or Sampler()
        self.follower = ledger.Follower(ledger_path) if ledger_path and table is not None else None
        self.admissions: collections.Counter = collections.Counter()  # (gpu, agent) -> admitted
        self.refusals: collections.Counter = collections.Counter()    # (gpu, agent)
        self.evictions: collections.Counter = collections.Counter()   # (gpu, victim)
        self.waits: dict[int, list] = {}                              # gpu -> [buckets..., count, sum]
        self.rooms: list[admission.Room] = []
        for tenant in table.tenants if table is not None else ():  # every series from the first scrape
            self.admissions[(tenant.gpu, tenant.name)] = self.refusals[(tenant.gpu, tenant.name)] = 0
            if tenant.evictable:
                self.evictions[(tenant.gpu, tenant.name)] = 0
        for index, _ in table.gpus if table is not None else ():
            self.waits[index] = [0] * len(WAIT_BUCKETS) + [0, 0.0]

    # -- per agent, per GPU: at each sample

    def attribute(self, board, owner) -> None:
        """Each row's gpu_memory, and the GPUs' rooms. `owner(pid)`: the agent a process is of."""
        sample = self.sampler.sample()
        known = self.sampler.available
        for row in board.rows.values():
            row.gpu_memory = 0 if known and row.seen.state in RUNNING else None
        for on in sample.processes.values():
            for pid, amount in on.items():
                name = owner(pid)
                row = board.rows.get(name) if name else None
                if row is not None:
                    row.gpu_memory = (row.gpu_memory or 0) + amount
        board.gpu = "NVML per-process figures" if known else (self.sampler.reason or "NVML unavailable")
        if self.table is None:
            return
        running = []
        for tenant in self.table.tenants:
            row = board.rows.get(tenant.name)
            # Under systemd, start-pre is an agent that waits for admission: nothing of its yet.
            if row is not None and row.seen.state in RUNNING and row.seen.sub_state != "start-pre":
                running.append(admission.Running(tenant, row.gpu_memory or 0))
        self.rooms = []
        for index, _ in self.table.gpus:
            where = admission.room(self.table, index, sample.free(index), running, self.sampler.source())
            if where.total is None and index in sample.devices:  # the manifest says auto: NVML's total
                where = replace(where, total=sample.devices[index][0])
            self.rooms.append(where)
        board.gpus = [_room_json(room) for room in self.rooms]

    # -- what admission decided: whenever the ledger grows

    def follow(self, board) -> None:
        if self.follower is None:
            return
        for record in self.follower.read():
            kind = KINDS.get(record.get("kind"))
            name = record.get("agent")
            if kind is None or not isinstance(name, str):
                continue
            index = record.get("gpu", 0)
            if kind == "gpu-admit":
                self.admissions[(index, name)] += 1
                self._wait(index, float(record.get("waited_s") or 0))
            elif kind == "gpu-refuse":
                self.refusals[(index, name)] += 1
                self._wait(index, float(record.get("waited_s") or 0))
            else:
                self.evictions[(index, name)] += 1
            row = board.rows.get(name)
            if row is not None and kind == "gpu-refuse":
                row.why = record.get("reason") or ""
            elif row is not None and kind == "gpu-admit":
                row.why = ""
            extra = {k: record[k] for k in ("gpu", "need", "waited_s", "victims", "for", "stop_s", "reason", "available",
                                            "claimed") if record.get(k) is not None}
            event = {"time": record.get("t"), "host": board.host, "agent": name, "kind": kind,
                     "detail": _said(kind, record), **extra}
            if row is not None:
                event["state"] = row.seen.state
            board.version += 1
            board.publish(event)

    def _wait(self, index: int, seconds: float) -> None:
        counts = self.waits.setdefault(index, [0] * len(WAIT_BUCKETS) + [0, 0.0])  # a GPU not in the table
        for i, bound in enumerate(WAIT_BUCKETS):
            if seconds <= bound:
                counts[i] += 1
                break
        counts[-2] += 1
        counts[-1] += seconds


def _room_json(room) -> dict:
    return {"index": room.index, "total": room.total, "free": room.free, "claimed": room.claimed,
            "reserve": room.reserve, "available": room.available, "source": room.source}


def _said(kind: str, record: dict) -> str:
    """An admission event in a few words, for the page's event log."""
    where = f"GPU {record.get('gpu', 0)}"
    if kind == "gpu-admit":
        stopped = record.get("victims") or []
        return f"admitted on {where}" + (f", stopped {', '.join(stopped)}" if stopped else "")
    if kind == "gpu-evict":
        return f"stopped to make room on {where} for {record.get('for')}"
    return str(record.get("reason") or f"refused on {where}")
