"""The status service's view of a supervisord host (agentkit up): its agents and their states.

Which agents: supervisord's programs (all but the activator, the router and this service); the
optional ones are those activator.json names. When: the activator says at once when an agent starts,
is ready, fails or is stopped (its control socket's "events"); crashes and supervisord's own
restarts show in its process list, read every POLL seconds (XML-RPC over its unix socket:
a question to supervisord, never to an agent, so it wakes nothing). supervisord counts no
restarts: a program whose start time changed without the activator starting it was restarted.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
from dataclasses import replace

from .. import units
from ..backends import process_cpu, rss
from ..backends.supervisord import run
from ..backends.supervisord.config import Config
from ..backends.supervisord.render import ACTIVATOR, ACTIVATOR_CONFIG, CONTROL
from . import liveness
from .board import Board, Observation
from .gpu import GpuView

log = logging.getLogger(units.STATUS_PROGRAM)
POLL = 0.5  # s between looks at supervisord's process list
NOT_OURS = (ACTIVATOR, units.STATUS_PROGRAM, units.ROUTER_PROGRAM)  # not agents (systemd.py: NOT_OURS)


class SupervisordSource:
    def __init__(self, board: Board, state_dir: str, probes=(), gpu_view: GpuView | None = None) -> None:
        self.board = board
        self.state_dir = state_dir
        self.probes = list(probes)
        self.optional: set[str] = set()
        self.started: dict[str, float] = {}   # program -> the start time last seen
        self.ours: dict[str, int] = {}        # agent -> the activator's starts last seen
        self.restarts: dict[str, int] = {}
        self.tasks: list[asyncio.Task] = []
        self.lock = asyncio.Lock()
        self.gpu = gpu_view or GpuView()

    async def start(self) -> None:
        config = Config.load(os.path.join(self.state_dir, ACTIVATOR_CONFIG))
        self.optional = {a.name for a in config.agents}
        infos = await self._infos()
        for name in sorted(n for n in infos if n not in NOT_OURS):
            self.board.track(name, name not in self.optional, name)
        await self.refresh(infos)
        self.board.source_up = True
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self.poll()), loop.create_task(self.follow())]
        for probe in self.probes:
            if probe.agent in self.board.rows:
                self.tasks.append(loop.create_task(liveness.watch(
                    probe, lambda name=probe.agent: self.board.rows[name].seen.state == "active", self.kill)))

    async def kill(self, name: str) -> None:
        await asyncio.get_running_loop().run_in_executor(
            None, lambda: run.rpc(self.state_dir).supervisor.signalProcess(name, "KILL"))

    def close(self) -> None:
        for task in self.tasks:
            task.cancel()

    async def _infos(self) -> dict[str, dict]:
        rows = await asyncio.get_running_loop().run_in_executor(
            None, lambda: run.rpc(self.state_dir).supervisor.getAllProcessInfo())
        return {row["name"]: row for row in rows}

    async def _held(self) -> dict[str, dict]:
        return await asyncio.get_running_loop().run_in_executor(None, run.held_agents, self.state_dir)

    async def refresh(self, infos: dict[str, dict] | None = None) -> None:
        async with self.lock:  # the poll and the activator's news read in turn, never crossed
            infos = infos if infos is not None else await self._infos()
            held = await self._held()
            activator_up = infos.get(ACTIVATOR, {}).get("statename") == "RUNNING"
            for name, row in self.board.rows.items():
                info = infos.get(name)
                snapshot = held.get(name)
                if snapshot is not None:
                    row.accepted = snapshot.get("accepted")
                for seen in self.observations(name, info, activator_up, snapshot):
                    self.board.observe(name, seen)

    def observations(self, name: str, info: dict | None, activator_up: bool, snapshot: dict | None):
        """The agent's Observation now: preceded by a crash when supervisord restarted it since."""
        state, detail = run.state_of(info, name in self.optional, activator_up, snapshot)
        start = float(info["start"]) if info and info.get("start") else 0.0
        ours = (snapshot or {}).get("starts", 0)
        restarted = (name in self.started and start and start != self.started[name]
                     and ours == self.ours.get(name, 0))
        self.started[name], self.ours[name] = start, ours
        if restarted:
            self.restarts[name] = self.restarts.get(name, 0) + 1
        now = Observation(
            state=state, detail=detail, since=start if state in ("active", "starting") else (
                float(info["stop"]) if info and info.get("stop") else None),
            sub_state="auto-restart" if info and info["statename"] == "BACKOFF" else (info or {}).get("statename", ""),
            restarts=self.restarts.get(name, 0), result=(snapshot or {}).get("why") or "",
            start_limit_hit=bool(info) and info["statename"] == "FATAL",
            last_start_s=(snapshot or {}).get("last_start_s"), pid=int((info or {}).get("pid") or 0))
        if restarted and self.board.rows[name].seen.sub_state != "auto-restart":
            # Between two looks it died and supervisord started it again: say so, as systemd would.
            yield replace(now, state="starting", sub_state="auto-restart", restarts=now.restarts - 1,
                          result="exited", detail="exited; supervisord restarts it")
        yield now

    async def poll(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            try:
                await self.refresh()
                self.board.source_up, self.board.source_error = True, ""
            except Exception as exc:  # noqa: BLE001 - supervisord gone or restarting: say so, try again
                self.board.source_up, self.board.source_error = False, str(exc) or type(exc).__name__

    async def follow(self) -> None:
        """The activator's news (control.py "events"): a refresh at once, not at the next poll."""
        path = os.path.join(self.state_dir, CONTROL)
        while True:
            try:
                reader, writer = await asyncio.open_unix_connection(path)
                writer.write(json.dumps({"op": "events"}).encode() + b"\n")
                await writer.drain()
                while line := await reader.readline():
                    if line.strip():
                        await self.refresh()
                writer.close()
            except (OSError, ValueError):
                pass  # the activator restarts: the poll covers the gap
            except Exception as exc:  # noqa: BLE001 - supervisord unreachable meanwhile
                log.warning("cannot follow the activator: %s", exc)
            await asyncio.sleep(1.0)

    def owner(self, pid: int) -> str | None:
        """The agent a process belongs to: the one whose program it is, or whose descendant."""
        mains = {row.seen.pid: name for name, row in self.board.rows.items() if row.seen.pid}
        for _ in range(16):  # a few generations at most: a model server's workers
            if pid in mains:
                return mains[pid]
            try:
                with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
                    pid = int(handle.read().rsplit(")", 1)[1].split()[1])
            except (OSError, ValueError, IndexError):
                return None
            if pid <= 1:
                return None
        return None

    def sample(self) -> None:
        for row in self.board.rows.values():
            pid = row.seen.pid
            running = pid and row.seen.state in ("active", "starting", "stopping")
            row.memory = rss(pid) if running else None
            row.cpu_seconds = process_cpu(pid) if running else None
        self.gpu.attribute(self.board, self.owner)
