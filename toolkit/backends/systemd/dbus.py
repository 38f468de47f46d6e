"""systemd over D-Bus (sdbus): the one place that knows D-Bus.

The rest of agentkit sees plain Python values: unit names, dicts of
properties, job results as strings. Everything is asyncio because only the
async side of sdbus receives signals (JobRemoved tells when a start is done).
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sdbus import DbusInterfaceCommonAsync, SdBusBaseError, dbus_method_async, sd_bus_open_system

from ...errors import AgentkitError

SYSTEMD = "org.freedesktop.systemd1"
MANAGER_PATH = "/org/freedesktop/systemd1"
NO_VALUE = (1 << 64) - 1  # systemd's "not set" for counters such as MemoryCurrent


class _Manager(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Manager"):
    @dbus_method_async()
    async def subscribe(self) -> None:
        raise NotImplementedError

    @dbus_method_async()
    async def reload(self) -> None:
        raise NotImplementedError

    @dbus_method_async("ss", "o")
    async def start_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError

    @dbus_method_async("ss", "o")
    async def stop_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError

    @dbus_method_async("ss", "o")
    async def restart_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError

    @dbus_method_async("ss", "o")
    async def try_restart_unit(self, name: str, mode: str) -> str:
        raise NotImplementedError

    @dbus_method_async("s")
    async def reset_failed_unit(self, name: str) -> None:
        raise NotImplementedError

    @dbus_method_async("asbb", "ba(sss)")
    async def enable_unit_files(self, files: list[str], runtime: bool, force: bool) -> tuple[bool, list]:
        raise NotImplementedError

    @dbus_method_async("asb", "a(sss)")
    async def disable_unit_files(self, files: list[str], runtime: bool) -> list:
        raise NotImplementedError

    @dbus_method_async("as", "a(ssssssouso)")
    async def list_units_by_names(self, names: list[str]) -> list:
        raise NotImplementedError

    @dbus_method_async("asas", "a(ssssssouso)")
    async def list_units_by_patterns(self, states: list[str], patterns: list[str]) -> list:
        raise NotImplementedError

    @dbus_method_async("s", "o")
    async def load_unit(self, name: str) -> str:
        raise NotImplementedError


# Properties are read whole (GetAll) and keep systemd's own names, as in `systemctl show`.
class _Unit(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Unit"):
    pass


class _Service(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Service"):
    pass


class _Socket(DbusInterfaceCommonAsync, interface_name="org.freedesktop.systemd1.Socket"):
    pass


@dataclass(frozen=True)
class UnitState:
    name: str
    load_state: str  # loaded, not-found, ...
    active_state: str  # active, inactive, activating, deactivating, failed, reloading
    sub_state: str  # running, listening, dead, auto-restart, ...
    path: str


class Systemd:
    """The calls agentkit makes on the system manager."""

    def __init__(self) -> None:
        try:
            self._bus = sd_bus_open_system()
        except (SdBusBaseError, OSError) as exc:
            raise AgentkitError(f"cannot reach systemd on the system bus: {exc}") from exc
        self._manager = _Manager.new_proxy(SYSTEMD, MANAGER_PATH, self._bus)
        self._jobs: dict[str, asyncio.Future] = {}
        self._slot = None
        self._watching: list = []

    async def reload(self) -> None:
        await self._call(self._manager.reload())

    async def enable(self, units: list[str]) -> None:
        await self._call(self._manager.enable_unit_files(units, False, True))

    async def disable(self, units: list[str]) -> None:
        await self._call(self._manager.disable_unit_files(units, False))

    async def reset_failed(self, unit: str) -> None:
        try:
            await self._manager.reset_failed_unit(unit)
        except SdBusBaseError:
            pass  # not loaded, or not failed: nothing to reset

    async def states(self, units: list[str]) -> dict[str, UnitState]:
        rows = await self._call(self._manager.list_units_by_names(units))
        return {row[0]: UnitState(row[0], row[2], row[3], row[4], row[6]) for row in rows}

    async def loaded(self, patterns: list[str]) -> list[str]:
        """The names of the units systemd has loaded that match any of the glob patterns."""
        rows = await self._call(self._manager.list_units_by_patterns([], patterns))
        return sorted(row[0] for row in rows)

    async def properties(self, state: UnitState) -> dict:
        """Unit properties, plus the Service or Socket ones, by systemd's names (ActiveEnterTimestamp, ...)."""
        props = await self._call(_Unit.new_proxy(SYSTEMD, state.path, self._bus).properties_get_all_dict("reuse"))
        kind = _Service if state.name.endswith(".service") else _Socket if state.name.endswith(".socket") else None
        if kind is not None:
            props.update(await self._call(kind.new_proxy(SYSTEMD, state.path, self._bus).properties_get_all_dict("reuse")))
        return props

    async def unit_path(self, name: str) -> str:
        """The object path of a unit, loading its file if systemd has not yet (no start)."""
        return await self._call(self._manager.load_unit(name))

    async def properties_at(self, name: str, path: str) -> dict:
        return await self.properties(UnitState(name, "", "", "", path))

    async def watch(self, on_change, on_reload) -> None:
        """on_change(object path) whenever a unit's properties change (its state, its restarts),
        on_reload() when systemd reloads its units: from systemd's signals, not polling."""
        await self._call(self._manager.subscribe())

        def changed(message) -> None:
            on_change(message.path)

        def reloading(message) -> None:
            active = message.get_contents()  # sdbus: one argument comes bare, not in a tuple
            if not (active[0] if isinstance(active, tuple) else active):  # the reload is over: the units are the new ones
                on_reload()

        for member, callback, path, interface in (
                ("PropertiesChanged", changed, None, "org.freedesktop.DBus.Properties"),
                ("Reloading", reloading, MANAGER_PATH, "org.freedesktop.systemd1.Manager")):
            self._watching.append(await self._call(self._bus.match_signal_async(
                SYSTEMD, path, interface, member, callback)))

    async def queue(self, verb: str, unit: str, mode: str = "replace") -> str:
        """Queue one job and return at once (its object path)."""
        return await self._call(getattr(self._manager, f"{verb}_unit")(unit, mode))

    async def run_jobs(self, verb: str, units: list[str], mode: str = "replace",
                       timeout: float = 120.0, on_done=None) -> dict[str, str]:
        """Queue `verb` (start, stop, restart, try_restart) for every unit and wait for
        all their jobs: {unit: result}, result being systemd's (done, failed, timeout,
        dependency, canceled, skipped), or "timeout" when `timeout` seconds passed."""
        await self._listen()
        method = getattr(self._manager, f"{verb}_unit")
        loop = asyncio.get_running_loop()
        jobs: dict[str, str] = {}
        for unit in units:
            job = await self._call(method(unit, mode))
            jobs[job] = unit
            self._jobs.setdefault(job, loop.create_future())
        results: dict[str, str] = {}

        async def collect(job: str) -> None:
            result = await self._jobs[job]
            results[jobs[job]] = result
            if on_done is not None:
                on_done(jobs[job], result)

        try:
            await asyncio.wait_for(asyncio.gather(*(collect(job) for job in jobs)), timeout)
        except asyncio.TimeoutError:
            for unit in jobs.values():
                results.setdefault(unit, "timeout")
        finally:
            for job in jobs:
                self._jobs.pop(job, None)
        return results

    async def _listen(self) -> None:
        """Receive JobRemoved before the first job is queued, so no result is missed."""
        if self._slot is not None:
            return
        await self._call(self._manager.subscribe())
        loop = asyncio.get_running_loop()

        def job_removed(message) -> None:
            _id, job, _unit, result = message.get_contents()
            future = self._jobs.setdefault(job, loop.create_future())
            if not future.done():
                future.set_result(result)

        self._slot = await self._call(self._bus.match_signal_async(
            SYSTEMD, MANAGER_PATH, "org.freedesktop.systemd1.Manager", "JobRemoved", job_removed))

    @staticmethod
    async def _call(awaitable):
        try:
            return await awaitable
        except SdBusBaseError as exc:
            detail = exc.args[-1] if exc.args else str(exc)
            raise AgentkitError(f"systemd: {detail}") from exc

    def close(self) -> None:
        for slot in self._watching:
            slot.close()
        self._watching.clear()
        if self._slot is not None:
            self._slot.close()
            self._slot = None
        self._bus.close()
