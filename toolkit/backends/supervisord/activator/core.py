"""The Activator: the agents' public ports, their starts and readiness, their idle stops."""

from __future__ import annotations

import asyncio
import logging
import signal
import time
from functools import partial

from agentkit import proc, ready

from . import PROG
from .agent import Agent, StartFailed
from .control import Control
from .gpu import Admission, ledger_path
from .link import Link
from .rpc import ALREADY_STARTED, BAD_NAME, DOWN_STATES, NOT_RUNNING, UP_STATES, SupervisorUnreachable, fault_code

BACKLOG = 1024
READY_POLL = 0.01          # s between probes while a target starts (a command's: ready.COMMAND_INTERVAL)
STATE_POLL = 0.1           # s between looks at supervisord's state while a target starts
EXITED_GRACE = 1.0         # s a started program may sit in EXITED/STOPPED before we call it failed

log = logging.getLogger(PROG)


class Activator:
    """Every agent of the config: `listeners` are their bound public sockets, in the config's order;
    `supervisor` an rpc.Supervisor; `notifier`, if any, an sdnotify.Notifier told READY=1 and STOPPING=1."""

    def __init__(self, config, listeners, supervisor, notifier=None):
        self.config = config
        self.listeners = listeners
        self.rpc = supervisor
        self.notifier = notifier
        self.agents = {spec.name: Agent(spec) for spec in config.agents}
        for agent in self.agents.values():
            agent.deps = [self.agents[name] for name in agent.spec.depends_on]
            for dep in agent.deps:
                dep.dependants.append(agent)
        self.links = set()
        self.tasks = set()
        self.watchers = set()  # control.py's "events" clients: a queue each, of agent names
        self.admission = Admission(self, config.gpu, ledger_path(config.control)) if config.gpu else None

    def changed(self, agent):
        """Tell the watchers (the status service) that `agent` starts, is ready, failed or stopped."""
        for queue in list(self.watchers):
            try:
                queue.put_nowait(agent.name)
            except asyncio.QueueFull:
                self.watchers.discard(queue)  # it does not read: let go (control.py ends its stream)

    def spawn(self, coro):
        task = asyncio.get_running_loop().create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def run(self):
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        received = []

        def on_signal(signum):
            received.append(signal.Signals(signum).name)
            stop.set()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)
        servers = []
        for spec, sock in zip(self.config.agents, self.listeners):
            agent = self.agents[spec.name]
            servers.append(await loop.create_server(lambda agent=agent: Link(self, agent).client,
                                                    sock=sock, backlog=BACKLOG))
        where = ", ".join(f"{s.name} on {s.listen[0]}:{s.listen[1]}" for s in self.config.agents)
        log.info(f"fleet {self.config.fleet}, host {self.config.host}: listening for "
                 f"{len(self.config.agents)} agents ({where or 'none'}); supervisord at {self.config.supervisor}")
        if self.notifier is not None:
            self.notifier.send("READY=1", f"STATUS=listening for {len(self.config.agents)} agents")
        control = Control(self)
        await control.start()
        self.spawn(self.adopt())
        if self.agents:
            self.spawn(self.idle_loop())
        await stop.wait()
        if self.notifier is not None:
            self.notifier.send("STOPPING=1")
        log.info(f"{received[0] if received else 'stop'}: closing {len(servers)} listening sockets "
                 f"and {len(self.links)} connections")
        control.close()
        for server in servers:
            server.close()
        for link in list(self.links):
            link.abort()
        for task in list(self.tasks):
            task.cancel()
        for agent in self.agents.values():
            for task in (agent.start_task, agent.stop_task):
                if task is not None:
                    task.cancel()
        await asyncio.sleep(0)

    # -- what runs already

    async def adopt(self):
        """Agents already up when we start (we were restarted): theirs to idle-stop, ready if they answer."""
        try:
            infos = await self.rpc.call("getAllProcessInfo")
        except Exception as exc:  # noqa: BLE001 - logged; starts call supervisord again anyway
            log.warning(f"cannot read supervisord's process list: {exc}")
            return
        by_name = {}
        for info in infos:
            by_name[f"{info['group']}:{info['name']}"] = info
            if info["group"] == info["name"]:
                by_name[info["name"]] = info
        for agent in self.agents.values():
            info = by_name.get(agent.spec.program)
            if info is None:
                log.warning(f"{agent.name}: supervisord has no program {agent.spec.program!r}; "
                            "its connections will be closed")
            elif info["statename"] in UP_STATES:
                agent.active = True
                agent.last = time.monotonic()
                if not agent.ready and info["statename"] == "RUNNING":
                    agent.ready = await self.probe(agent)

    # -- starting

    async def ensure(self, agent):
        """Return once agent's target accepts connections, starting it (and its dependencies) if
        needed; StartFailed if it did not. Concurrent callers share one start."""
        task = agent.start_task
        if task is None:
            task = agent.start_task = asyncio.get_running_loop().create_task(self.start(agent))
            task.add_done_callback(partial(self._start_done, agent))
        await asyncio.shield(task)

    @staticmethod
    def _start_done(agent, task):
        if agent.start_task is task:
            agent.start_task = None
        if not task.cancelled():
            task.exception()  # retrieved: every waiter has seen it, or none is left

    async def start(self, agent):
        # The dependencies start beside the agent, not before it: their public ports are ours,
        # so a request of the agent's waits in their Link until each is ready. A cold chain
        # costs its slowest member, not the sum.
        # Each is asked, ready or not: a dependency that crashed or was stopped behind our back
        # still looks ready here, and would otherwise start only when the first request reaches it.
        for dep in agent.deps:
            self.spawn(self._start_dependency(agent, dep))
        async with agent.lock:
            loop = asyncio.get_running_loop()
            began = loop.time()
            starts = agent.starts
            try:
                info = await self.info(agent)
                if info["statename"] in UP_STATES and await self.probe(agent):
                    self._ready(agent)  # up and ready: e.g. started for another dependant just now
                    return
                self.changed(agent)
                if (self.admission is not None and self.admission.wants(agent)
                        and info["statename"] in DOWN_STATES):  # up already: its memory is NVML's to count
                    # As under systemd (ExecStartPre=, then ExecStart=), the wait for room and
                    # the start have a start_timeout each.
                    await self.admission.admit(agent, began + agent.spec.start_timeout)
                    info = await self.info(agent)
                await self.start_program(agent, info, loop.time())
            except StartFailed as exc:
                log.warning(f"{agent.name}: start failed after {(loop.time() - began) * 1000:.0f} ms: "
                            f"{exc}{_closing(agent)}")
                agent.why = str(exc)
                self.changed(agent)
                raise
            finally:
                if self.admission is not None:
                    self.admission.release(agent)
            if agent.starts != starts:
                agent.last_start_s = round(loop.time() - began, 6)
            agent.why = ""
            self._ready(agent)
            self.changed(agent)

    async def _start_dependency(self, agent, dep):
        try:
            await self.ensure(dep)
        except StartFailed as exc:
            log.warning(f"{agent.name}: its dependency {dep.name} did not start: {exc}")

    @staticmethod
    def _ready(agent):
        agent.ready = True
        agent.active = True
        agent.last = time.monotonic()

    async def probe(self, agent, timeout=1.0):
        """Is the agent's target ready, by its probe: accepts a connection, answers 2xx, exits 0?"""
        kind = agent.spec.ready[0]
        host, port = agent.spec.target
        try:
            if kind == "command":
                return await asyncio.wait_for(self._command_ok(agent.spec.ready[1:]), max(timeout, 5.0))
            reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
        except (OSError, asyncio.TimeoutError):
            return False
        try:
            if ready.connected_to_itself(writer.get_extra_info("sockname"), writer.get_extra_info("peername")):
                return False
            if kind == "port":
                return True
            writer.write(ready.http_request(host, agent.spec.ready[1]))
            head = await asyncio.wait_for(reader.readuntil(b"\r\n"), timeout)
            status = ready.http_status(head)
            return status is not None and 200 <= status < 300
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            return False
        finally:
            writer.close()

    @staticmethod
    async def _command_ok(argv):
        process = await asyncio.create_subprocess_exec(*argv, stdin=asyncio.subprocess.DEVNULL,
                                                       stdout=asyncio.subprocess.DEVNULL,
                                                       stderr=asyncio.subprocess.DEVNULL)
        try:
            return await process.wait() == 0
        except asyncio.CancelledError:
            process.kill()
            await process.wait()
            raise

    async def info(self, agent):
        try:
            return await self.rpc.call("getProcessInfo", agent.spec.program)
        except SupervisorUnreachable as exc:
            raise StartFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault and friends
            if fault_code(exc) == BAD_NAME:
                raise StartFailed(f"supervisord has no program {agent.spec.program!r}") from None
            raise StartFailed(f"supervisord: getProcessInfo({agent.spec.program!r}) failed: {exc}") from None

    async def start_program(self, agent, info, began):
        """startProcess(program) as needed, then wait until the target accepts a connection.

        `info` is supervisord's getProcessInfo of the program, read at loop time `began`.
        """
        spec = agent.spec
        loop = asyncio.get_running_loop()
        deadline = began + spec.start_timeout
        was = state = info["statename"]
        called = False
        if state in DOWN_STATES:
            await self.start_process(agent)
            called = True
        down_since = None
        next_look = loop.time() + STATE_POLL
        while True:
            if await self.probe(agent, timeout=max(0.05, min(1.0, deadline - loop.time()))):
                how = f"was {was}" if called else f"supervisord had it {was} and (re)started it"
                log.info(f"{agent.name}: started in {(loop.time() - began) * 1000:.0f} ms ({how}); "
                         f"{spec.target[0]}:{spec.target[1]} is ready ({' '.join(spec.ready)})")
                return
            now = loop.time()
            if now >= deadline:
                raise StartFailed(f"{spec.target[0]}:{spec.target[1]} was not ready ({' '.join(spec.ready)}) "
                                  f"within {spec.start_timeout:g} s (supervisord: {state})")
            if now >= next_look:
                info = await self.info(agent)
                state = info["statename"]
                next_look = loop.time() + STATE_POLL
                if state == "FATAL" and (called or was in UP_STATES):
                    raise StartFailed(f"supervisord gave up on it: FATAL "
                                      f"({_why(info, await self.last_words(agent))})")
                if state in DOWN_STATES:
                    if not called:
                        await self.start_process(agent)
                        called = True
                    elif down_since is None:
                        down_since = now
                    elif now - down_since >= EXITED_GRACE:
                        raise StartFailed(f"supervisord: {state} ({_why(info, await self.last_words(agent))}) "
                                          "before it was ready")
                else:
                    down_since = None
            await asyncio.sleep(ready.COMMAND_INTERVAL if spec.ready[0] == "command" else READY_POLL)

    async def last_words(self, agent):
        """The last line the program wrote (stderr, else stdout), for a failure's log line."""
        for method in ("tailProcessStderrLog", "tailProcessStdoutLog"):
            try:
                text, _, _ = await self.rpc.call(method, agent.spec.program, 0, 4096)
            except Exception:  # noqa: BLE001 - no log file, unreachable: say nothing
                continue
            said = proc.last_line(text)
            if said:
                return said
        return ""

    async def start_process(self, agent):
        agent.active = True  # from here on, an idle check may stop what we started
        agent.starts += 1
        try:
            await self.rpc.call("startProcess", agent.spec.program, False)
        except SupervisorUnreachable as exc:
            raise StartFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault
            code = fault_code(exc)
            if code == ALREADY_STARTED:
                return
            if code is not None:
                raise StartFailed(f"supervisord could not start program {agent.spec.program!r}: "
                                  f"{exc.faultString}") from None
            raise StartFailed(f"startProcess({agent.spec.program!r}) failed: {exc}") from None

    # -- stopping

    async def idle_loop(self):
        interval = min(1.0, min(a.spec.idle_stop for a in self.agents.values()) / 4)
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for agent in self.agents.values():
                if agent.touched:
                    agent.touched = False
                    agent.last = now
                # Like Requires= under systemd: a dependency stays up while anything that needs it
                # is up, whether or not it holds a connection right now; it stops after them.
                if (agent.active and agent.conns == 0 and now - agent.last >= agent.spec.idle_stop
                        and agent.start_task is None and agent.stop_task is None and not agent.lock.locked()
                        and not any(d.active for d in agent.dependants)):
                    agent.ready = False  # new connections go through ensure(), which waits for the stop
                    agent.stop_task = self.spawn(self.stop(agent))

    async def stop(self, agent):
        try:
            await self._stop(agent)
        except Exception as exc:  # noqa: BLE001 - logged; the next idle check tries again
            agent.last = time.monotonic()
            log.warning(f"{agent.name}: stop failed, trying again after idle_stop: {exc}")
        finally:
            agent.stop_task = None

    async def stop_now(self, agent, why):
        """Stop an idle agent at once (GPU admission makes room); whether it was stopped. A
        connection that came meanwhile keeps it up."""
        if agent.lock.locked():
            return False  # it starts or stops right now (and may wait for this very admission)
        was_ready, agent.ready = agent.ready, False  # new connections go through ensure(), which waits
        async with agent.lock:
            if agent.conns:
                agent.ready = was_ready
                return False
            began = time.monotonic()
            try:
                await self.rpc.call("stopProcess", agent.spec.program, True)
            except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault, SupervisorUnreachable
                agent.active = agent.active and fault_code(exc) != NOT_RUNNING
                agent.ready = was_ready and agent.active
                if fault_code(exc) != NOT_RUNNING:
                    log.warning(f"{agent.name}: stop {why} failed: {getattr(exc, 'faultString', None) or exc}")
                return False  # nothing was stopped: it did not run, or it still does
            agent.active = False
            self.changed(agent)
            log.info(f"{agent.name}: stopped {why}, in {(time.monotonic() - began) * 1000:.0f} ms")
            return True

    async def _stop(self, agent):
        async with agent.lock:
            idle = time.monotonic() - agent.last
            if agent.conns or idle < agent.spec.idle_stop or any(d.active for d in agent.dependants):
                return  # a connection or a dependant came meanwhile (it may be waiting for this lock)
            began = time.monotonic()
            try:
                await self.rpc.call("stopProcess", agent.spec.program, True)
            except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault, SupervisorUnreachable
                if fault_code(exc) == NOT_RUNNING:
                    agent.active = False
                    return
                raise RuntimeError(f"stopProcess: {getattr(exc, 'faultString', None) or exc}") from None
            agent.active = False
            self.changed(agent)
            log.info(f"{agent.name}: stopped after {idle:.1f} s without connections "
                     f"(idle_stop {agent.spec.idle_stop:g} s), in {(time.monotonic() - began) * 1000:.0f} ms")


def _closing(agent):
    return f"; closing {agent.waiting} waiting connection(s)" if agent.waiting else ""


def _why(info, last_words=""):
    """What supervisord knows about a failed start, in a few words."""
    parts = [info.get("spawnerr") or info.get("description") or "no details"]
    if info.get("statename") == "EXITED":  # supervisord forgets the status of an exit 'too quickly'
        parts.append(f"exit status {info.get('exitstatus')}")
    if last_words:
        parts.append(f"its log ends: {last_words!r}")
    log_file = info.get("stderr_logfile") or info.get("stdout_logfile")
    if log_file:
        parts.append(f"see {log_file}")
    return "; ".join(parts)
