"""GPU admission under supervisord: before the activator starts an optional GPU agent, it
waits for room on the agent's GPU, stopping idle optional agents there if that makes it
(agentkit.gpu.admission decides; this file gathers what it decides from and does it).

What runs is supervisord's process list (essential GPU agents included); who is busy, starting
or last used is the activator's own knowledge of each agent; what each uses is NVML's figure
for the program's process and its children.
"""

from __future__ import annotations

import asyncio
import logging
import os

import psutil

from agentkit.gpu import admission, ledger, room
from agentkit.gpu.nvml import Sampler

from . import PROG
from .agent import StartFailed
from .rpc import UP_STATES

log = logging.getLogger(PROG)


class Admission:
    def __init__(self, activator, table, ledger_path, sampler=None):
        self.activator = activator
        self.table = table
        self.sampler = sampler or Sampler()
        self.locks = {index: asyncio.Lock() for index, _ in table.gpus}  # one decision per GPU at a time
        self.claimed = set()  # admitted, not yet started or failed: held as their whole need
        self.record = room.record_to(ledger_path, log)

    def wants(self, agent):
        return self.table.tenant(agent.name) is not None

    async def admit(self, agent, deadline):
        """Return once `agent` fits on its GPU (idle agents stopped for it if need be); StartFailed
        with the reason when it still does not by loop time `deadline`."""
        tenant = self.table.tenant(agent.name)
        loop = asyncio.get_running_loop()
        began = loop.time()
        lock = self.locks[tenant.gpu]
        try:
            await asyncio.wait_for(lock.acquire(), max(0.0, deadline - began))
        except asyncio.TimeoutError:
            reason = (f"another admission on GPU {tenant.gpu} took all of {agent.name}'s start_timeout "
                      f"({deadline - began:g} s)")
            self.record("refuse", tenant, round(loop.time() - began, 6), None, reason=reason)
            raise StartFailed(reason) from None
        try:
            evicted = await room.wait_for_room(
                self.table, tenant, self.sampler, deadline, clock=loop.time, record=self.record,
                running=lambda sample: self.running(sample, tenant.gpu, agent),
                stop=lambda name: self.evict(name, agent.name))
            self.claimed.add(agent.name)
        except room.NoRoom as exc:
            raise StartFailed(str(exc)) from None
        finally:
            lock.release()
        if evicted or loop.time() - began >= 0.001:
            log.info(admission.admitted(tenant, loop.time() - began, evicted))

    def release(self, agent):
        """Its start is over (ready or failed): from here NVML sees what it uses."""
        self.claimed.discard(agent.name)

    async def evict(self, name, for_whom):
        """Stop the idle agent `name` to make room; whether it was stopped."""
        victim = self.activator.agents.get(name)
        if victim is None:
            return False
        log.info(f"{name}: stopping it to make room on its GPU for {for_whom}")
        return await self.activator.stop_now(victim, f"to make room on its GPU for {for_whom}")

    async def running(self, sample, index, admitted):
        """The tenants of GPU `index` that are up or coming up, as admission.Running."""
        try:
            infos = await self.activator.rpc.call("getAllProcessInfo")
        except Exception as exc:  # noqa: BLE001 - SupervisorUnreachable, Fault
            raise StartFailed(f"cannot read supervisord's process list for GPU admission: {exc}") from None
        by_name = {}
        for info in infos:
            by_name.setdefault(info["name"], info)
        out = []
        needed = {dep.name for dep in admitted.deps}  # it is about to start, and them with it
        for tenant in self.table.tenants:
            if tenant.gpu != index or tenant.name == admitted.name:
                continue
            info = by_name.get(tenant.name)
            up = info is not None and info["statename"] in UP_STATES
            agent = self.activator.agents.get(tenant.name)
            if not up and tenant.name not in self.claimed:
                continue
            used = sample.used_by(index, _tree(info["pid"])) if up and info.get("pid") else 0
            busy = f"needed by {admitted.name}" if tenant.name in needed else _busy(agent, tenant.name in self.claimed)
            out.append(admission.Running(tenant, used, busy,
                                         agent.last if agent is not None else 0.0))
        return out


def _busy(agent, claimed):
    """Why the optional agent must not be stopped now, or ''. An essential one (agent None) is
    never a candidate anyway."""
    if agent is None:
        return ""
    if claimed or agent.start_task is not None:
        return "starting"
    if agent.stop_task is not None:
        return "stopping"
    if agent.conns:
        return admission.open_connections(agent.conns)
    needed = [d.name for d in agent.dependants if d.active]
    if needed:
        return f"needed by {', '.join(needed)}"
    return ""


def _tree(pid):
    """The pid and its descendants."""
    try:
        process = psutil.Process(pid)
        return [pid] + [child.pid for child in process.children(recursive=True)]
    except psutil.Error:
        return [pid]


def ledger_path(control):
    """Beside the control socket, in the state directory (the status service looks there)."""
    return os.path.join(os.path.dirname(control), ledger.NAME)


