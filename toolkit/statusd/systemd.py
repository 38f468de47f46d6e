"""The status service's view of a systemd host: its agents and their states, over D-Bus.

Which agents: what agentkit.target wants (an agent's service when it is essential,
its socket when it is optional), so the service needs no copy of the manifest and
follows every `agentkit install` (systemd's Reloading signal). When: systemd's own
PropertiesChanged signals; each one makes us read that agent's units again.
Reading a unit's properties never starts it: a dormant agent stays dormant.
Memory and CPU come from the agent's cgroup files, read when asked for.
"""

from __future__ import annotations

import asyncio
import logging
import os

from .. import units
from ..backends import process_cpu, rss
from ..backends.systemd.dbus import NO_VALUE, Systemd, UnitState
from ..backends.systemd.status import state_of
from .board import Board, Observation
from .gpu import GpuView

log = logging.getLogger(units.STATUS_PROGRAM)
CGROUP_ROOT = "/sys/fs/cgroup"
KEEP_ALIVE = 5.0  # s between the small questions that tell a lost bus
NOT_OURS = units.OWN_UNITS


class SystemdSource:
    def __init__(self, board: Board, gpu_view: GpuView | None = None) -> None:
        self.board = board
        self.manager: Systemd | None = None
        self.paths: dict[str, str] = {}     # object path -> agent name
        self.units: dict[str, tuple[str, str | None]] = {}  # agent -> (service, socket or None)
        self.unit_paths: dict[str, tuple[str, str | None]] = {}
        self.pending: dict[str, asyncio.Task] = {}
        self.again: set[str] = set()
        self.tasks: set[asyncio.Task] = set()
        self.gpu = gpu_view or GpuView()

    async def start(self) -> None:
        await self.connect()
        self._spawn(asyncio.get_running_loop().create_task(self.keep_alive()))

    async def connect(self) -> None:
        loop = asyncio.get_running_loop()
        self.manager = Systemd()
        await self.manager.watch(lambda path: self._changed(path),
                                 lambda: self._spawn(loop.create_task(self.discover())))
        await self.discover()
        self.board.source_up, self.board.source_error = True, ""

    async def keep_alive(self) -> None:
        """Ask systemd something small now and then: signals stop without a word when the bus
        goes away (dbus-daemon restarted), and then /health and /metrics say so, until we are
        back: we connect again and read every agent anew."""
        while True:
            await asyncio.sleep(KEEP_ALIVE)
            try:
                await asyncio.wait_for(self.manager.unit_path(units.TARGET), KEEP_ALIVE)
                continue
            except Exception as exc:  # noqa: BLE001 - AgentkitError, a timeout: the bus is gone
                self.board.source_up, self.board.source_error = False, str(exc) or type(exc).__name__
                log.warning("systemd does not answer (%s); connecting again", self.board.source_error)
            self.manager.close()
            try:
                await asyncio.wait_for(self.connect(), KEEP_ALIVE * 2)
                log.info("connected to systemd again")
            except Exception as exc:  # noqa: BLE001 - tried again on the next round
                self.board.source_error = str(exc) or type(exc).__name__

    def close(self) -> None:
        for task in list(self.tasks) + list(self.pending.values()):
            task.cancel()
        if self.manager is not None:
            self.manager.close()

    def _spawn(self, task: asyncio.Task) -> None:
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def discover(self) -> None:
        """The agents agentkit.target wants, and a first read of each."""
        manager = self.manager
        target = await manager.properties_at(units.TARGET, await manager.unit_path(units.TARGET))
        wanted = sorted(target.get("Wants", ()))  # by name: the order of /health, /metrics and the page
        found: dict[str, tuple[str, str | None]] = {}
        for unit in wanted:
            if unit in NOT_OURS or not unit.startswith(units.PREFIX):
                continue
            if unit.endswith(".service"):
                found[unit[len(units.PREFIX):-len(".service")]] = (unit, None)
            elif unit.endswith(".socket"):
                name = unit[len(units.PREFIX):-len(".socket")]
                if name.endswith("-proxy") and await self._is_proxy_of(unit, name[:-len("-proxy")]):
                    name = name[:-len("-proxy")]  # agentkit-X-proxy.socket starts X's proxy, and so X
                found[name] = (units.service(name), unit)
        paths, unit_paths = {}, {}
        for name, (service, socket) in found.items():
            service_path = await manager.unit_path(service)
            socket_path = await manager.unit_path(socket) if socket else None
            unit_paths[name] = (service_path, socket_path)
            paths[service_path] = name
            if socket_path:
                paths[socket_path] = name
            self.board.track(name, socket is None, service)
        self.board.forget_except(found)
        self.paths, self.units, self.unit_paths = paths, found, unit_paths
        for name in found:
            await self.refresh(name)
        log.info("watching %d agents (%d essential) of %s", len(found),
                 sum(1 for s in found.values() if s[1] is None), units.TARGET)

    async def _is_proxy_of(self, socket: str, name: str) -> bool:
        """Whether `socket` starts agent `name`'s proxy (BindsTo= its service), not an agent
        that is itself called NAME-proxy: by names alone the two look the same."""
        manager = self.manager
        props = await manager.properties_at(socket, await manager.unit_path(socket))
        for triggered in props.get("Triggers", ()):
            bound = await manager.properties_at(triggered, await manager.unit_path(triggered))
            if units.service(name) in bound.get("BindsTo", ()):
                return True
        return False

    def _changed(self, path: str) -> None:
        name = self.paths.get(path)
        if name is None:
            return
        if name in self.pending:
            self.again.add(name)  # read once more when the read under way is done
            return
        self.pending[name] = task = asyncio.get_running_loop().create_task(self._refresh_soon(name))
        task.add_done_callback(lambda _t, name=name: self.pending.pop(name, None))

    async def _refresh_soon(self, name: str) -> None:
        while True:
            self.again.discard(name)
            try:
                await self.refresh(name)
            except Exception as exc:  # noqa: BLE001 - one unreadable unit must not stop the others
                log.warning("%s: cannot read its units: %s", name, exc)
            if name not in self.again:
                return

    async def refresh(self, name: str) -> None:
        service_path, socket_path = self.unit_paths[name]
        service_name, socket_name = self.units[name]
        props = await self.manager.properties_at(service_name, service_path)
        socket = await self.manager.properties_at(socket_name, socket_path) if socket_path else None
        self.board.observe(name, observation(props, socket))

    def owner(self, pid: int) -> str | None:
        """The agent a process belongs to, by its cgroup: agentkit-X.service is X's."""
        try:
            with open(f"/proc/{pid}/cgroup", encoding="utf-8", errors="replace") as handle:
                unit = handle.read().strip().rsplit("/", 1)[-1]
        except OSError:
            return None
        return next((name for name, (service, _) in self.units.items() if service == unit), None)

    def sample(self) -> None:
        """Memory and CPU of every running agent, from its cgroup (cheap: two small files each),
        and its GPU memory from NVML."""
        for row in self.board.rows.values():
            group = row.seen.cgroup
            if not group or row.seen.state not in ("active", "starting", "stopping"):
                row.memory = row.cpu_seconds = None
                continue
            row.memory, row.cpu_seconds = cgroup_usage(os.path.join(CGROUP_ROOT, group.lstrip("/")))
            if row.memory is None:  # no memory controller for the cgroup (a container): the main process's
                row.memory, row.cpu_seconds = rss(row.seen.pid), process_cpu(row.seen.pid)
        self.gpu.attribute(self.board, self.owner)


def _unit_state(props: dict) -> UnitState:
    return UnitState(props.get("Id", ""), props.get("LoadState", ""), props.get("ActiveState", ""),
                     props.get("SubState", ""), "")


def observation(service: dict, socket: dict | None) -> Observation:
    """An agent's Observation from its service's (and socket's) properties, by systemd's names."""
    state, detail = state_of(socket is not None, _unit_state(service), _unit_state(socket) if socket else None)
    changed = service.get("StateChangeTimestamp") or 0
    if state == "dormant" and socket:
        changed = socket.get("StateChangeTimestamp") or changed
    began, ready = service.get("InactiveExitTimestampMonotonic", 0), service.get("ActiveEnterTimestampMonotonic", 0)
    result = service.get("Result", "")
    socket_result = socket.get("Result", "") if socket else ""
    limit = result == "start-limit-hit" or socket_result == "service-start-limit-hit"
    if limit and "start limit" not in detail:
        detail += ", start limit hit"
    return Observation(
        state=state, detail=detail, since=changed / 1e6 if changed else None,
        sub_state=service.get("SubState", ""), restarts=int(service.get("NRestarts") or 0), result=result,
        start_limit_hit=limit, last_start_s=round((ready - began) / 1e6, 6) if began and ready >= began else None,
        cgroup=service.get("ControlGroup", ""), pid=int(service.get("MainPID") or 0))


def cgroup_usage(path: str) -> tuple[int | None, float | None]:
    """(memory.current in bytes, CPU seconds from cpu.stat) of a cgroup v2 directory."""
    memory = cpu = None
    try:
        with open(os.path.join(path, "memory.current"), encoding="ascii") as handle:
            value = int(handle.read())
            memory = None if value == NO_VALUE else value
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(path, "cpu.stat"), encoding="ascii") as handle:
            for line in handle:
                if line.startswith("usage_usec "):
                    cpu = int(line.split()[1]) / 1e6
                    break
    except (OSError, ValueError):
        pass
    return memory, cpu

