"""The supervisord backend at run time: start or update a per-user supervisord, stop it, read its state.

One supervisord per host of the manifest, each in its own state directory
(default `$XDG_STATE_HOME/agentkit/<fleet>-<host>`, else
`~/.local/state/agentkit/<fleet>-<host>`), holding supervisord.conf,
activator.json, the control socket (mode 0700), the pid file and logs/.
`supervisorctl` and `agentkit status` talk to it over that socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
import xmlrpc.client
from dataclasses import dataclass
from typing import Callable

from ... import files, graph, proc, ready, values
from ...gpu import admission
from ...errors import AgentkitError
from ...model import Manifest
from ...router.command import router_on
from ...files import RenderedFile
from .. import AgentStatus, Changes, rss
from . import render
from .render import ACTIVATOR, ACTIVATOR_CONFIG, CONF, ROUTER, SOCKET


def default_state_dir(manifest: Manifest, host: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(os.path.abspath(base), "agentkit", f"{manifest.name}-{host}")


def _pointer(manifest: Manifest, host: str) -> str:
    return default_state_dir(manifest, host) + ".last"


def remember(manifest: Manifest, host: str, state_dir: str) -> None:
    """Note where `up` ran this host's supervisord, so `down` and `status` without --state-dir find it."""
    pointer = _pointer(manifest, host)
    if os.path.abspath(state_dir) == default_state_dir(manifest, host):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(pointer)
        return
    os.makedirs(os.path.dirname(pointer), mode=0o700, exist_ok=True)
    files.atomic_write(pointer, os.path.abspath(state_dir) + "\n", 0o600)


def recall(manifest: Manifest, host: str) -> str | None:
    """The state directory the last `up` of this host used, when it was not the default."""
    try:
        with open(_pointer(manifest, host), encoding="utf-8") as handle:
            return handle.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def rpc(state_dir: str):
    from supervisor.xmlrpc import SupervisorTransport  # the supervisor package's own client transport
    url = "unix://" + os.path.join(state_dir, SOCKET)
    return xmlrpc.client.ServerProxy("http://127.0.0.1", transport=SupervisorTransport(None, None, url))


def running(state_dir: str) -> bool:
    """Whether a supervisord answers on this state directory's socket."""
    if not os.path.exists(os.path.join(state_dir, SOCKET)):
        return False
    try:
        return rpc(state_dir).supervisor.getState()["statename"] == "RUNNING"
    except (OSError, xmlrpc.client.Error):
        return False


def _program(name: str) -> list[str]:
    """supervisord/supervisorctl beside this interpreter (our venv), else on PATH."""
    here = os.path.join(os.path.dirname(sys.executable), name)
    return [here] if os.path.exists(here) else [name]


@dataclass
class UpResult:
    host: str
    state_dir: str
    started: bool  # supervisord was started (else updated)
    essential: list[str]
    optional: list[str]
    failed: dict[str, str]


def _probes(agents, bin_dir: str) -> dict:
    """name -> (probe, interval, start_timeout) of each essential agent, as the activator probes
    an optional one (render.probe: notify and started become the port probe, supervisord has no
    sd_notify); supervisord itself only knows that a process runs."""
    from .render import probe as probe_of

    probes = {}
    for agent in agents:
        if agent.essential:
            kind, *rest = probe_of(agent, bin_dir, agent.port)
            budget = values.seconds(agent.start_timeout)
            probes[agent.name] = ready.probe_for(kind, "127.0.0.1", agent.port, rest[0] if kind == "http" else None,
                                                 rest if kind == "command" else None, budget) + (budget,)
    return probes


def router_here(manifest: Manifest, host: str) -> bool:
    """Whether `host`'s supervisord runs the router (the program render.ROUTER)."""
    return router_on(manifest, host) is not None


def _router_probe(manifest: Manifest) -> tuple:
    """(probe, interval, budget) of the router: its port accepts (under systemd it says READY=1
    once it listens; supervisord has no sd_notify)."""
    router = manifest.router
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(router.bind, router.bind)
    budget = 30.0  # the router unit's TimeoutStartSec=
    return ready.probe_for("port", host, router.port) + (budget,)


def up(manifest: Manifest, host: str, profile: str | None, planned: list[RenderedFile], changes: Changes, *,
       state_dir: str, bin_dir: str, timeout: float = 120.0, progress: Callable[[str], None] = print) -> UpResult:
    """Write the files of `planned` that `changes` names (plan_supervisord() for state_dir, and
    what differs from the files there), then start supervisord or have it take them up."""
    os.makedirs(os.path.join(state_dir, "logs"), mode=0o700, exist_ok=True)
    os.chmod(state_dir, 0o700)
    conf = os.path.join(state_dir, CONF)
    changed = sorted(changes.added + changes.changed)
    wanted = {item.path: item for item in planned}
    for name in changed:
        files.atomic_write(os.path.join(state_dir, name), wanted[name].text, 0o600)
    agents = graph.on_host(manifest, host, profile)
    essential = [a.name for a in agents if a.essential]
    optional = [a.name for a in agents if a.optional]
    # What supervisord starts itself (autostart=true) and up waits for: the activator, the
    # router on its host, the essential agents.
    wanted = [ACTIVATOR] + ([ROUTER] if router_here(manifest, host) else []) + essential

    started = not running(state_dir)
    if started:
        progress(f"{host}: starting supervisord ({conf})")
        proc.run(_program("supervisord") + ["-c", conf], timeout=60)
    else:
        progress(f"{host}: supervisord is running; {'updating: ' + ', '.join(changed) if changed else 'no change'}")
        if CONF in changed:
            proc.run(_program("supervisorctl") + ["-c", conf, "update"], timeout=120)
        if ACTIVATOR_CONFIG in changed:
            rpc(state_dir).supervisor.stopProcess(ACTIVATOR, True)
            rpc(state_dir).supervisor.startProcess(ACTIVATOR, True)
        again = _start_stopped(state_dir, wanted)
        if again:
            progress(f"{host}: starting again: {', '.join(f'{name} ({state})' for name, state in again)}")

    # Wait for them: RUNNING, or given up on.
    deadline = time.monotonic() + timeout
    failed: dict[str, str] = {}
    for _ in range(int(timeout / 0.1) + 1):
        try:
            infos = {i["name"]: i for i in rpc(state_dir).supervisor.getAllProcessInfo()}
        except (OSError, xmlrpc.client.Error):
            infos = {}
        pending = []
        for name in wanted:
            info = infos.get(name)
            state = info["statename"] if info else "MISSING"
            if state in ("FATAL", "EXITED"):
                # supervisord's words (e.g. "Exited too quickly"), then the program's own last line.
                said = _last_words(state_dir, name)
                failed[name] = f"{state}: {info.get('description', '')}".strip() + (f": {said}" if said else "")
            elif state != "RUNNING":
                pending.append(name)
        if not pending or time.monotonic() > deadline:
            for name in pending:
                failed[name] = "did not reach RUNNING in time"
            break
        time.sleep(0.1)
    # Then readiness, as systemd's ExecStartPost= probe holds a unit: what up reports as
    # running answers.
    probes = _probes(agents, bin_dir)
    if router_here(manifest, host):
        probes[ROUTER] = _router_probe(manifest)
    for name, (probe, interval, budget) in probes.items():
        if name in failed:
            continue
        pid = (infos.get(name) or {}).get("pid") or None
        ok, said = ready.wait(probe, max(0.0, min(budget, deadline - time.monotonic())), interval, pid)
        if not ok:
            # A program slower to fail than startsecs (a busy machine) is RUNNING when it exits:
            # its own last line says why, as for FATAL above.
            last = _last_words(state_dir, name)
            failed[name] = f"running, but not ready: {said}" + (f": {last}" if last else "")
    return UpResult(host, state_dir, started, essential, optional, failed)


def _start_stopped(state_dir: str, names: list[str]) -> list[tuple[str, str]]:
    """Start those of `names` (autostart programs) that supervisord gave up on or that were
    stopped: a second up tries again what failed, as systemd's start job does for a failed
    unit (e.g. the router, once its key file is fixed). (name, state before) of each."""
    server = rpc(state_dir).supervisor
    try:
        infos = {i["name"]: i for i in server.getAllProcessInfo()}
    except (OSError, xmlrpc.client.Error):
        return []
    again = []
    for name in names:
        state = (infos.get(name) or {}).get("statename")
        if state in ("FATAL", "EXITED", "STOPPED"):
            with contextlib.suppress(xmlrpc.client.Fault):  # started meanwhile, or gone
                server.startProcess(name, False)
                again.append((name, state))
    return again


def down(state_dir: str, timeout: float = 120.0) -> bool:
    """Stop every program and supervisord itself; False when none was running."""
    if not running(state_dir):
        return False
    pid_file = os.path.join(state_dir, "supervisord.pid")
    try:
        with open(pid_file, encoding="ascii") as handle:
            pid = int(handle.read().strip())
    except (OSError, ValueError):
        pid = None
    deadline = time.monotonic() + timeout
    # supervisord's own shutdown stops its programs one priority at a time, each after a tick
    # of its loop (about a second apiece, 70 s for the reference fleet): signal them all at
    # once instead, wait until they are down, then shut it down with nothing left to stop.
    server = rpc(state_dir).supervisor
    with contextlib.suppress(OSError, xmlrpc.client.Error):
        server.stopAllProcesses(False)
        for _ in range(int(timeout / 0.05) + 1):
            if time.monotonic() > deadline or not any(
                    info["statename"] in ("RUNNING", "STARTING", "STOPPING", "BACKOFF")
                    for info in server.getAllProcessInfo()):
                break
            time.sleep(0.05)
    with contextlib.suppress(xmlrpc.client.Fault):  # SHUTDOWN_STATE: it is stopping already
        server.shutdown()
    for _ in range(int(timeout / 0.1) + 1):
        if pid is None or not os.path.exists(f"/proc/{pid}"):
            return True
        if time.monotonic() > deadline:
            break
        time.sleep(0.1)
    raise AgentkitError(f"supervisord (pid {pid}) did not stop within {timeout:g} s")


_STATES = {"RUNNING": "active", "STARTING": "starting", "BACKOFF": "starting", "STOPPING": "stopping",
           "FATAL": "failed", "UNKNOWN": "failed"}


def _last_words(state_dir: str, program: str) -> str | None:
    """The last line a program wrote (its log holds stdout and stderr), or None."""
    try:
        text, _, _ = rpc(state_dir).supervisor.tailProcessStdoutLog(program, 0, 4096)
    except (OSError, xmlrpc.client.Error):
        return None
    return proc.last_line(text)


def state_of(info: dict | None, optional: bool, activator_up: bool, held: dict | None = None) -> tuple[str, str]:
    """(state, detail) of an agent from supervisord's process info and, for an optional agent, the
    activator's snapshot of it (control.py "state"): the same states as under systemd. supervisord
    says STARTING for startsecs after the start; the activator's probe knows when it is ready."""
    if info is None:
        return "not-installed", "no such program"
    detail = info["statename"]
    state = _STATES.get(detail)
    if held is not None and detail in ("STARTING", "RUNNING"):
        if held.get("ready"):
            return "active", f"{detail}, ready ({'probed by' if detail == 'STARTING' else 'behind'} the activator)"
        if detail == "RUNNING" or held.get("starting"):
            return "starting", f"{detail}, not ready yet"
    if state is None:  # STOPPED, EXITED
        if detail == "EXITED" and info.get("exitstatus"):
            return "failed", f"EXITED with status {info['exitstatus']}"
        if optional and activator_up:
            return "dormant", f"{detail}, port held by the activator"
        return "inactive", detail
    if detail == "FATAL":
        return state, f"FATAL: start limit hit ({info.get('description', '')})"
    return state, detail


def held_agents(state_dir: str) -> dict[str, dict]:
    """The activator's snapshot of every optional agent, or {} when it does not answer."""
    try:
        return control(state_dir, {"op": "state"}, timeout=5)["agents"]
    except AgentkitError:
        return {}


def collect(manifest: Manifest, host: str, profile: str | None, state_dir: str) -> list[AgentStatus]:
    """Every agent of `host`: the same states as under systemd, read from supervisord and the activator."""
    infos = {i["name"]: i for i in rpc(state_dir).supervisor.getAllProcessInfo()}
    activator_up = infos.get(ACTIVATOR, {}).get("statename") == "RUNNING"
    held = held_agents(state_dir) if activator_up else {}
    rows = []
    for agent in graph.on_host(manifest, host, profile):
        info = infos.get(agent.name)
        state, detail = state_of(info, agent.optional, activator_up, held.get(agent.name))
        # Failed, or starting again after an exit that was not clean (BACKOFF, or STARTING once more):
        # why, in the program's own words.
        if info is not None and (state == "failed" or info["statename"] == "BACKOFF"
                                 or (state == "starting" and info.get("exitstatus"))):
            said = _last_words(state_dir, agent.name)
            if said:
                detail += f": {said}"
        why = (held.get(agent.name) or {}).get("why")
        if why and state != "active":  # the activator's: e.g. no room on its GPU
            detail += f"; {admission.REFUSED if why.startswith(admission.NO_ROOM) else 'its last start failed'}: {why}"
        pid = info["pid"] if info else 0
        since = info["start"] if info and state in ("active", "starting") else (info or {}).get("stop") or None
        last = (held.get(agent.name) or {}).get("last_start_s")
        rows.append(AgentStatus(agent.name, agent.essential, agent.name, state, detail,
                                float(since) if since else None, None, rss(pid) if pid else None, last, None))
    return rows


def control(state_dir: str, request: dict, timeout: float = 30.0) -> dict:
    """One request to the activator's control socket (activator/control.py) and its answer."""
    path = os.path.join(state_dir, render.CONTROL)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(timeout)
            sock.connect(path)
            sock.sendall(json.dumps(request).encode() + b"\n")
            answer = sock.makefile("rb").readline()
    except PermissionError:
        raise AgentkitError(f"{path}: only the user who ran agentkit up (or root) may ask the activator") from None
    except OSError as exc:
        raise AgentkitError(f"the activator does not answer on {path}: {exc.strerror or exc}") from None
    try:
        data = json.loads(answer)
    except ValueError:
        raise AgentkitError(f"the activator's answer on {path} is not JSON: {answer[:80]!r}") from None
    if "error" in data:
        raise AgentkitError(f"the activator refused: {data['error']}")
    return data


def start_essential(state_dir: str, program: str, *, wait: bool, timeout: float) -> str | None:
    """Start an essential agent's program if supervisord does not run it; None, or why not."""
    server = rpc(state_dir).supervisor
    try:
        if server.getProcessInfo(program)["statename"] in ("RUNNING", "STARTING", "BACKOFF"):
            return None
        server.startProcess(program, wait)
    except xmlrpc.client.Fault as exc:
        return f"supervisord: {exc.faultString}"
    return None

