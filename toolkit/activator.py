"""agentkit-activator: on-demand start of optional agents under supervisord.

supervisord has no socket activation. The activator stands in for it: supervisord
keeps it running (``[program:agentkit-activator]``, autostart, priority 1), and it

- listens on the public port of every optional agent of the host, from the start,
  so a dormant agent's port never refuses a connection;
- on a connection for agent X whose target (X's private address) does not accept
  connections, starts X's dormant dependencies in order and then X, each through
  supervisord's XML-RPC API (``startProcess``), and counts X ready once its target
  accepts a TCP connection (supervisord has no readiness notification);
- forwards bytes both ways between the client and the target (half-close too);
- stops X (``stopProcess``) once it has had no connection for its idle time and
  nothing that depends on it is up (as Requires= keeps a dependency up under systemd).

While X starts (or supervisord restarts it after a crash), its connections wait
for the same start, never for a second one; a start that fails (supervisord gives
up, FATAL; the process exits; the start timeout passes) closes the connections
that waited for it.

Design: one asyncio loop (uvloop when installed) does everything on the request
path: accepting, connecting to the target, moving bytes with Protocol callbacks
(no task and no copy per chunk beyond the socket's own). A warm agent costs one
connect() to its target and no supervisord call; only when that connect is refused
does the slow path run (supervisord's state, dependencies, startProcess, the
readiness poll), once per agent however many connections wait for it. Blocking
XML-RPC calls, only on starts and stops, run on a small thread pool, one
ServerProxy per thread.

Its configuration (``--config PATH``, JSON) is written by agentkit's supervisord
renderer::

    {"fleet": "lab", "host": "lab", "supervisor": "unix:///abs/state/supervisor.sock",
     "agents": [{"name": "X", "program": "X", "listen": ["0.0.0.0", 7101],
                 "target": ["127.0.0.1", 27101], "depends_on": ["Y", "Z"],
                 "idle_stop": 120.0, "start_timeout": 30.0}]}

``depends_on`` is transitive and in start order (dependencies first).
"""

from __future__ import annotations

import argparse
import asyncio
import difflib
import ipaddress
import json
import math
import signal
import socket
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial

from . import __version__
from .errors import AgentkitError

PROG = "agentkit-activator"
BACKLOG = 1024
READY_POLL = 0.02          # s between connect() attempts while a target starts
STATE_POLL = 0.1           # s between looks at supervisord's state while a target starts
EXITED_GRACE = 1.0         # s a started program may sit in EXITED/STOPPED before we call it failed
RPC_CONNECT_TIMEOUT = 30.0  # s to keep trying supervisord's socket (it may not exist yet)
RPC_TIMEOUT = 120.0        # s for one XML-RPC call (stopProcess waits for the stop)
RPC_THREADS = 4
HOLD_LIMIT = 256 * 1024    # bytes of a client's we hold while its target starts, then stop reading
CONNECT_ATTEMPTS = 3       # starts in a row after which a target that refuses is given up

# supervisord's process states (supervisor.states.ProcessStates), by name.
UP_STATES = frozenset(("STARTING", "RUNNING", "BACKOFF"))
DOWN_STATES = frozenset(("STOPPED", "EXITED", "FATAL"))
# supervisord's fault codes (supervisor.xmlrpc.Faults).
BAD_NAME, ALREADY_STARTED, NOT_RUNNING = 10, 60, 70


class ConfigError(AgentkitError):
    """The activator's configuration file is unusable: every problem, one line each."""

    def __init__(self, problems):
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class ListenError(AgentkitError):
    """A public port we cannot listen on."""


class StartFailed(Exception):
    """An agent did not become ready; the message says why."""


class SupervisorUnreachable(Exception):
    """supervisord's XML-RPC socket did not answer in time."""


# --- configuration ---------------------------------------------------------------

@dataclass(frozen=True)
class AgentSpec:
    name: str
    program: str
    listen: tuple[str, int]
    target: tuple[str, int]
    depends_on: tuple[str, ...]
    idle_stop: float
    start_timeout: float


@dataclass(frozen=True)
class Config:
    path: str
    fleet: str
    host: str
    supervisor: str
    agents: tuple[AgentSpec, ...]


TOP_KEYS = ("fleet", "host", "supervisor", "agents")
AGENT_KEYS = ("name", "program", "listen", "target", "depends_on", "idle_stop", "start_timeout")


def _unknown(key, known):
    close = difflib.get_close_matches(key, known, n=1)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    return f"unknown key{hint}; expected {', '.join(known)}"


def _type(value):
    return "null" if value is None else {dict: "object", list: "array", str: "string",
                                         bool: "boolean"}.get(type(value), type(value).__name__)


def _nonempty_str(value):
    return isinstance(value, str) and value.strip() != "" and value == value.strip()


def _address(value):
    """[host, port] with host an IP address -> (host, port), or an error message."""
    if not (isinstance(value, list) and len(value) == 2):
        return None, f"expected [host, port], got {json.dumps(value)}"
    host, port = value
    if not isinstance(host, str):
        return None, f"host: expected an IP address as a string, got {json.dumps(host)}"
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return None, f"host: expected an IP address (e.g. 127.0.0.1 or ::1), got {host!r}"
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        return None, f"port: expected a TCP port from 1 to 65535, got {json.dumps(port)}"
    return (host, port), None


def _seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        return None, f"expected seconds above zero, got {json.dumps(value)}"
    return float(value), None


def _overlap(a, b):
    """Two listen addresses on the same port that cannot both be bound."""
    if a[1] != b[1]:
        return False
    wild = ("0.0.0.0", "::")
    return a[0] == b[0] or a[0] in wild or b[0] in wild


def parse_config(data, path="<config>"):
    """The JSON document (already parsed) -> Config, or ConfigError with every problem."""
    problems = []

    def problem(where, message):
        problems.append(f"{path}: {where}: {message}" if where else f"{path}: {message}")

    if not isinstance(data, dict):
        raise ConfigError([f"{path}: expected a JSON object at the top, got {_type(data)}"])
    for key in data:
        if key not in TOP_KEYS:
            problem(key, _unknown(key, TOP_KEYS))
    for key in TOP_KEYS:
        if key not in data:
            problem(key, "missing")
    for key in ("fleet", "host"):
        if key in data and not _nonempty_str(data[key]):
            problem(key, f"expected a non-empty string, got {json.dumps(data[key])}")
    url = data.get("supervisor")
    if "supervisor" in data:
        if not isinstance(url, str) or not (
                (url.startswith("unix://") and url[len("unix://"):].startswith("/"))
                or (url.startswith("http://") and len(url) > len("http://"))):
            problem("supervisor", "expected supervisord's server URL, unix:///absolute/path.sock "
                                  f"or http://host:port, got {json.dumps(url)}")
    raw_agents = data.get("agents", [])
    if not isinstance(raw_agents, list):
        problem("agents", f"expected an array of agents, got {_type(raw_agents)}")
        raw_agents = []

    parsed = []  # (index, where, fields or None)
    names, programs = {}, {}
    for i, raw in enumerate(raw_agents):
        where = f"agents[{i}]"
        if not isinstance(raw, dict):
            problem(where, f"expected an object, got {_type(raw)}")
            continue
        name = raw.get("name")
        if _nonempty_str(name):
            where = f"agents[{i}] ({name})"
        fields, ok = {}, True
        for key in raw:
            if key not in AGENT_KEYS:
                problem(f"{where}.{key}", _unknown(key, AGENT_KEYS))
                ok = False
        for key in AGENT_KEYS:
            if key not in raw:
                problem(f"{where}.{key}", "missing")
                ok = False
        for key in ("name", "program"):
            if key in raw:
                if _nonempty_str(raw[key]) and not any(c.isspace() for c in raw[key]):
                    fields[key] = raw[key]
                else:
                    problem(f"{where}.{key}", f"expected a non-empty string without spaces, "
                                              f"got {json.dumps(raw[key])}")
                    ok = False
        for key in ("listen", "target"):
            if key in raw:
                value, error = _address(raw[key])
                if error:
                    problem(f"{where}.{key}", error)
                    ok = False
                fields[key] = value
        for key in ("idle_stop", "start_timeout"):
            if key in raw:
                value, error = _seconds(raw[key])
                if error:
                    problem(f"{where}.{key}", error)
                    ok = False
                fields[key] = value
        deps = raw.get("depends_on")
        if "depends_on" in raw:
            if not isinstance(deps, list) or not all(isinstance(d, str) for d in deps):
                problem(f"{where}.depends_on", f"expected an array of agent names, got {json.dumps(deps)}")
                deps, ok = None, False
            else:
                fields["depends_on"] = tuple(deps)
        if "name" in fields:
            if fields["name"] in names:
                problem(f"{where}.name", f"duplicate agent name, also agents[{names[fields['name']]}]")
                ok = False
            else:
                names[fields["name"]] = i
        if "program" in fields:
            if fields["program"] in programs:
                problem(f"{where}.program", f"program {fields['program']!r} is also "
                                            f"agents[{programs[fields['program']]}]'s")
                ok = False
            else:
                programs[fields["program"]] = i
        parsed.append((i, where, fields if ok else None, fields))

    # Relations between agents: addresses, and dependencies (names must exist,
    # the list must be transitive and in start order).
    listens = []
    for i, where, _, fields in parsed:
        listen, target = fields.get("listen"), fields.get("target")
        if listen:
            for j, other_where, other in listens:
                if _overlap(listen, other):
                    problem(f"{where}.listen", f"{listen[0]}:{listen[1]} clashes with {other_where}'s "
                                               f"{other[0]}:{other[1]}")
                    break
            listens.append((i, where, listen))
        if listen and target and _overlap(listen, target) and target[0] not in ("0.0.0.0", "::"):
            problem(f"{where}.target", f"{target[0]}:{target[1]} is the agent's own public address "
                                       "(the activator would forward to itself)")
    for i, where, _, fields in parsed:
        target = fields.get("target")
        if target:
            for j, other_where, listen in listens:
                if j != i and _overlap(listen, target):
                    problem(f"{where}.target", f"{target[0]}:{target[1]} is {other_where}'s public "
                                               "address (targets are the agents' private addresses)")
    deps_of = {fields["name"]: fields.get("depends_on") for _, _, _, fields in parsed if "name" in fields}
    for i, where, _, fields in parsed:
        deps = fields.get("depends_on")
        if deps is None:
            continue
        seen = set()
        for k, dep in enumerate(deps):
            at = f"{where}.depends_on[{k}]"
            if dep == fields.get("name"):
                problem(at, "an agent cannot depend on itself")
            elif dep in seen:
                problem(at, f"{dep!r} is listed twice")
            elif dep not in deps_of:
                close = difflib.get_close_matches(dep, list(deps_of), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problem(at, f"unknown agent {dep!r}{hint}: dependencies must be agents of this file")
            else:
                missing = [d for d in (deps_of[dep] or ()) if d not in seen and d != dep]
                if missing:
                    problem(at, f"{dep!r} depends on {', '.join(map(repr, missing))}, which must come "
                                "before it (depends_on is transitive, in start order)")
            seen.add(dep)
    if problems:
        raise ConfigError(problems)
    agents = tuple(AgentSpec(**fields) for _, _, fields, _ in parsed)
    return Config(path=path, fleet=data["fleet"], host=data["host"], supervisor=url, agents=agents)


def load_config(path):
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the activator's configuration: {exc.strerror}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text: {exc.reason}"]) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError([f"{path}:{exc.lineno}:{exc.colno}: not valid JSON: {exc.msg}"]) from None
    return parse_config(data, path)


# --- listening -------------------------------------------------------------------

def listen_all(config):
    """Listening sockets for every agent's public address, or ListenError (none left open)."""
    socks = []
    try:
        for spec in config.agents:
            host, port = spec.listen
            sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
            socks.append(sock)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((host, port))
                sock.listen(BACKLOG)
            except OSError as exc:
                raise ListenError(f"agent {spec.name}: cannot listen on {host}:{port}: "
                                  f"{exc.strerror or exc}") from None
            sock.setblocking(False)
    except BaseException:
        for sock in socks:
            sock.close()
        raise
    return socks


# --- supervisord's XML-RPC API -----------------------------------------------------

class Supervisor:
    """supervisord's XML-RPC interface, called from worker threads.

    supervisor's own transport (unix socket or HTTP) keeps one connection open and is
    not thread-safe: every worker thread gets its own ServerProxy. Calls retry while
    supervisord's socket is missing or refuses (it may not be up yet), up to
    RPC_CONNECT_TIMEOUT; faults come back as xmlrpc.client.Fault.
    """

    def __init__(self, url, connect_timeout=RPC_CONNECT_TIMEOUT):
        self.url = url
        self.connect_timeout = connect_timeout
        self.local = threading.local()
        self.closing = threading.Event()
        self.executor = ThreadPoolExecutor(max_workers=RPC_THREADS, thread_name_prefix="xmlrpc")

    def _proxy(self):
        proxy = getattr(self.local, "proxy", None)
        if proxy is None:
            import xmlrpc.client
            from supervisor.xmlrpc import SupervisorTransport
            transport = SupervisorTransport(None, None, self.url)
            make = getattr(transport, "_get_connection", None)
            if make is not None:
                def connection():  # its unix socket connection ignores timeouts: give it one
                    conn = make()
                    conn.timeout = RPC_TIMEOUT
                    connect = conn.connect

                    def connect_with_timeout():
                        connect()
                        if conn.sock is not None:
                            conn.sock.settimeout(RPC_TIMEOUT)
                    conn.connect = connect_with_timeout
                    return conn
                transport._get_connection = connection
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport=transport)
            self.local.proxy, self.local.transport = proxy, transport
        return proxy

    def call_blocking(self, method, *args):
        import http.client
        import xmlrpc.client
        deadline = time.monotonic() + self.connect_timeout
        delay = 0.05
        while True:
            proxy = self._proxy()
            try:
                return getattr(proxy.supervisor, method)(*args)
            except xmlrpc.client.Fault:
                raise
            except xmlrpc.client.ProtocolError as exc:
                self.local.transport.close()
                raise SupervisorUnreachable(f"supervisord at {self.url} answered HTTP {exc.errcode} "
                                            f"{exc.errmsg}") from None
            except (OSError, http.client.HTTPException) as exc:
                # Missing socket, refused, or a kept-alive connection that went away:
                # reconnect. Repeating a start or stop is harmless (ALREADY_STARTED,
                # NOT_RUNNING are expected answers).
                self.local.transport.close()
                if time.monotonic() + delay > deadline:
                    raise SupervisorUnreachable(f"cannot reach supervisord at {self.url}: {exc}") from None
                if self.closing.wait(delay):
                    raise SupervisorUnreachable("the activator is stopping") from None
                delay = min(delay * 2, 0.5)

    async def call(self, method, *args):
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, partial(self.call_blocking, method, *args))

    def close(self):
        self.closing.set()
        self.executor.shutdown(wait=False, cancel_futures=True)


def _fault_code(exc):
    return getattr(exc, "faultCode", None)


# --- forwarding --------------------------------------------------------------------

class _Side(asyncio.Protocol):
    """One end of a forwarded connection: what it reads goes to its peer's transport."""

    __slots__ = ("link", "transport", "peer", "eof")

    def __init__(self, link, peer=None):
        self.link = link
        self.transport = None
        self.peer = peer
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport
        if self.peer is None:  # the client's side: find the target
            self.link.client_connected()

    def data_received(self, data):
        link = self.link
        link.agent.touched = True
        peer = self.peer
        if peer is None:
            link.hold(data)
        elif not link.closed:
            peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        peer = self.peer
        if peer is None:  # the client half-closed before its target was connected: passed on then
            return True
        if peer.eof:
            self.link.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            self.link.close()
        return True  # keep our writing half open

    def connection_lost(self, exc):
        self.link.close()

    def pause_writing(self):
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.transport.resume_reading()


class Link:
    """A client's connection to an agent's public port, and (once ready) to its target."""

    __slots__ = ("activator", "agent", "client", "upstream", "held", "held_size", "closed", "task")

    def __init__(self, activator, agent):
        self.activator = activator
        self.agent = agent
        self.client = _Side(self)
        self.upstream = None
        self.held = []
        self.held_size = 0
        self.closed = False
        self.task = None
        agent.conns += 1
        activator.links.add(self)

    def client_connected(self):
        self.task = asyncio.get_running_loop().create_task(self.connect())

    def hold(self, data):
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size >= HOLD_LIMIT:
            self.client.transport.pause_reading()

    async def connect(self):
        agent, activator = self.agent, self.activator
        loop = asyncio.get_running_loop()
        host, port = agent.spec.target
        try:
            for _ in range(CONNECT_ATTEMPTS):
                if agent.ready:
                    try:
                        transport, upstream = await loop.create_connection(
                            partial(_Side, self, self.client), host, port)
                    except OSError:
                        agent.ready = False  # not listening (crashed, stopped): start it
                    else:
                        self.attach(upstream)
                        return
                agent.waiting += 1
                try:
                    await activator.ensure(agent)
                finally:
                    agent.waiting -= 1
            raise StartFailed(f"{host}:{port} refused {CONNECT_ATTEMPTS} connections in a row, "
                              "each right after the agent was ready")
        except StartFailed:
            self.close()  # the start's own log line says why
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the client hanging
            log(f"{agent.name}: internal error while connecting a client: {type(exc).__name__}: {exc}")
            self.close()

    def attach(self, upstream):
        if self.closed:
            upstream.transport.close()
            return
        self.upstream = upstream
        client = self.client
        client.peer = upstream
        if self.held:
            held, self.held, self.held_size = self.held, [], 0
            client.transport.resume_reading()  # first: the write below may pause it again
            upstream.transport.write(b"".join(held))
        if client.eof:
            if upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            else:
                self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()  # the client left while its agent was starting; the start goes on
        agent = self.agent
        agent.conns -= 1
        agent.last = time.monotonic()
        self.activator.links.discard(self)

    def abort(self):
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abort()
        self.close()


# --- the activator -------------------------------------------------------------------

class Agent:
    """What the activator knows and does about one agent."""

    def __init__(self, spec):
        self.spec = spec
        self.name = spec.name
        self.deps = []               # what it depends on, transitively, in start order
        self.dependants = []         # what depends on it, transitively
        self.lock = asyncio.Lock()   # one start or stop at a time
        self.start_task = None       # the start every waiting connection shares
        self.stop_task = None
        self.ready = False           # its target accepted a connection lately
        self.active = False          # started (by us or supervisord) and not stopped since
        self.conns = 0               # connections open on its public port, waiting ones included
        self.waiting = 0             # of which waiting for a start
        self.last = time.monotonic()  # last byte, close, or start
        self.touched = False         # bytes moved since the last idle check


class Activator:
    def __init__(self, config, listeners, supervisor):
        self.config = config
        self.listeners = listeners
        self.rpc = supervisor
        self.agents = {spec.name: Agent(spec) for spec in config.agents}
        for agent in self.agents.values():
            agent.deps = [self.agents[name] for name in agent.spec.depends_on]
            for dep in agent.deps:
                dep.dependants.append(agent)
        self.links = set()
        self.tasks = set()

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
        log(f"fleet {self.config.fleet}, host {self.config.host}: listening for "
            f"{len(self.config.agents)} agents ({where or 'none'}); supervisord at {self.config.supervisor}")
        self.spawn(self.adopt())
        if self.agents:
            self.spawn(self.idle_loop())
        await stop.wait()
        log(f"{received[0] if received else 'stop'}: closing {len(servers)} listening sockets "
            f"and {len(self.links)} connections")
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
            log(f"cannot read supervisord's process list: {exc}")
            return
        by_name = {}
        for info in infos:
            by_name[f"{info['group']}:{info['name']}"] = info
            if info["group"] == info["name"]:
                by_name[info["name"]] = info
        for agent in self.agents.values():
            info = by_name.get(agent.spec.program)
            if info is None:
                log(f"{agent.name}: supervisord has no program {agent.spec.program!r}; "
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
        async with agent.lock:
            for dep in agent.deps:
                try:
                    await self.ensure(dep)
                except StartFailed as exc:
                    message = f"dependency {dep.name} did not start"
                    log(f"{agent.name}: not started: {message}{_closing(agent)}")
                    raise StartFailed(f"{message}: {exc}") from None
            loop = asyncio.get_running_loop()
            began = loop.time()
            try:
                info = await self.info(agent)
                if info["statename"] in UP_STATES and await self.probe(agent):
                    self._ready(agent)  # up and accepting: e.g. started for another dependant just now
                    return
                await self.start_program(agent, info, began)
            except StartFailed as exc:
                log(f"{agent.name}: start failed after {(loop.time() - began) * 1000:.0f} ms: "
                    f"{exc}{_closing(agent)}")
                raise
            self._ready(agent)

    @staticmethod
    def _ready(agent):
        agent.ready = True
        agent.active = True
        agent.last = time.monotonic()

    async def probe(self, agent, timeout=1.0):
        """Does the agent's target accept a TCP connection?"""
        host, port = agent.spec.target
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            await asyncio.wait_for(asyncio.get_running_loop().sock_connect(sock, (host, port)), timeout)
            return True
        except (OSError, asyncio.TimeoutError):
            return False
        finally:
            sock.close()

    async def info(self, agent):
        try:
            return await self.rpc.call("getProcessInfo", agent.spec.program)
        except SupervisorUnreachable as exc:
            raise StartFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault and friends
            if _fault_code(exc) == BAD_NAME:
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
                log(f"{agent.name}: started in {(loop.time() - began) * 1000:.0f} ms ({how}); "
                    f"{spec.target[0]}:{spec.target[1]} accepts connections")
                return
            now = loop.time()
            if now >= deadline:
                raise StartFailed(f"{spec.target[0]}:{spec.target[1]} did not accept a connection within "
                                  f"{spec.start_timeout:g} s (supervisord: {state})")
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
                                          "before it accepted a connection")
                else:
                    down_since = None
            await asyncio.sleep(READY_POLL)

    async def last_words(self, agent):
        """The last line the program wrote (stderr, else stdout), for a failure's log line."""
        for method in ("tailProcessStderrLog", "tailProcessStdoutLog"):
            try:
                text, _, _ = await self.rpc.call(method, agent.spec.program, 0, 4096)
            except Exception:  # noqa: BLE001 - no log file, unreachable: say nothing
                continue
            lines = [line.strip() for line in text.splitlines() if line.strip()]
            if lines:
                return lines[-1][-300:]
        return ""

    async def start_process(self, agent):
        agent.active = True  # from here on, an idle check may stop what we started
        try:
            await self.rpc.call("startProcess", agent.spec.program, False)
        except SupervisorUnreachable as exc:
            raise StartFailed(str(exc)) from None
        except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault
            code = _fault_code(exc)
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
            log(f"{agent.name}: stop failed, trying again after idle_stop: {exc}")
        finally:
            agent.stop_task = None

    async def _stop(self, agent):
        async with agent.lock:
            idle = time.monotonic() - agent.last
            if agent.conns or idle < agent.spec.idle_stop or any(d.active for d in agent.dependants):
                return  # a connection or a dependant came meanwhile (it may be waiting for this lock)
            began = time.monotonic()
            try:
                await self.rpc.call("stopProcess", agent.spec.program, True)
            except Exception as exc:  # noqa: BLE001 - xmlrpc.client.Fault, SupervisorUnreachable
                if _fault_code(exc) == NOT_RUNNING:
                    agent.active = False
                    return
                raise RuntimeError(f"stopProcess: {getattr(exc, 'faultString', None) or exc}") from None
            agent.active = False
            log(f"{agent.name}: stopped after {idle:.1f} s without connections "
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


# --- the command -------------------------------------------------------------------

def log(message):
    now = time.time()
    stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)) + f".{int(now % 1 * 1000):03d}"
    try:
        sys.stderr.write(f"{stamp} {PROG}: {message}\n")
        sys.stderr.flush()
    except (OSError, ValueError):
        pass


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Hold the optional agents' ports under supervisord; start an agent (and its "
                    "dependencies) on its first connection, forward, and stop it when idle.")
    parser.add_argument("--config", required=True, metavar="PATH",
                        help="the activator's JSON configuration, written by agentkit's supervisord renderer")
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    return parser.parse_args(argv)


def main(argv=None):
    # Until the loop handles them: SIGTERM/SIGINT exit 0 without a traceback.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: sys.exit(0))
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for line in exc.problems:
            log(line)
        log(f"{len(exc.problems)} problem(s) in {args.config}; not started")
        return 1
    try:
        import supervisor.xmlrpc  # noqa: F401 - its transport speaks to supervisord
    except ImportError:
        log("the Python package 'supervisor' is not installed here (pip install supervisor)")
        return 1
    try:
        listeners = listen_all(config)  # before anything else: from now on no connection is refused
    except ListenError as exc:
        log(str(exc))
        return 1
    rpc = Supervisor(config.supervisor)

    async def run():
        await Activator(config, listeners, rpc).run()
    try:
        try:
            import uvloop
        except ImportError:
            asyncio.run(run())
        else:
            uvloop.run(run())
    finally:
        for sock in listeners:
            sock.close()
        rpc.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
