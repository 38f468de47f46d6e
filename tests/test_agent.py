"""agentkit-agent, the reference agent, run as a real program.

Every test starts the installed console script as a child process, talks to it
over ZeroMQ and HTTP on 127.0.0.1, and hears its sd_notify messages on a unix
datagram socket the test owns, with the sender's pid from SCM_CREDENTIALS (the
way systemd knows which process sent READY=1). Native activation is exercised
the way systemd does it: the test owns the listening socket, the child gets it
as fd 3 with LISTEN_PID set to its own pid.
"""

import http.client
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

AGENT = Path(sys.executable).parent / "agentkit-agent"
UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid
CLK_TCK = os.sysconf("SC_CLK_TCK")

# What systemd does between fork and exec: the socket becomes fd 3, LISTEN_PID is
# the pid of the process that will run the agent, then exec keeps that pid.
LAUNCHER = """\
import os, sys
fd = int(sys.argv[1])
if fd != 3:
    os.dup2(fd, 3)
    os.close(fd)
os.environ["LISTEN_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""

pytestmark = pytest.mark.skipif(not AGENT.exists(), reason=f"{AGENT} is missing: run pip install -e .")


def free_port():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Notifications:
    """The NOTIFY_SOCKET end systemd would hold, with every message's sender pid."""

    def __init__(self, address):
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.seen = []  # (pid, line)

    def _receive(self, timeout):
        self.sock.settimeout(timeout)
        try:
            data, ancillary, _, _ = self.sock.recvmsg(4096, socket.CMSG_SPACE(UCRED.size))
        except (socket.timeout, BlockingIOError):
            return False
        pid = None
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = UCRED.unpack(payload[:UCRED.size])[0]
        self.seen.extend((pid, line) for line in data.decode().split("\n"))
        return True

    def drain(self):
        while self._receive(0):
            pass
        return self.seen

    def lines(self, pid):
        return [line for sender, line in self.drain() if sender == pid]

    def wait_for(self, proc, line, count=1, timeout=15):
        """Until `line` came `count` times from proc's pid; fails at once if proc exits first."""
        deadline = time.monotonic() + timeout
        while sum(1 for sender, seen in self.seen if sender == proc.pid and seen == line) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"no {line} x{count} from pid {proc.pid} within {timeout} s: {self.seen}")
            if not self._receive(min(remaining, 0.2)) and proc.poll() is not None:
                self.drain()
                if sum(1 for sender, seen in self.seen if sender == proc.pid and seen == line) >= count:
                    break
                raise AssertionError(f"pid {proc.pid} exited with {proc.returncode} before {line}: {self.seen}")

    def close(self):
        self.sock.close()


@pytest.fixture
def notify(tmp_path):
    path = tmp_path / "notify"
    if len(str(path)) >= 100:  # sun_path holds 108 bytes
        pytest.skip(f"tmp_path too long for a unix socket: {path}")
    listener = Notifications(str(path))
    yield listener
    listener.close()


class Agents:
    """Starts agents, and kills whatever is still running when the test ends, passed or not."""

    def __init__(self, tmp_path, notify):
        self.tmp_path = tmp_path
        self.notify = notify
        self.procs = []

    def start(self, name, port, *args, activation="none", health_port=None, notify=None, listen_fd=None,
              wrapper=(), **extra):
        env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C.UTF-8",
               "AGENTKIT_AGENT": name, "AGENTKIT_HOST": "testhost", "AGENTKIT_PORT": str(port),
               "AGENTKIT_ACTIVATION": activation,
               "NOTIFY_SOCKET": (notify or self.notify).address}
        if health_port is not None:
            env["AGENTKIT_HEALTH_PORT"] = str(health_port)
        env.update({key: str(value) for key, value in extra.items()})
        argv = [*wrapper, str(AGENT), *args]
        pass_fds = ()
        if listen_fd is not None:
            env.update(LISTEN_FDS="1", LISTEN_FDNAMES="agent")
            argv = [sys.executable, "-c", LAUNCHER, str(listen_fd), *argv]
            pass_fds = (listen_fd,)
        log = open(self.tmp_path / f"{name}-{len(self.procs)}.log", "wb")
        try:
            proc = subprocess.Popen(argv, env=env, pass_fds=pass_fds, stdin=subprocess.DEVNULL,
                                    stdout=log, stderr=subprocess.STDOUT)
        finally:
            log.close()
        proc.log = Path(log.name)
        self.procs.append(proc)
        return proc

    def ready(self, proc, timeout=15):
        self.notify.wait_for(proc, "READY=1", timeout=timeout)
        return proc

    def kill_all(self):
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def agents(tmp_path, notify):
    fleet = Agents(tmp_path, notify)
    try:
        yield fleet
    finally:
        fleet.kill_all()


@pytest.fixture
def zctx():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def ask(ctx, port, message, timeout=15):
    """One request on a fresh REQ socket; the raw reply decoded from JSON."""
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(f"tcp://127.0.0.1:{port}")
        if isinstance(message, list):
            req.send_multipart(message)
        else:
            req.send(message if isinstance(message, bytes) else json.dumps(message).encode())
        assert req.poll(int(timeout * 1000), zmq.POLLIN), f"no answer on port {port} within {timeout} s"
        return json.loads(req.recv())
    finally:
        req.close()


def http_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime + stime


def status_kb(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise AssertionError(f"no {key} in /proc/{pid}/status")


def connected_client(ctx, port, timeout=10):
    """A REQ socket whose TCP connection is established (accepted into the kernel's backlog counts)."""
    req = ctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    monitor = req.get_monitor_socket(zmq.EVENT_CONNECTED)  # before connect(), or the event may be missed
    try:
        req.connect(f"tcp://127.0.0.1:{port}")
        assert monitor.poll(int(timeout * 1000), zmq.POLLIN), "the client never connected"
        assert recv_monitor_message(monitor)["event"] == zmq.EVENT_CONNECTED
    except BaseException:
        req.close()
        raise
    finally:
        req.disable_monitor()
        monitor.close()
    return req


# --- essential agents ---------------------------------------------------------------------

def test_essential_agent_binds_its_port_notifies_ready_and_answers_ping_and_health(agents, notify, zctx):
    port, health_port = free_port(), free_port()
    proc = agents.ready(agents.start("Essential", port, health_port=health_port))

    assert ask(zctx, port, {"action": "ping"}) == {"ok": True, "agent": "Essential", "host": "testhost",
                                                   "pid": proc.pid}
    status, content_type, body = http_get(health_port, "/health")
    assert (status, content_type) == (200, "application/json")
    health = json.loads(body)
    assert health["uptime_s"] > 0
    assert {k: v for k, v in health.items() if k != "uptime_s"} == {
        "status": "ok", "agent": "Essential", "pid": proc.pid, "requests": 1, "activation": "none"}
    assert http_get(health_port, "/health?verbose=1")[0] == 200
    assert http_get(health_port, "/metrics")[0] == 404
    assert http_get(health_port, "/")[0] == 404
    assert any(line.startswith("STATUS=serving tcp://*:") for line in notify.lines(proc.pid))
    assert proc.poll() is None


def test_sigterm_sends_stopping_and_exits_0(agents, notify, zctx):
    port = free_port()
    proc = agents.ready(agents.start("Terminated", port, health_port=free_port()))
    assert ask(zctx, port, {"action": "ping"})["ok"] is True
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=10) == 0
    assert notify.lines(proc.pid)[-1] == "STOPPING=1"
    with socket.socket() as probe:  # the port was closed on the way out
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        probe.bind(("127.0.0.1", port))


def test_sigterm_right_after_ready_is_never_lost(agents, notify):
    # A handler that raised lost the signals landing just before zmq_poll() began
    # (1 in 15 here): 20 in a row would have caught that 3 times in 4.
    for i in range(20):
        proc = agents.ready(agents.start(f"Quick{i}", free_port(), health_port=free_port()))
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0, f"start {i}: SIGTERM lost"
        assert notify.lines(proc.pid)[-1] == "STOPPING=1"


def test_sigterm_interrupts_start_up_work_and_a_long_request(agents, notify, zctx):
    loading = agents.start("Loading", free_port(), "--start-seconds", "60")
    wait_for_cpu(loading.pid, 0.2)
    loading.send_signal(signal.SIGTERM)
    assert loading.wait(timeout=10) == 0
    assert "READY=1" not in notify.lines(loading.pid) and "STOPPING=1" in notify.lines(loading.pid)

    port = free_port()
    busy = agents.ready(agents.start("Busy", port))
    req = zctx.socket(zmq.REQ)
    req.setsockopt(zmq.LINGER, 0)
    try:
        req.connect(f"tcp://127.0.0.1:{port}")
        req.send_json({"action": "work", "seconds": 60})
        wait_for_cpu(busy.pid, 0.2)
        busy.send_signal(signal.SIGTERM)
        assert busy.wait(timeout=10) == 0
    finally:
        req.close()
    assert notify.lines(busy.pid)[-1] == "STOPPING=1"


def wait_for_cpu(pid, seconds, timeout=15):
    """Until the process has used `seconds` of CPU: proof that it is inside its work."""
    deadline = time.monotonic() + timeout
    while cpu_seconds(pid) < seconds:
        assert time.monotonic() < deadline, f"pid {pid} used no CPU within {timeout} s"
        time.sleep(0.02)


def test_malformed_requests_are_answered_with_errors_and_the_agent_keeps_serving(agents, zctx):
    port, health_port = free_port(), free_port()
    proc = agents.ready(agents.start("Sturdy", port, health_port=health_port))
    bad = [b"not json", b"\xff\xfe", b"[1, 2]", b"null", b'{"no": "action"}', b'{"action": "fly"}',
           b'{"action": 5}', b'{"action": "work", "seconds": -1}', b'{"action": "work", "seconds": "x"}',
           b'{"action": "work", "memory_mb": true}', b'{"action": "chain", "timeout": NaN}',
           b"[" * 100_000, [b'{"action": "ping"}', b"second frame"]]
    for message in bad:
        reply = ask(zctx, port, message)
        assert reply["ok"] is False, (message[:40], reply)
        assert isinstance(reply["error"], str) and reply["error"], reply
    assert "fly" in ask(zctx, port, {"action": "fly"})["error"]
    assert ask(zctx, port, {"action": "ping"})["pid"] == proc.pid
    assert json.loads(http_get(health_port, "/health")[2])["requests"] == len(bad) + 2
    assert proc.poll() is None


def test_work_burns_cpu_and_holds_memory_then_answers(agents, zctx):
    port = free_port()
    proc = agents.ready(agents.start("Worker", port))
    cpu_before, peak_before = cpu_seconds(proc.pid), status_kb(proc.pid, "VmHWM")
    reply = ask(zctx, port, {"action": "work", "seconds": 0.4, "memory_mb": 48})
    assert reply["ok"] is True and reply["cpu_s"] >= 0.4 and reply["memory_mb"] == 48
    assert cpu_seconds(proc.pid) - cpu_before >= 0.35  # clock ticks are 10 ms
    assert status_kb(proc.pid, "VmHWM") - peak_before >= 44 * 1024


def test_a_port_in_use_fails_the_start_with_status_1(agents, notify):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        proc = agents.start("Blocked", taken.getsockname()[1])
        assert proc.wait(timeout=15) == 1
    assert "READY=1" not in notify.lines(proc.pid)
    assert "cannot listen" in proc.log.read_text()


def test_missing_configuration_exits_2_naming_the_variable(agents):
    proc = agents.start("Unconfigured", "")
    assert proc.wait(timeout=15) == 2
    assert "AGENTKIT_PORT is not set" in proc.log.read_text()


# --- start-up flags ---------------------------------------------------------------------

def test_crash_at_start_exits_1_before_binding_or_ready(agents, notify):
    port = free_port()
    proc = agents.start("Crashy", port, "--crash-at-start")
    assert proc.wait(timeout=15) == 1
    assert notify.lines(proc.pid) == []
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", port))


def test_start_memory_raises_the_resident_set_by_about_that_much(agents):
    plain = agents.ready(agents.start("Plain", free_port()))
    heavy = agents.ready(agents.start("Heavy", free_port(), "--start-memory-mb", "64"))
    extra_mb = (status_kb(heavy.pid, "VmRSS") - status_kb(plain.pid, "VmRSS")) / 1024
    assert 60 <= extra_mb <= 80, extra_mb


def test_start_seconds_spend_cpu_before_ready(agents, notify):
    started = time.monotonic()
    proc = agents.ready(agents.start("Loader", free_port(), "--start-seconds", "0.6"))
    assert time.monotonic() - started >= 0.6
    assert cpu_seconds(proc.pid) >= 0.6
    assert any(line.startswith("STATUS=starting: 0.6 s") for line in notify.lines(proc.pid))


def test_version_flag():
    out = subprocess.run([str(AGENT), "--version"], capture_output=True, text=True, timeout=30, check=True)
    assert out.stdout.strip().startswith("agentkit-agent 0.")


# --- watchdog -------------------------------------------------------------------------------

def test_watchdog_pings_every_half_interval_on_an_abstract_notify_socket(agents, zctx):
    abstract = Notifications(f"@agentkit-test-{uuid.uuid4().hex}")
    try:
        proc = agents.start("Watched", free_port(), notify=abstract, WATCHDOG_USEC=200_000)
        abstract.wait_for(proc, "READY=1")
        first = time.monotonic()
        abstract.wait_for(proc, "WATCHDOG=1", count=5, timeout=10)
        assert time.monotonic() - first >= 0.2  # 100 ms apart, so the 5th comes 0.4 s after the 1st
    finally:
        abstract.close()


def test_watchdog_for_another_pid_is_not_ours(agents, notify, zctx):
    port = free_port()
    proc = agents.ready(agents.start("NotWatched", port, WATCHDOG_USEC=200_000, WATCHDOG_PID=1))
    assert ask(zctx, port, {"action": "ping"})["ok"] is True  # the serving loop has run
    assert "WATCHDOG=1" not in notify.lines(proc.pid)


# --- native socket activation ---------------------------------------------------------------

def test_native_agent_adopts_the_socket_answers_a_client_queued_before_it_started_and_exits_when_idle(
        agents, notify, zctx):
    idle = 1.5
    listener = socket.create_server(("127.0.0.1", 0), backlog=16)  # what the .socket unit holds
    port = listener.getsockname()[1]
    health_port = free_port()
    early = None
    try:
        early = connected_client(zctx, port)  # accepted by the kernel: no agent is running yet
        early.send_json({"action": "ping"})

        proc = agents.start("OnDemand", port, activation="native", health_port=health_port,
                            listen_fd=listener.fileno(), AGENTKIT_IDLE_STOP=idle)
        agents.ready(proc)
        assert early.poll(15_000, zmq.POLLIN), "the client queued before the start was never answered"
        assert early.recv_json() == {"ok": True, "agent": "OnDemand", "host": "testhost", "pid": proc.pid}
        last_request = time.monotonic()
        health = json.loads(http_get(health_port, "/health")[2])
        assert (health["activation"], health["pid"]) == ("native", proc.pid)

        assert proc.wait(timeout=idle + 15) == 0
        assert time.monotonic() - last_request >= idle - 0.25  # the test took its time to note the reply
        lines = notify.lines(proc.pid)
        assert lines.index("READY=1") < lines.index("STOPPING=1")
        assert "fd 3 from systemd" in next(line for line in lines if line.startswith("STATUS=serving"))

        # The socket outlived the agent, as systemd keeps it: the next client waits in
        # its backlog and the next instance, given the same socket, answers it.
        assert ask_after_restart(agents, zctx, listener, port) != proc.pid
    finally:
        if early is not None:
            early.close()
        listener.close()


def ask_after_restart(agents, zctx, listener, port):
    req = connected_client(zctx, port)
    try:
        req.send_json({"action": "ping"})
        again = agents.start("OnDemand", port, activation="native", listen_fd=listener.fileno(),
                             AGENTKIT_IDLE_STOP=30)
        assert req.poll(15_000, zmq.POLLIN), "the second instance did not answer"
        reply = req.recv_json()
        assert reply["pid"] == again.pid
        return reply["pid"]
    finally:
        req.close()


@pytest.mark.skipif(shutil.which("systemd-socket-activate") is None,
                    reason="systemd-socket-activate is missing (Debian package systemd)")
def test_native_agent_under_systemds_own_socket_activation(agents, notify, zctx):
    # systemd's code sets up fd 3, LISTEN_PID, LISTEN_FDS and LISTEN_FDNAMES, then execs us.
    port = free_port()
    proc = agents.start("Activated", port, activation="native", AGENTKIT_IDLE_STOP=1, wrapper=[
        shutil.which("systemd-socket-activate"), f"--listen=127.0.0.1:{port}", "--fdname=agent",
        *(f"--setenv={key}" for key in ("AGENTKIT_AGENT", "AGENTKIT_HOST", "AGENTKIT_PORT", "AGENTKIT_ACTIVATION",
                                        "AGENTKIT_IDLE_STOP", "NOTIFY_SOCKET"))])
    assert ask(zctx, port, {"action": "ping"})["pid"] == proc.pid
    notify.wait_for(proc, "READY=1")
    assert proc.wait(timeout=15) == 0
    assert "fd 3 from systemd" in next(line for line in notify.lines(proc.pid) if line.startswith("STATUS=serving"))
    assert notify.lines(proc.pid)[-1] == "STOPPING=1"


def test_native_agent_started_by_hand_binds_the_port_itself(agents, notify, zctx):
    port = free_port()
    proc = agents.ready(agents.start("ByHand", port, activation="native", AGENTKIT_IDLE_STOP=60,
                                     LISTEN_FDS=1, LISTEN_PID=1))  # someone else's fds: not ours
    assert ask(zctx, port, {"action": "ping"})["pid"] == proc.pid
    assert "its own port" in next(line for line in notify.lines(proc.pid) if line.startswith("STATUS=serving"))


# --- proxy activation ---------------------------------------------------------------------

def test_proxy_agent_listens_on_its_private_address_and_never_stops_by_itself(agents, zctx):
    private = free_port()
    with socket.create_server(("127.0.0.1", 0)) as public:  # systemd-socket-proxyd's port
        proc = agents.ready(agents.start("Proxied", public.getsockname()[1], activation="proxy",
                                         AGENTKIT_BIND=f"127.0.0.1:{private}", AGENTKIT_IDLE_STOP=0.2))
        assert ask(zctx, private, {"action": "ping"})["pid"] == proc.pid
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(timeout=1.0)  # five times the idle time that native mode would stop after


# --- chains -------------------------------------------------------------------------------

def test_chain_calls_dependencies_in_order_and_nests_their_replies(agents, zctx):
    port_a, port_b, port_c = free_port(), free_port(), free_port()
    c = agents.start("C", port_c)
    b = agents.start("B", port_b, AGENTKIT_DEPENDS=f"C=127.0.0.1:{port_c}")
    a = agents.start("A", port_a, AGENTKIT_DEPENDS=f"B=127.0.0.1:{port_b}")
    for proc in (a, b, c):
        agents.ready(proc)

    reply = ask(zctx, port_a, {"action": "chain"})
    assert reply == {"ok": True, "agent": "A", "pid": a.pid, "deps": [
        {"ok": True, "agent": "B", "pid": b.pid, "deps": [
            {"ok": True, "agent": "C", "pid": c.pid, "deps": []}]}]}


def test_chain_names_the_dependency_that_did_not_answer(agents, zctx):
    ghost = free_port()  # nothing listens there
    port_a, port_b = free_port(), free_port()
    b = agents.start("B", port_b, AGENTKIT_DEPENDS=f"Ghost=127.0.0.1:{ghost}")
    a = agents.start("A", port_a, AGENTKIT_DEPENDS=f"B=127.0.0.1:{port_b},Never=127.0.0.1:{ghost}")
    agents.ready(a)
    agents.ready(b)

    started = time.monotonic()
    reply = ask(zctx, port_a, {"action": "chain", "timeout": 1.0})
    assert time.monotonic() - started < 5
    assert reply["ok"] is False and reply["pid"] == a.pid
    assert reply["error"].startswith(f"dependency B (127.0.0.1:{port_b}) failed: dependency Ghost")
    assert "did not answer" in reply["error"]
    assert "Never" not in reply["error"]  # the chain stops at the first failure
    assert ask(zctx, port_a, {"action": "ping"})["ok"] is True  # and A goes on serving


def test_no_arguments_give_the_same_options_as_argparse_defaults():
    from agentkit.agent import parse_args
    assert vars(parse_args([])) == vars(parse_args(["--start-seconds", "0"]))
