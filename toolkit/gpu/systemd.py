"""agentkit-admit: GPU admission under systemd, as an optional GPU agent's ExecStartPre=+.

It runs before the agent's program, with full privileges, one at a time per GPU (flock of
/run/agentkit/gpuN.lock): the decision and the stops it makes are never raced by another
admission there. An admitted start is marked in /run/agentkit/gpu-admitted/ (its invocation
ID) until its program runs, so that the next decision counts it. What runs is what systemd says of the GPU agents' units; who is busy is what their
processes hold (open TCP connections into a port they listen on: a client, or the proxy
forwarding one); what each uses is NVML's figure for the processes of its cgroup.

Refused (no room within --timeout), it says why on stderr (the journal) and in the ledger
(`agentkit status`, the status service's /health, /metrics and /events), and the start ends:
the socket is restarted, which closes the clients queued on it (they would wake the agent
again at once), and the agent's unit is stopped (Restart= would start it again at once too).
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import sys
import time

import click
import psutil

from .. import logs, units
from ..errors import AgentkitError
from . import admission, ledger, room, table as gpu_table
from .nvml import Sampler

PROG = "agentkit-admit"
CGROUP_ROOT = "/sys/fs/cgroup"
LOCK_POLL = 0.02   # s between tries of the host's admission lock
UP = ("active", "activating", "reloading", "deactivating")

log = logging.getLogger(PROG)


@click.command(context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("agent")
@click.option("--timeout", type=float, required=True, help="seconds to wait for room before the start fails")
@click.option("--gpu", "gpus", multiple=True, metavar="INDEX=BYTES|auto")
@click.option("--gpu-reserve", multiple=True, metavar="INDEX=BYTES")
@click.option("--tenant", "tenants", multiple=True, metavar="NAME=GPU:BYTES:CLASS")
def main(agent: str, timeout: float, gpus, gpu_reserve, tenants) -> None:
    """Admit AGENT on its GPU: return once its gpu_memory is free there, stopping idle optional
    GPU agents to make room; fail with the reason when there is none within --timeout."""
    logs.setup(PROG)
    try:
        table = gpu_table.parse_args(list(gpus), list(gpu_reserve), list(tenants))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    if table.tenant(agent) is None:
        raise click.BadParameter(f"{agent} is not among the --tenant agents", param_hint="AGENT")
    try:
        sys.exit(asyncio.run(admit(agent, table, timeout)))
    except AgentkitError as exc:
        log.error(f"{agent}: {exc}")
        sys.exit(1)


async def admit(name: str, table, timeout: float, sampler: Sampler | None = None,
                ledger_path: str = os.path.join(ledger.SYSTEMD_DIR, ledger.NAME)) -> int:
    from ..backends.systemd.dbus import Systemd

    tenant = table.tenant(name)
    began = time.monotonic()
    deadline = began + timeout
    record = room.record_to(ledger_path, log)
    systemd = Systemd()
    try:
        lock = await _lock(tenant.gpu, deadline)
        if lock is None:
            return await _refused(systemd, record, tenant, began, f"another admission on GPU {tenant.gpu} held "
                                  f"its lock ({_lock_path(tenant.gpu)}) for all of {timeout:g} s")
        try:
            return await _admit(systemd, sampler or Sampler(), table, tenant, began, deadline, record)
        except AgentkitError as exc:  # D-Bus: whatever was stopped is said in the journal already
            return await _refused(systemd, record, tenant, began, f"admission failed: {exc}")
        finally:
            os.close(lock)  # the lock goes with it
    finally:
        systemd.close()


def _lock_path(index: int) -> str:
    return os.path.join(ledger.SYSTEMD_DIR, f"gpu{index}.lock")


async def _lock(index: int, deadline: float) -> int | None:
    """GPU `index`'s admission lock (one decision per GPU at a time, across the host's
    agentkit-admit processes), or None if it was not free by `deadline`."""
    ledger.make_dir(ledger.SYSTEMD_DIR)
    lock = os.open(_lock_path(index), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return lock
        except BlockingIOError:
            if time.monotonic() >= deadline:
                os.close(lock)
                return None
            await asyncio.sleep(LOCK_POLL)


async def _admit(systemd, sampler, table, tenant, began, deadline, record) -> int:
    async def stop(victim: str) -> bool:
        unit = units.service(victim)
        busy = await _busy_now(systemd, unit)  # the plan may be seconds old: a client may have come
        if busy:
            log.info(f"{victim}: not stopped for {tenant.name} after all: {busy}")
            return False
        log.info(f"{victim}: stopping it to make room on GPU {tenant.gpu} for {tenant.name}")
        result = (await systemd.run_jobs("stop", [unit], timeout=max(1.0, deadline - time.monotonic())))[unit]
        if result != "done":
            log.warning(f"{victim}: its stop ended {result}")
        return result == "done"

    try:
        evicted = await room.wait_for_room(table, tenant, sampler, deadline, stop=stop, record=record,
                                           running=lambda sample: _running(systemd, table, sample, tenant))
    except room.NoRoom as exc:
        return await _refused(systemd, None, tenant, began, str(exc))
    _claim(tenant.name)
    log.info(admission.admitted(tenant, time.monotonic() - began, evicted))
    return 0


async def _refused(systemd, record, tenant, began, reason: str) -> int:
    """The start ends: said (journal; the ledger unless `record` is None: it is there already),
    its waiting clients closed, its unit stopped."""
    if record is not None:
        record("refuse", tenant, round(time.monotonic() - began, 6), None, reason=reason)
    log.error(f"{tenant.name}: {reason}")
    try:
        await _close_waiting(systemd, tenant.name)
        # Stopped, not failed: Restart= would start it again at once, and wait for room again.
        # The socket listens on; the next client tries anew.
        await systemd.queue("stop", units.service(tenant.name))
    except AgentkitError as exc:
        log.error(f"{tenant.name}: cannot end its start over D-Bus: {exc}")
    return 1


def _claims_dir() -> str:
    return os.path.join(ledger.SYSTEMD_DIR, "gpu-admitted")


def _claim(name: str) -> None:
    """Mark this start of `name` admitted (its unit's invocation): until its ExecStartPre= has
    exited, systemd shows it in start-pre like one still waiting, and only this tells them apart."""
    invocation = os.environ.get("INVOCATION_ID", "")
    ledger.make_dir(_claims_dir())
    partial = os.path.join(_claims_dir(), f".{name}.{os.getpid()}")
    with open(partial, "w", encoding="ascii") as handle:
        handle.write(invocation)
    os.replace(partial, os.path.join(_claims_dir(), name))


def _admitted(name: str, invocation) -> bool:
    try:
        with open(os.path.join(_claims_dir(), name), encoding="ascii") as handle:
            said = handle.read().strip()
    except OSError:
        return False
    invocation = invocation.hex() if isinstance(invocation, (bytes, bytearray)) else str(invocation or "")
    return bool(said) and said == invocation


async def _busy_now(systemd, unit: str) -> str:
    states = await systemd.states([unit])
    if unit not in states or states[unit].active_state != "active":
        return ""
    return admission.open_connections(_inbound(_pids((await systemd.properties(states[unit])).get("ControlGroup") or "")))


async def _running(systemd, table, sample, tenant) -> list[admission.Running]:
    """The tenants of the agent's GPU whose units are up, as admission.Running."""
    names = [t.name for t in table.tenants if t.gpu == tenant.gpu and t.name != tenant.name]
    states = await systemd.states([units.service(n) for n in names])
    out = []
    for name in names:
        state = states.get(units.service(name))
        if state is None or state.active_state not in UP:
            continue
        props = await systemd.properties(state)
        if state.sub_state == "start-pre" and not _admitted(name, props.get("InvocationID")):
            continue  # it waits for admission itself: nothing of its is on the GPU, nor promised
        pids = _pids(props.get("ControlGroup") or "")
        busy = ""
        if state.active_state != "active":
            busy = "starting" if state.active_state in ("activating", "reloading") else "stopping"
        else:
            busy = admission.open_connections(_inbound(pids)) or await _needed_by(systemd, props)
        out.append(admission.Running(table.tenant(name), sample.used_by(tenant.gpu, pids), busy,
                                     float(props.get("ActiveEnterTimestampMonotonic") or 0)))
    return out


async def _needed_by(systemd, props) -> str:
    """'needed by X' when an up agentkit unit wants or requires this one, else ''."""
    name = props.get("Id", "")[len(units.PREFIX):-len(".service")]
    own = (units.proxy(name), units.live(name))  # its own proxy and liveness probe need it, not an agent
    wanted = [u for u in list(props.get("RequiredBy") or ()) + list(props.get("WantedBy") or ())
              if u.startswith(units.PREFIX) and u.endswith(".service") and u not in own]
    if not wanted:
        return ""
    states = await systemd.states(wanted)
    up = sorted(u for u, s in states.items() if s.active_state in UP)
    return f"needed by {', '.join(up)}" if up else ""


def _pids(cgroup: str) -> list[int]:
    """Every process of a unit's cgroup and the cgroups below it: from cgroup.procs, else (a
    container where /sys/fs/cgroup is not the manager's view) from each process's own
    /proc/PID/cgroup."""
    if not cgroup:
        return []
    pids = []
    for directory, _, files in os.walk(os.path.join(CGROUP_ROOT, cgroup.lstrip("/"))):
        if "cgroup.procs" in files:
            try:
                with open(os.path.join(directory, "cgroup.procs"), encoding="ascii") as handle:
                    pids += [int(line) for line in handle if line.strip()]
            except OSError:
                continue
    if pids:
        return pids
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cgroup", encoding="utf-8", errors="replace") as handle:
                paths = [line.rstrip("\n").split(":", 2)[-1] for line in handle]
        except OSError:
            continue
        if any(path == cgroup or path.startswith(cgroup + "/") for path in paths):
            pids.append(int(entry))
    return pids


def _inbound(pids: list[int]) -> int:
    """Open TCP connections into a port these processes listen on: clients being served."""
    listening, established = set(), []
    for pid in pids:
        try:
            connections = psutil.Process(pid).net_connections(kind="tcp")
        except psutil.Error:
            continue
        for c in connections:
            if c.status == psutil.CONN_LISTEN:
                listening.add(c.laddr.port)
            elif c.status == psutil.CONN_ESTABLISHED and c.raddr:
                established.append(c.laddr.port)
    return sum(1 for port in established if port in listening)


async def _close_waiting(systemd, name: str) -> None:
    """Restart the agent's socket: clients queued on it are closed instead of waking it again."""
    for activation in ("native", "proxy"):
        socket = units.socket(name, activation)
        states = await systemd.states([socket])
        if socket in states and states[socket].active_state in UP:
            await systemd.queue("restart", socket)
            log.info(f"{name}: restarting {socket}: the clients waiting on it are closed")
            return


if __name__ == "__main__":
    main()
