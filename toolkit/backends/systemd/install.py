"""Put a host's rendered units in place and bring them up: the one place with side effects.

Steps: plan what changes against what agentkit installed before (its record in
ROOT/var/lib/agentkit/installed.json), write the units atomically, stop and
remove what the manifest no longer has, reload systemd once, enable
agentkit.target, (re)start what changed, and wait for the essential agents'
start jobs over D-Bus. A second run with no change changes nothing.

Units agentkit did not write are never touched; a unit of ours that someone
edited by hand since is not overwritten (use a drop-in, or --force).

An install killed at any point heals on the next run: the record says what it is about to
write before the first file is touched and is marked complete only after the reload and the
restarts, so the next run accepts either text in a file of ours, redoes the reload and restarts
what systemd does not yet run, and removes the temporary files a killed write left.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import re
import json
import os
from dataclasses import dataclass, field
from typing import Callable

from ... import files, proc, ready, units
from ...errors import AgentkitError
from ...files import RenderedFile
from ...units import TARGET
from .. import Changes, Outcome

UNIT_DIR = "etc/systemd/system"
RUNNING = ("active", "activating", "reloading")  # ActiveState of a unit that runs or is on its way
RECORD = "var/lib/agentkit/installed.json"
RECORD_NAME = re.compile(r"^installed\.json$")


def _instance_units(names) -> list[str]:
    """Units systemd can start, stop or list: templates (name@.service) are only files."""
    return [n for n in names if "@." not in n and n.endswith((".target", ".socket", ".service"))]


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass
class Record:
    """What agentkit installed under a root: its files and their digests.

    files: every file of ours and the digest of the text agentkit last wrote, or is writing, to it.
    pending: None once the last install was complete (written, reloaded, restarted). While one is
    under way (and after one was killed): {"applied": the digests systemd last ran with, at the last
    complete install; "before": the digests the files held when the unfinished install began}. A
    file of ours may then hold either text; a rerun redoes the reload and the restarts of every unit
    whose text differs from what was applied, whichever install wrote it."""

    host: str | None = None
    profile: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    pending: dict | None = None

    @classmethod
    def read(cls, root: str) -> "Record":
        path = os.path.join(root, RECORD)
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
            pending = data.get("pending")
            if pending is not None:
                pending = {"applied": dict(pending.get("applied", {})), "before": dict(pending.get("before", {}))}
            return cls(data.get("host"), data.get("profile"), dict(data.get("files", {})), pending)
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError, AttributeError, TypeError) as exc:
            raise AgentkitError(f"{path}: unreadable record of installed units ({exc}); "
                                "move it away to start over") from exc

    @property
    def applied(self) -> dict[str, str]:
        """The digests systemd runs with: those of the last complete install."""
        return self.files if self.pending is None else self.pending["applied"]

    def known(self, name: str) -> set[str]:
        """The digests a file of ours may hold without anyone having edited it."""
        digests = {self.files.get(name), self.applied.get(name)}
        if self.pending is not None:
            digests.add(self.pending["before"].get(name))
        return digests - {None}

    def write(self, root: str) -> None:
        path = os.path.join(root, RECORD)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        data = {"host": self.host, "profile": self.profile, "files": dict(sorted(self.files.items()))}
        if self.pending is not None:
            data["pending"] = {key: dict(sorted(value.items())) for key, value in self.pending.items()}
        files.atomic_write(path, json.dumps(data, indent=1) + "\n", 0o644)


@contextlib.contextmanager
def locked(root: str):
    """One install or uninstall at a time under a root: an flock on the record's directory (let go by
    the kernel if agentkit is killed). Holding it, agentkit's stale temporary files are its own."""
    directory = os.path.join(root, os.path.dirname(RECORD))
    os.makedirs(directory, exist_ok=True)
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise AgentkitError(f"{directory}: another agentkit install or uninstall is running here; "
                                "try again once it is done") from None
        for where, ours in ((os.path.join(root, UNIT_DIR), files.OURS), (directory, RECORD_NAME)):
            files.remove_stale_temp_files(where, ours)
        yield
    finally:
        os.close(fd)


def compare(root: str, planned: list[RenderedFile], record: Record, force: bool = False) -> Changes:
    """What install would do; refuses to overwrite units that are not ours or were edited by hand.

    A unit counts as changed when its file differs from the plan, or when systemd does not yet
    run what the plan says (an install that wrote it was interrupted before its reload and
    restarts). A file that holds a text agentkit wrote, or the planned text, is not "edited by hand"."""
    unit_dir = os.path.join(root, UNIT_DIR)
    changes = Changes()
    wanted = {item.path: item for item in planned}
    for name, item in wanted.items():
        path = os.path.join(unit_dir, name)
        try:
            with open(path, encoding="utf-8") as handle:
                current = handle.read()
        except FileNotFoundError:
            changes.added.append(name)
            continue
        if name not in record.files:
            if current == item.text:
                changes.changed.append(name)  # identical, but now ours: record it
                continue
            raise AgentkitError(f"{path}: exists and was not installed by agentkit; move it away first")
        if not force and current != item.text and _digest(current) not in record.known(name):
            raise AgentkitError(f"{path}: changed by hand since agentkit installed it; put local changes in "
                                f"a drop-in ({name}.d/*.conf), or run with --force to overwrite")
        same = current == item.text and record.applied.get(name) == _digest(item.text)
        (changes.unchanged if same else changes.changed).append(name)
    for name in sorted(set(record.files) - set(wanted)):
        changes.removed.append(name)
    return changes


def begin(root: str, planned: list[RenderedFile], changes: Changes, record: Record, host: str,
          profile: str) -> Record:
    """Say in the record, before anything is touched, what this install will write: a kill from
    here on leaves a record that knows every text a file of ours may hold, and that the reload
    and restarts are still to do."""
    unit_dir = os.path.join(root, UNIT_DIR)
    before = dict(record.pending["before"]) if record.pending is not None else {}
    for name in changes.changed:
        try:
            with open(os.path.join(unit_dir, name), encoding="utf-8") as handle:
                before[name] = _digest(handle.read())
        except FileNotFoundError:
            pass
    intent = Record(host, profile, {**record.files, **{item.path: _digest(item.text) for item in planned}},
                    {"applied": dict(record.applied), "before": before})
    intent.write(root)
    return intent


def write(root: str, planned: list[RenderedFile], changes: Changes) -> None:
    """Write changed units atomically and delete removed ones (begin() has recorded them)."""
    unit_dir = os.path.join(root, UNIT_DIR)
    os.makedirs(unit_dir, exist_ok=True)
    wanted = {item.path: item for item in planned}
    for name in changes.added + changes.changed:
        path = os.path.join(unit_dir, name)
        try:
            with open(path, encoding="utf-8") as handle:
                if handle.read() == wanted[name].text:
                    continue  # an interrupted install wrote it already
        except FileNotFoundError:
            pass
        files.atomic_write(path, wanted[name].text)
    _unlink(os.path.join(unit_dir, name) for name in changes.removed)


def commit(root: str, planned: list[RenderedFile], host: str, profile: str) -> None:
    """The install is complete (files written, systemd reloaded, changed units restarted)."""
    Record(host, profile, {item.path: _digest(item.text) for item in planned}).write(root)


def _unlink(paths) -> None:
    for path in paths:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass


@contextlib.contextmanager
def _systemd(root: str):
    """The system manager when `root` is the running system, else None (files only)."""
    if os.path.realpath(root) != "/":
        yield None
        return
    from .dbus import Systemd  # D-Bus only where it is used: render/validate need no bus
    manager = Systemd()
    try:
        yield manager
    finally:
        manager.close()


def journal_tail(unit: str, lines: int = 10) -> list[str]:
    """The unit's last journal lines, for a human reading why it failed."""
    try:
        result = proc.run(["journalctl", "--no-pager", "-q", "-o", "cat", "-n", str(lines), "-u", unit],
                          timeout=10, check=False)
    except proc.CommandError:
        return []
    return result.stdout.splitlines()[-lines:]


def last_words(unit: str) -> str | None:
    """The last line the unit's own processes wrote (not systemd's lines about it), or None."""
    try:
        result = proc.run(["journalctl", "--no-pager", "-q", "-o", "cat", "-n", "5", "-u", unit, "_TRANSPORT=stdout"],
                          timeout=10, check=False)
    except proc.CommandError:
        return None
    # agentkit-ready's "the program exited" says less than the program's own last line.
    return proc.last_line(result.stdout, skip={f"{units.READY_PROGRAM}: {ready.EXITED}"})


async def apply(root: str, host: str, profile: str, planned: list[RenderedFile], *, force: bool = False,
                timeout: float = 120.0, restart_all: bool = False,
                progress: Callable[[str], None] = lambda line: None) -> Outcome:
    """Install `planned` under `root` and, when root is '/', bring it up through systemd.

    restart_all: restart every running service of ours, not only the changed ones
    (agentkit itself was upgraded: same unit files, new code).

    Killed at any point, it leaves what the next run needs to finish the work: the record says,
    before the first file is written, what this run writes, and that the reload and restarts are
    to do (Record.pending); it says the install is complete only once they are done."""
    with locked(root):
        record = Record.read(root)
        changes = compare(root, planned, record, force)
        with _systemd(root) as manager:
            work = changes.any or record.host is None or record.pending is not None
            if work:
                record = begin(root, planned, changes, record, host, profile)
            if manager is not None and changes.removed:
                # Stop what goes away while systemd still knows its unit files.
                gone = await _loaded(manager, _instance_units(changes.removed))
                progress(f"stopping {len(gone)} removed unit(s)")
                await manager.run_jobs("stop", gone, timeout=timeout)
            if work:
                if changes.added or changes.changed:
                    progress(f"writing {len(changes.added) + len(changes.changed)} unit file(s)")
                write(root, planned, changes)
                for kind, names in (("added", changes.added), ("changed", changes.changed),
                                    ("removed", changes.removed)):
                    if names:
                        progress(f"{kind}: {len(names)} unit file(s)")
            outcome = Outcome(changes)
            if manager is None:
                _enable_offline(root)
                if work:
                    commit(root, planned, host, profile)
                return outcome
            if changes.any:
                progress("reloading systemd")
                await manager.reload()
                for name in changes.removed:
                    await manager.reset_failed(name)
            await manager.enable([TARGET])
            await _restart(manager, planned, changes, outcome, timeout, progress, restart_all)
            if work:
                commit(root, planned, host, profile)
            await _start(manager, planned, outcome, timeout, progress)
            return outcome


async def _loaded(manager, names: list[str]) -> list[str]:
    """Those of `names` systemd still has: a unit whose file an interrupted install removed and
    that stopped is gone after a reload, and stopping it would be an error."""
    states = await manager.states(names)
    return [n for n in names if n in states and (states[n].load_state == "loaded"
                                                 or states[n].active_state != "inactive")]


async def _restart(manager, planned: list[RenderedFile], changes: Changes, outcome: Outcome,
                   timeout: float, progress: Callable[[str], None], restart_all: bool = False) -> None:
    wanted_by_target = _target_wants(planned)
    changed = set(changes.changed)
    # A changed unit that runs gets restarted (try-restart: a dormant agent stays dormant).
    candidates = [item.path for item in planned] if restart_all else changed
    restart = sorted(n for n in _instance_units(candidates) if n.endswith(".service"))
    if restart:
        before = await manager.states(restart)
        outcome.restarted = [n for n in restart if before.get(n) is not None
                             and before[n].active_state in RUNNING]
        what = "running" if restart_all else "changed running"
        progress(f"restarting {len(outcome.restarted)} {what} service(s)")
        await manager.run_jobs("try_restart", restart, timeout=timeout)
    sockets = [n for n in wanted_by_target if n.endswith(".socket")]
    for name in sorted(changed & set(sockets)):
        await manager.run_jobs("restart", [name], timeout=timeout)


async def _start(manager, planned: list[RenderedFile], outcome: Outcome, timeout: float,
                 progress: Callable[[str], None]) -> None:
    wanted_by_target = _target_wants(planned)
    sockets = [n for n in wanted_by_target if n.endswith(".socket")]
    services = [n for n in wanted_by_target if n.endswith(".service")]
    total = len(services) + len(sockets)
    done = 0

    def on_done(unit: str, result: str) -> None:
        nonlocal done
        done += 1
        progress(f"[{done}/{total}] {unit}: {'ok' if result == 'done' else result}")

    before = await manager.states(sockets + services)
    results = await manager.run_jobs("start", sockets + services, timeout=timeout, on_done=on_done)
    await manager.run_jobs("start", [TARGET], timeout=timeout)
    outcome.jobs = results
    states = await manager.states(list(results))
    outcome.started = sorted(u for u in results if (before.get(u) is None or before[u].active_state not in RUNNING)
                             and states.get(u) is not None and states[u].active_state in RUNNING)
    for unit, result in results.items():
        state = states.get(unit)
        if result != "done" or (state and state.active_state == "failed"):
            why = [f"job {result}"]
            if state is not None:
                props = await manager.properties(state)
                why = [f"job {result}, state {state.active_state}/{state.sub_state}, "
                       f"result {props.get('Result', '?')}"]
            outcome.failed[unit] = why + journal_tail(unit)


def _enable_offline(root: str) -> None:
    """What EnableUnitFiles does, for a root that is not running (an image being built)."""
    wants = os.path.join(root, UNIT_DIR, "multi-user.target.wants")
    os.makedirs(wants, exist_ok=True)
    link = os.path.join(wants, TARGET)
    if not os.path.islink(link):
        os.symlink(f"/{UNIT_DIR}/{TARGET}", link)


def _target_wants(planned: list[RenderedFile]) -> list[str]:
    target = next((item for item in planned if item.path == TARGET), None)
    if target is None:
        return []
    return [line.split("=", 1)[1] for line in target.text.splitlines() if line.startswith("Wants=")]


async def remove(root: str, *, timeout: float = 120.0,
                 progress: Callable[[str], None] = lambda line: None) -> list[str]:
    """Stop, disable and delete everything agentkit installed under root."""
    if not os.path.exists(os.path.join(root, RECORD)):
        return []
    with locked(root):
        return await _remove(root, timeout, progress)


async def _remove(root: str, timeout: float, progress: Callable[[str], None]) -> list[str]:
    record = Record.read(root)
    names = sorted(record.files)
    if not names:
        return []
    with _systemd(root) as manager:
        if manager is not None:
            units = await _loaded(manager, _instance_units(names))
            progress(f"stopping {len(units)} unit(s)")
            await manager.run_jobs("stop", units, timeout=timeout)
            await manager.disable([TARGET])
        unit_dir = os.path.join(root, UNIT_DIR)
        _unlink(os.path.join(unit_dir, name) for name in names + [f"multi-user.target.wants/{TARGET}"])
        os.unlink(os.path.join(root, RECORD))
        if manager is not None:
            await manager.reload()
            for name in names:
                await manager.reset_failed(name)
        progress(f"removed {len(names)} unit file(s)")
        return names


async def stop(*, timeout: float = 120.0) -> list[str]:
    """Stop agentkit.target and every agentkit unit systemd has loaded (agentkit down)."""
    from .dbus import Systemd
    manager = Systemd()
    try:
        names = _instance_units(await manager.loaded(list(units.PATTERNS)))
        await manager.run_jobs("stop", [TARGET] + names, timeout=timeout)
        return names
    finally:
        manager.close()


def wake_unit(agent) -> str:
    """What a first connection starts: the agent's service, or in proxy mode its proxy (which needs
    the agent and starts after it is ready): started alone, a StopWhenUnneeded= agent would stop
    again at once."""
    return units.proxy(agent.name) if agent.activation == "proxy" else units.service(agent.name)


async def wake(agents, *, wait: bool, timeout: float = 120.0, progress=lambda line: None) -> dict[str, str | None]:
    """Start the agents' units (their dependencies come along: Requires= and Wants=); with `wait`,
    until each start job is done, which is once the agent is ready (READY=1 or its probe)."""
    from .dbus import Systemd
    manager = Systemd()
    try:
        wanted = {wake_unit(a): a.name for a in agents}
        if not wait:
            for unit in wanted:
                await manager.queue("start", unit)
            return {name: None for name in wanted.values()}

        def done(unit: str, result: str) -> None:
            progress(f"{wanted[unit]}: {'ready' if result == 'done' else result}")

        results = await manager.run_jobs("start", list(wanted), timeout=timeout, on_done=done)
        out: dict[str, str | None] = {}
        for unit, name in wanted.items():
            result = results.get(unit, "timeout")
            if result == "done":
                out[name] = None
                continue
            said = last_words(units.service(name))
            out[name] = f"start {result}" + (f": {said}" if said else "")
        return out
    finally:
        manager.close()
