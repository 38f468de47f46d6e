"""A real supervisord with agentkit-activator and reference agents, for the tests.

Everything lives in a temporary directory: supervisord.conf, its unix socket
(chmod 0700), its log and every program's logs. supervisord runs in the
foreground in a session of its own; close() asks it to shut down over XML-RPC
and then kills whatever is left of that session (supervisord puts every
program in a process group of its own, but they all stay in its session).
"""

from __future__ import annotations

import http.client
import json
import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import xmlrpc.client
from dataclasses import dataclass, field
from pathlib import Path

import zmq
from helpers import wait_for

PYTHON = sys.executable
SUPERVISORD = str(Path(sys.executable).parent / "supervisord")
PORT_RANGE = range(17500, 17600)  # this suite's ports; other suites use others
ACTIVATOR = "agentkit-activator"
ACTIVATOR_MODULE = "agentkit.backends.supervisord.activator"  # python -m ACTIVATOR_MODULE --config PATH


def free_ports(count, taken=()):
    """`count` ports of PORT_RANGE that nothing listens on or is bound to right now."""
    found = []
    for port in PORT_RANGE:
        if port in taken:
            continue
        ok = True
        for host in ("0.0.0.0", "127.0.0.1"):
            with socket.socket() as probe:
                try:
                    probe.bind((host, port))
                except OSError:
                    ok = False
                    break
        if ok:
            found.append(port)
            if len(found) == count:
                return found
    raise RuntimeError(f"fewer than {count} free ports in {PORT_RANGE}")


def listening_inodes(port):
    """Inodes of the TCP sockets listening on `port` (any address), from /proc/net/tcp{,6}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and int(local.rsplit(":", 1)[1], 16) == port:
                inodes.add(int(inode))
    return inodes


def socket_inodes(pid):
    inodes = set()
    fd_dir = Path(f"/proc/{pid}/fd")
    for fd in fd_dir.iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", target)
        if m:
            inodes.add(int(m.group(1)))
    return inodes


def session_pids(sid):
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        if int(fields[3]) == sid:  # state ppid pgrp session ...
            pids.append(int(entry.name))
    return pids


class _UnixHTTPConnection(http.client.HTTPConnection):
    def __init__(self, path, timeout=30.0):
        super().__init__("localhost", timeout=timeout)
        self.unix_path = str(path)

    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.connect(self.unix_path)


class UnixTransport(xmlrpc.client.Transport):
    """XML-RPC over supervisord's unix socket (the stdlib's client; the activator uses supervisor's own)."""

    def __init__(self, path):
        super().__init__()
        self.unix_path = path

    def make_connection(self, host):
        if self._connection and self._connection[0] == host:
            return self._connection[1]
        self._connection = host, _UnixHTTPConnection(self.unix_path)
        return self._connection[1]


@dataclass
class AgentDef:
    name: str
    depends: list[str] = field(default_factory=list)  # direct dependencies (AGENTKIT_DEPENDS)
    idle_stop: float = 120.0
    start_timeout: float = 30.0
    ready: list[str] = field(default_factory=lambda: ["port"])  # the activator's probe
    args: list[str] = field(default_factory=list)     # e.g. ["--crash-at-start"]
    startretries: int = 3
    command: list[str] | None = None  # instead of the reference agent; "{private}" -> the private port
    port: int = 0                                       # filled in by Fleet
    private: int = 0


class Fleet:
    """supervisord + the activator + agents, in `root`."""

    def __init__(self, root: Path, agents: list[AgentDef], fleet="lab", host="lab", with_activator=True):
        self.root = Path(root)
        self.with_activator = with_activator
        self.agents = {a.name: a for a in agents}
        self.fleet, self.host = fleet, host
        ports = free_ports(2 * len(agents))
        for i, agent in enumerate(agents):
            agent.port, agent.private = ports[2 * i], ports[2 * i + 1]
        self.sock_path = self.root / "supervisor.sock"
        self.url = f"unix://{self.sock_path}"
        self.conf = self.root / "supervisord.conf"
        self.config = self.root / "activator.json"
        self.proc = None
        self._rpc = None
        self.ctx = zmq.Context()

    # -- configuration

    def transitive(self, name):
        """Dependencies of `name`, transitive, in start order (what the renderer writes)."""
        order = []

        def visit(n):
            for dep in self.agents[n].depends:
                visit(dep)
                if dep not in order:
                    order.append(dep)
        visit(name)
        return order

    def activator_config(self):
        return {
            "fleet": self.fleet, "host": self.host, "supervisor": self.url,
            "control": str(self.root / "activator.sock"),
            "agents": [{"name": a.name, "program": a.name, "listen": ["0.0.0.0", a.port],
                        "target": ["127.0.0.1", a.private], "depends_on": self.transitive(a.name),
                        "idle_stop": a.idle_stop, "start_timeout": a.start_timeout,
                        "ready": a.ready}
                       for a in self.agents.values()],
        }

    def supervisord_conf(self):
        root = self.root
        lines = [
            "[unix_http_server]", f"file={self.sock_path}", "chmod=0700", "",
            "[supervisord]", f"logfile={root}/supervisord.log", f"pidfile={root}/supervisord.pid",
            f"childlogdir={root}", "nodaemon=true", "loglevel=info", "",
            "[rpcinterface:supervisor]",
            "supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface", "",
            "[supervisorctl]", f"serverurl={self.url}", "",
        ]
        if self.with_activator:
            lines += [
                f"[program:{ACTIVATOR}]",
                f"command={PYTHON} -m {ACTIVATOR_MODULE} --config {self.config}",
                "autostart=true", "autorestart=true", "priority=1", "startsecs=1",
                f"stdout_logfile={root}/{ACTIVATOR}.out.log", f"stderr_logfile={root}/{ACTIVATOR}.err.log",
                "stopasgroup=true", "killasgroup=true", "",
            ]
        for a in self.agents.values():
            env = {"AGENTKIT_AGENT": a.name, "AGENTKIT_HOST": self.host, "AGENTKIT_PORT": a.port,
                   "AGENTKIT_ACTIVATION": "proxy", "AGENTKIT_BIND": f"127.0.0.1:{a.private}"}
            if a.depends:
                env["AGENTKIT_DEPENDS"] = ",".join(f"{d}=127.0.0.1:{self.agents[d].port}" for d in a.depends)
            lines += [
                f"[program:{a.name}]",
                "command=" + " ".join(shlex.quote(arg.replace("{private}", str(a.private)))
                                      for arg in a.command or [PYTHON, "-m", "agentkit.agent", *a.args]),
                "environment=" + ",".join(f'{k}="{v}"' for k, v in env.items()),
                "autostart=false", "autorestart=unexpected", "exitcodes=0", "startsecs=1",
                f"startretries={a.startretries}", "stopasgroup=true", "killasgroup=true",
                f"stdout_logfile={root}/{a.name}.out.log", f"stderr_logfile={root}/{a.name}.err.log", "",
            ]
        return "\n".join(lines)

    # -- life cycle

    def write(self):
        self.config.write_text(json.dumps(self.activator_config(), indent=1))
        self.conf.write_text(self.supervisord_conf())

    def start(self, timeout=20.0):
        self.write()
        self.proc = subprocess.Popen(
            [SUPERVISORD, "-n", "-c", str(self.conf)], cwd=self.root, start_new_session=True,
            stdout=open(self.root / "supervisord.stdout", "wb"), stderr=subprocess.STDOUT)
        wait_for(lambda: self.sock_path.exists() or self.proc.poll() is not None, "supervisord's socket", timeout=timeout)
        assert self.proc.poll() is None, f"supervisord exited: {self.read('supervisord.stdout')}"
        if not self.with_activator:
            return self
        # The activator listens on every public port before it does anything else.
        wait_for(lambda: all(listening_inodes(a.port) for a in self.agents.values())
                   or self.state(ACTIVATOR) in ("FATAL", "EXITED", "BACKOFF"), "the activator's listening sockets", timeout=timeout)
        assert self.state(ACTIVATOR) in ("STARTING", "RUNNING"), self.read(f"{ACTIVATOR}.err.log")
        return self

    def close(self):
        if self.proc is None:
            return
        try:
            if self.proc.poll() is None:
                try:
                    self.rpc.supervisor.shutdown()
                except Exception:  # noqa: BLE001 - then the hard way
                    pass
                try:
                    self.proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    pass
        finally:
            # Whatever is left of supervisord's session: supervisord itself, programs.
            for pid in session_pids(self.proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            if self.proc.poll() is None:
                self.proc.wait(timeout=5)
            self.ctx.destroy(linger=0)
            self.proc = None

    # -- supervisord

    @property
    def rpc(self):
        if self._rpc is None:
            self._rpc = xmlrpc.client.ServerProxy("http://localhost", transport=UnixTransport(self.sock_path))
        return self._rpc

    def info(self, name):
        return self.rpc.supervisor.getProcessInfo(name)

    def state(self, name):
        return self.info(name)["statename"]

    def wait_state(self, name, states, timeout):
        states = (states,) if isinstance(states, str) else tuple(states)
        return wait_for(lambda: self.state(name) in states, f"{name} in {'/'.join(states)} "
                          f"(now {self.state(name)})", timeout=timeout, interval=0.05)

    def read(self, name):
        try:
            return (self.root / name).read_text(errors="replace")
        except OSError:
            return ""

    def activator_log(self):
        return self.read(f"{ACTIVATOR}.err.log")

    def wait_log(self, pattern, count=1, timeout=5.0):
        """The activator's log once `pattern` is in it `count` times.

        supervisord copies a program's stderr into its log file from its own loop: a line
        the activator wrote before it closed a connection may reach the file after.
        """
        wait_for(lambda: len(re.findall(pattern, self.activator_log())) >= count, f"{pattern!r} {count} time(s) in the activator's log:\n{self.activator_log()}", timeout=timeout)
        return self.activator_log()

    def logs(self):
        """Every log, for an assertion message."""
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}"
                         for p in sorted(self.root.glob("*.log")))

    # -- clients

    def request(self, name, payload, timeout=15.0, direct=False):
        """One ZeroMQ REQ on a fresh socket to the agent's public port (or its private one)."""
        agent = self.agents[name]
        port = agent.private if direct else agent.port
        sock = self.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(f"tcp://127.0.0.1:{port}")
            sock.send_json(payload)
            if not sock.poll(int(timeout * 1000)):
                raise TimeoutError(f"no answer from {name} within {timeout:g} s")
            return sock.recv_json()
        finally:
            sock.close()
