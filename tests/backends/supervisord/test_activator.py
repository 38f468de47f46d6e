"""agentkit-activator: on-demand start under a real supervisord.

The scenarios run supervisord (from the pip package `supervisor`) with a
supervisord.conf written here by hand, the activator as its priority-1 program
and the real reference agent (`python -m agentkit.agent`, proxy activation) as
the optional agents. Every wait is bounded; every supervisord is shut down and
its session killed afterwards, whatever happened.
"""

import json
import os
import re
import signal
import socket
import statistics
import subprocess
import time
from pathlib import Path

import pytest

from agentkit.backends.supervisord.config import AgentSpec, Config, ConfigError

from .harness import ACTIVATOR, ACTIVATOR_MODULE, PYTHON, SUPERVISORD, AgentDef, Fleet, free_ports, \
    listening_inodes, socket_inodes
from helpers import wait_for

needs_supervisord = pytest.mark.skipif(not Path(SUPERVISORD).exists(),
                                       reason=f"{SUPERVISORD} is missing: pip install supervisor")


@pytest.fixture
def fleet(tmp_path):
    """fleet(agents) -> a started Fleet; all of them are torn down at the end."""
    made = []

    def make(agents):
        root = tmp_path / f"sv{len(made)}"
        root.mkdir()
        f = Fleet(root, agents)
        made.append(f)
        return f.start()
    yield make
    for f in made:
        try:
            print(f.logs())  # shown when the test failed
        finally:
            f.close()


def started_lines(log, name=None):
    who = re.escape(name) if name else r"\S+"
    return re.findall(rf"agentkit-activator: ({who}): started in", log)


# --- the scenarios, against supervisord -----------------------------------------------

@needs_supervisord
def test_optional_agents_are_dormant_and_their_ports_held_by_the_activator(fleet):
    f = fleet([AgentDef("A", ["B"]), AgentDef("B", ["C"]), AgentDef("C")])
    for name in "ABC":
        assert f.state(name) == "STOPPED"
        assert not listening_inodes(f.agents[name].private), f"{name}'s private port listens while dormant"
    pid = f.info(ACTIVATOR)["pid"]
    held = socket_inodes(pid)
    for name in "ABC":
        listeners = listening_inodes(f.agents[name].port)
        assert listeners and listeners <= held, f"{name}'s public port is not the activator's"
    assert f.state("A") == "STOPPED"  # looking did not wake anything
    # A connection is accepted at once (and, as with a systemd socket, wakes the agent).
    with socket.create_connection(("127.0.0.1", f.agents["C"].port), timeout=5):
        pass
    f.wait_state("C", ("STARTING", "RUNNING"), timeout=10)
    assert f.state("A") == f.state("B") == "STOPPED"


@needs_supervisord
def test_first_request_starts_the_chain_together_and_each_link_waits_for_readiness(fleet):
    """A -> B -> C, each taking 1 s to load: started at once, so the cold chain costs about one
    load, not three; and B's request to C waits in C's port until C is ready (it is answered)."""
    f = fleet([AgentDef("A", ["B"], args=["--start-seconds", "1"]), AgentDef("B", ["C"], args=["--start-seconds", "1"]),
               AgentDef("C", args=["--start-seconds", "1"])])
    t0 = time.monotonic()
    reply = f.request("A", {"action": "chain"}, timeout=30)
    took = time.monotonic() - t0
    assert reply["ok"] is True, reply
    assert reply["agent"] == "A"
    assert reply["deps"][0]["agent"] == "B" and reply["deps"][0]["deps"][0]["agent"] == "C"
    print(f"cold chain A -> B -> C (1 s each) through the activator: {took * 1000:.0f} ms")
    log = f.wait_log(r"A: started in")
    f.wait_log(r"C: started in")
    assert sorted(started_lines(log)) == ["A", "B", "C"], log
    # supervisord spawned each once, together: every spawn came before any of them was running
    # (one after another, A would be running before B and C were spawned). Order, not time:
    # this machine may be busy.
    events = re.findall(r"(spawned|success): '?([ABC])'?", f.read("supervisord.log"))
    spawned = [name for kind, name in events if kind == "spawned"]
    assert sorted(spawned) == ["A", "B", "C"], f.read("supervisord.log")
    assert [kind for kind, _ in events[:3]] == ["spawned"] * 3, f"started one after another: {events}"
    # Warm: no more starts.
    assert f.request("A", {"action": "chain"})["ok"] is True
    assert sorted(started_lines(f.activator_log())) == ["A", "B", "C"]


@needs_supervisord
def test_concurrent_first_requests_share_one_start(fleet):
    import zmq
    f = fleet([AgentDef("A", ["B"]), AgentDef("B", ["C"]), AgentDef("C")])
    poller, socks = zmq.Poller(), []
    for _ in range(20):
        sock = f.ctx.socket(zmq.REQ)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://127.0.0.1:{f.agents['A'].port}")
        sock.send_json({"action": "chain"})
        poller.register(sock, zmq.POLLIN)
        socks.append(sock)
    replies = []
    deadline = time.monotonic() + 30
    try:
        while len(replies) < len(socks) and time.monotonic() < deadline:
            for sock, _ in poller.poll(1000):
                replies.append(sock.recv_json())
                poller.unregister(sock)
    finally:
        for sock in socks:
            sock.close()
    assert len(replies) == 20 and all(r["ok"] for r in replies), replies
    assert len({r["pid"] for r in replies}) == 1
    f.wait_log(r"A: started in")
    log = f.wait_log(r"(?s)(?=.*A: started in)(?=.*B: started in).*C: started in")
    assert sorted(started_lines(log)) == ["A", "B", "C"], log  # one start each, for 20 clients
    assert sorted(re.findall(r"spawned: '([ABC])'", f.read("supervisord.log"))) == ["A", "B", "C"]


@needs_supervisord
def test_a_restarted_activator_adopts_running_agents(fleet):
    f = fleet([AgentDef("I", idle_stop=2.0)])
    first = f.request("I", {"action": "ping"})
    old = f.wait_state(ACTIVATOR, "RUNNING", timeout=10) and f.info(ACTIVATOR)["pid"]
    os.kill(old, signal.SIGKILL)  # supervisord starts a new one at once (autorestart)
    wait_for(lambda: f.info(ACTIVATOR)["pid"] not in (0, old) and listening_inodes(f.agents["I"].port), "a new activator", timeout=10)
    # The new one forwards to the running agent without starting it again ...
    assert f.request("I", {"action": "ping"})["pid"] == first["pid"]
    assert f.state("I") in ("STARTING", "RUNNING")  # still within its startsecs on a loaded machine
    # ... and stops it when it is idle, as the old one would have.
    f.wait_state("I", "STOPPED", timeout=10)
    assert started_lines(f.wait_log(r"I: stopped after"), "I") == ["I"]


@needs_supervisord
def test_idle_stop_then_the_next_request_starts_it_again(fleet):
    import zmq
    f = fleet([AgentDef("I", idle_stop=2.0)])
    # A connection held open keeps the agent up past its idle time.
    held = f.ctx.socket(zmq.REQ)
    held.setsockopt(zmq.LINGER, 0)
    held.connect(f"tcp://127.0.0.1:{f.agents['I'].port}")
    held.send_json({"action": "ping"})
    assert held.poll(15000), "no answer"
    first = held.recv_json()
    assert first["ok"] is True
    time.sleep(3.0)
    assert f.state("I") in ("STARTING", "RUNNING"), "stopped while a client held a connection"
    assert f.request("I", {"action": "ping"})["pid"] == first["pid"]
    held.close()
    closed = time.monotonic()
    f.wait_state("I", "STOPPED", timeout=10)
    idle = time.monotonic() - closed
    assert 1.9 <= idle <= 4.5, f"stopped {idle:.1f} s after the last connection closed (idle_stop 2 s)"
    f.wait_log(r"I: stopped after \d+\.\d s without connections")
    second = f.request("I", {"action": "ping"})
    assert second["ok"] is True and second["pid"] != first["pid"]
    assert started_lines(f.wait_log(r"I: started in", 2), "I") == ["I", "I"]
    assert f.state("I") in ("STARTING", "RUNNING")


@needs_supervisord
def test_a_dependency_stays_up_while_its_dependant_runs(fleet):
    """As with Requires= under systemd: C (idle_stop 1 s) outlives its own idle time while A runs."""
    f = fleet([AgentDef("A", ["C"], idle_stop=3.0), AgentDef("C", idle_stop=1.0)])
    assert f.request("A", {"action": "chain"})["ok"] is True  # A called C once, then let go
    done = time.monotonic()
    time.sleep(2.0)
    assert f.state("C") in ("STARTING", "RUNNING"), "C was stopped while A, which needs it, ran"
    f.wait_state("A", "STOPPED", timeout=10)
    assert time.monotonic() - done >= 2.9
    f.wait_state("C", "STOPPED", timeout=5)
    log = f.wait_log(r"C: stopped after")
    assert re.findall(r"agentkit-activator: (\w+): stopped after", log) == ["A", "C"], log


@needs_supervisord
def test_sigkill_under_steady_traffic_loses_no_request(fleet):
    f = fleet([AgentDef("K")])
    assert f.request("K", {"action": "ping"})["ok"] is True
    # Past startsecs: supervisord restarts a RUNNING program at once (a STARTING one would back off).
    f.wait_state("K", "RUNNING", timeout=10)
    old = f.info("K")["pid"]
    pids, latencies, errors = [], [], []
    t0 = time.monotonic()
    for i in range(100):
        delay = t0 + i * 0.02 - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        if i == 30:
            os.kill(old, signal.SIGKILL)
        start = time.monotonic()
        try:
            reply = f.request("K", {"action": "ping"}, timeout=15)
        except TimeoutError as exc:
            errors.append((i, str(exc)))
            continue
        latencies.append(time.monotonic() - start)
        if reply.get("ok") is not True:
            errors.append((i, reply))
        pids.append(reply.get("pid"))
    assert not errors, errors
    assert len(pids) == 100
    new = f.info("K")["pid"]
    assert new != old
    assert pids[:30] == [old] * 30 and set(pids[30:]) == {new}, "replies came from more than one restart"
    log = f.read("supervisord.log")
    assert len(re.findall(r"spawned: 'K'", log)) == 2, log
    assert len(re.findall(r"exited: K \(terminated by SIGKILL", log)) == 1, log
    print(f"SIGKILL under 50 requests/s: none lost; slowest request {max(latencies) * 1000:.0f} ms, "
          f"median {statistics.median(latencies) * 1000:.1f} ms")


@needs_supervisord
def test_crash_loop_closes_the_connection_and_spares_the_neighbours(fleet):
    f = fleet([AgentDef("D", args=["--crash-at-start"], start_timeout=25.0), AgentDef("E")])
    activator = f.info(ACTIVATOR)["pid"]

    def closed_within(port, timeout):
        """Connect, send nothing, and wait for the activator to close: seconds it took."""
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as client:
            try:
                assert client.recv(1) == b""
            except ConnectionResetError:
                pass
            except TimeoutError:
                pytest.fail(f"the connection was still open after {timeout} s")
        return time.monotonic() - t0

    d_port = f.agents["D"].port
    client = socket.create_connection(("127.0.0.1", d_port), timeout=30)
    try:
        # While D crash-loops, its neighbour starts and answers as usual.
        t0 = time.monotonic()
        assert f.request("E", {"action": "ping"}, timeout=10)["ok"] is True
        assert time.monotonic() - t0 < 3
        assert f.state("D") in ("STARTING", "BACKOFF")
        t0 = time.monotonic()
        try:
            assert client.recv(1) == b""
        except ConnectionResetError:
            pass
        first = time.monotonic() - t0
    finally:
        client.close()
    assert f.state("D") == "FATAL"
    log = f.wait_log(r"D: start failed")
    assert re.search(r"D: start failed after \d+ ms: supervisord gave up on it: FATAL \(Exited too quickly", log), log
    # The agent's last line, with the local time that agentkit's logging puts first outside the journal.
    assert re.search(r"its log ends: '(\S+ \S+ )?agentkit-agent: exiting with status 1 at start, as asked "
                     r"\(--crash-at-start\)'", log), log
    # From FATAL, a new connection tries one new start, which fails the same way.
    second = closed_within(d_port, timeout=30)
    assert f.state("D") == "FATAL"
    f.wait_log(r"D: start failed", 2)
    assert len(re.findall(r"spawned: 'D'", f.read("supervisord.log"))) == 8  # 2 x (1 + 3 retries)
    # The activator is the same process, and E still answers.
    assert f.info(ACTIVATOR)["pid"] == activator and f.state(ACTIVATOR) == "RUNNING"
    assert f.request("E", {"action": "ping"}, timeout=5)["ok"] is True
    print(f"crash loop: connection closed {first:.1f} s and {second:.1f} s after connecting")


@needs_supervisord
def test_a_start_that_never_listens_is_bounded(fleet):
    """One program runs but never listens (start_timeout passes); one exits 0 after startsecs (EXITED)."""
    sleeper = [PYTHON, "-c", "import time; time.sleep(60)"]
    quitter = [PYTHON, "-c", "import time; time.sleep(1.5)"]
    f = fleet([AgentDef("Mute", command=sleeper, start_timeout=1.5), AgentDef("Quit", command=quitter)])
    took = {}
    for name in ("Mute", "Quit"):
        t0 = time.monotonic()
        with socket.create_connection(("127.0.0.1", f.agents[name].port), timeout=15) as client:
            assert client.recv(1) == b""
        took[name] = time.monotonic() - t0
    assert 1.4 <= took["Mute"] <= 4, took
    assert 2.4 <= took["Quit"] <= 6, took  # 1.5 s up, then EXITED for EXITED_GRACE
    log = f.wait_log(r"(Mute|Quit): start failed", 2)
    assert re.search(r"Mute: start failed after \d+ ms: 127\.0\.0\.1:\d+ was not ready \(port\) "
                     r"within 1\.5 s \(supervisord: (STARTING|RUNNING)\)", log), log
    assert re.search(r"Quit: start failed after \d+ ms: supervisord: EXITED \(.*exit status 0", log), log
    assert f.state("Quit") == "EXITED"


@needs_supervisord
def test_supervisord_may_come_up_after_the_activator(tmp_path):
    """The activator holds the ports at once and reaches supervisord when its socket appears."""
    root = tmp_path / "late"
    root.mkdir()
    f = Fleet(root, [AgentDef("L")], with_activator=False)
    f.write()
    activator = subprocess.Popen([PYTHON, "-m", ACTIVATOR_MODULE, "--config", str(f.config)],
                                 stderr=open(root / "activator.err.log", "wb"))
    try:
        wait_for(lambda: listening_inodes(f.agents["L"].port), "the activator's listener", timeout=10)
        reply = {}

        def ask():
            reply.update(f.request("L", {"action": "ping"}, timeout=20))
        import threading
        client = threading.Thread(target=ask)
        client.start()  # waits: supervisord's socket does not exist yet
        time.sleep(1.0)
        assert not reply
        f.start()
        client.join(20)
        assert reply.get("ok") is True and reply["agent"] == "L"
    finally:
        activator.send_signal(signal.SIGTERM)
        try:
            activator.wait(timeout=10)
        finally:
            if activator.poll() is None:
                activator.kill()
                activator.wait()
            f.close()


@needs_supervisord
def test_forwarding_overhead(fleet):
    """connect -> first reply, through the activator and straight to the target, on a warm agent."""
    f = fleet([AgentDef("W")])
    for _ in range(20):
        f.request("W", {"action": "ping"})
        f.request("W", {"action": "ping"}, direct=True)
    through, direct = [], []
    for _ in range(300):
        for sink, how in ((through, False), (direct, True)):
            t0 = time.perf_counter()
            assert f.request("W", {"action": "ping"}, direct=how)["ok"] is True
            sink.append(time.perf_counter() - t0)

    def pct(values, q):
        values = sorted(values)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000
    p50 = pct(through, 0.5) - pct(direct, 0.5)
    p99 = pct(through, 0.99) - pct(direct, 0.99)
    print(f"connect -> first reply, 300 each: direct p50 {pct(direct, 0.5):.3f} ms p99 {pct(direct, 0.99):.3f} ms; "
          f"through the activator p50 {pct(through, 0.5):.3f} ms p99 {pct(through, 0.99):.3f} ms; "
          f"added p50 {p50:.3f} ms p99 {p99:.3f} ms")
    assert p50 < 2.0, "the activator adds more than 2 ms to a warm request"


# --- the command on its own ------------------------------------------------------------

def run_activator(config_path, timeout=10):
    return subprocess.run([PYTHON, "-m", ACTIVATOR_MODULE, "--config", str(config_path)],
                          capture_output=True, text=True, timeout=timeout)


def write_config(tmp_path, agents, **top):
    data = {"fleet": "lab", "host": "lab", "supervisor": f"unix://{tmp_path}/missing.sock",
            "control": f"{tmp_path}/activator.sock", "agents": agents}
    data.update(top)
    path = tmp_path / "activator.json"
    path.write_text(json.dumps(data))
    return path


def agent_entry(name, port, private, depends_on=(), **over):
    entry = {"name": name, "program": name, "listen": ["127.0.0.1", port], "target": ["127.0.0.1", private],
             "depends_on": list(depends_on), "idle_stop": 120.0, "start_timeout": 30.0, "ready": ["port"]}
    entry.update(over)
    return entry


def test_a_port_in_use_is_named_with_its_agent_and_exits_1(tmp_path):
    p1, p2, busy = free_ports(3)
    path = write_config(tmp_path, [agent_entry("Free", p1, p2), agent_entry("Busy", busy, p2 + 1000)])
    with socket.create_server(("127.0.0.1", busy)):
        result = run_activator(path)
    assert result.returncode == 1, result.stderr
    assert f"agent Busy: cannot listen on 127.0.0.1:{busy}: Address already in use" in result.stderr
    # Nothing stays bound.
    with socket.create_server(("127.0.0.1", p1)):
        pass


def test_sigterm_exits_0_and_closes_the_listeners(tmp_path):
    p1, p2 = free_ports(2)
    path = write_config(tmp_path, [agent_entry("X", p1, p2)])
    proc = subprocess.Popen([PYTHON, "-m", ACTIVATOR_MODULE, "--config", str(path)],
                            stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: listening_inodes(p1) or proc.poll() is not None, "the activator's listener", timeout=10)
        assert proc.poll() is None, proc.stderr.read()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
        assert "SIGTERM: closing 1 listening sockets" in proc.stderr.read()
        assert not listening_inodes(p1)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# A target that reads until the client's half-close, then answers with what it got and a
# payload of its own on the half it still has open. It takes its time at first, so that
# the activator's buffers fill in both directions and flow control has to hold.
SINK = """
import hashlib, socket, sys, time
port, size = int(sys.argv[1]), int(sys.argv[2])
server = socket.create_server(("127.0.0.1", port))
while True:
    conn, _ = server.accept()
    with conn:
        time.sleep(0.5)
        digest, got = hashlib.sha256(), 0
        while chunk := conn.recv(65536):
            digest.update(chunk)
            got += len(chunk)
        if got:  # not the activator's readiness probe (connect, close)
            conn.sendall(f"{got} {digest.hexdigest()}\\n".encode() + bytes(range(256)) * (size // 256))
"""


@needs_supervisord
def test_forwarding_both_ways_with_half_close_and_back_pressure(fleet, tmp_path):
    import hashlib
    size = 8 * 1024 * 1024
    script = tmp_path / "sink.py"
    script.write_text(SINK)
    agent = AgentDef("S", command=[PYTHON, str(script), "{private}", str(size)])
    f = fleet([agent])
    sent = os.urandom(size)
    with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as client:
        client.sendall(sent)
        client.shutdown(socket.SHUT_WR)
        time.sleep(0.5)  # now the target's direction must wait for us
        received = bytearray()
        while chunk := client.recv(1 << 20):
            received += chunk
    head, _, body = bytes(received).partition(b"\n")
    assert head.decode() == f"{size} {hashlib.sha256(sent).hexdigest()}"
    assert body == bytes(range(256)) * (size // 256)
    assert f.state(ACTIVATOR) == "RUNNING"


def test_a_bad_config_exits_1_with_one_clear_message(tmp_path):
    path = write_config(tmp_path, [agent_entry("X", 17599, 17598, idle_stop=0)], fleet="")
    result = run_activator(path)
    assert result.returncode == 1
    lines = [line.split("agentkit-activator: ", 1)[1] for line in result.stderr.splitlines()]
    assert lines == [f"error: {path}: fleet: expected a non-empty string, got \"\"; not started"]
    path = write_config(tmp_path, [agent_entry("X", 17599, 17598, idle_stop=0)])
    result = run_activator(path)
    assert result.returncode == 1
    assert result.stderr.splitlines()[-1].endswith(
        f"agentkit-activator: error: {path}: agents[0] (X).idle_stop: expected seconds above zero, got 0; "
        "not started"), result.stderr


# --- the schema: agentkit.backends.supervisord.config ---------------------------------------

GOOD = {"fleet": "lab", "host": "lab", "supervisor": "unix:///run/agentkit/supervisor.sock",
        "control": "/run/agentkit/activator.sock",
        "agents": [agent_entry("X", 7101, 27101, ["Z", "Y"]), agent_entry("Y", 7102, 27102, ["Z"]),
                   agent_entry("Z", 7103, 27103)]}


def problem(data, path="lab.json"):
    with pytest.raises(ConfigError) as info:
        Config.from_json(data, path)
    return str(info.value)


def variant(**changes):
    """GOOD with agents[i] keys changed: variant(agent0={...}) or top-level keys."""
    data = json.loads(json.dumps(GOOD))
    for key, value in changes.items():
        if re.fullmatch(r"agent\d+", key):
            data["agents"][int(key[5:])].update(value)
        else:
            data[key] = value
    return data


def test_good_config_parses():
    config = Config.from_json(GOOD, "lab.json")
    assert [a.name for a in config.agents] == ["X", "Y", "Z"]
    x = config.agents[0]
    assert x.listen == ("127.0.0.1", 7101) and x.target == ("127.0.0.1", 27101)
    assert x.depends_on == ("Z", "Y") and x.idle_stop == 120.0 and x.start_timeout == 30.0
    assert config.supervisor == "unix:///run/agentkit/supervisor.sock"
    assert Config.from_json(variant(agent0={"idle_stop": 2})).agents[0].idle_stop == 2.0  # seconds are floats


def test_what_the_writer_dumps_the_reader_loads(tmp_path):
    config = Config(fleet="lab", host="h", supervisor="unix:///s/supervisor.sock", control="/s/activator.sock", agents=(
        AgentSpec(name="A", program="A", listen=("0.0.0.0", 7000), target=("127.0.0.1", 27000),
                  depends_on=("B",), idle_stop=120.0, start_timeout=30.0, ready=("http", "/health")),
        AgentSpec(name="B", program="B", listen=("::", 7001), target=("::1", 27001),
                  depends_on=(), idle_stop=0.5, start_timeout=1.0, ready=("port",))))
    text = config.dumps()
    assert text.endswith("}\n") and text == json.dumps(json.loads(text), sort_keys=True, indent=2) + "\n"
    assert json.loads(text)["agents"][0]["listen"] == ["0.0.0.0", 7000]
    path = tmp_path / "activator.json"
    path.write_text(text)
    assert Config.load(path) == config


def test_the_writer_cannot_build_what_the_reader_would_refuse():
    spec = dict(program="A", listen=("0.0.0.0", 7000), target=("127.0.0.1", 27000), idle_stop=1.0,
                start_timeout=1.0, ready=("port",))
    with pytest.raises(ValueError, match=r"unknown agent 'C'"):
        Config(fleet="f", host="h", supervisor="unix:///s", control="/s/activator.sock",
               agents=(AgentSpec(name="A", depends_on=("C",), **spec),))


@pytest.mark.parametrize("data, expected", [
    ([], "lab.json: expected an object, got array"),
    ({k: v for k, v in GOOD.items() if k != "supervisor"}, "lab.json: supervisor: missing"),
    (variant(supervisord="x"), "lab.json: supervisord: unknown key (did you mean 'supervisor'?); "
                               "expected fleet, host, supervisor, control, agents, gpu"),
    (variant(supervisor="unix://relative.sock"),
     'lab.json: supervisor: expected supervisord\'s server URL, unix:///absolute/path.sock or '
     'http://host:port, got "unix://relative.sock"'),
    (variant(agents={}), "lab.json: agents: expected an array, got object"),
    (variant(agents=[7]), "lab.json: agents[0]: expected an object, got int"),
    (variant(agent0={"listen": ["0.0.0.0", 70000]}),
     "lab.json: agents[0] (X).listen: port: expected a TCP port from 1 to 65535, got 70000"),
    (variant(agent0={"listen": "0.0.0.0:7101"}),
     'lab.json: agents[0] (X).listen: expected [host, port], got "0.0.0.0:7101"'),
    (variant(agent0={"target": ["localhost", 27101]}),
     'lab.json: agents[0] (X).target: host: expected an IP address (e.g. 127.0.0.1 or ::1), got "localhost"'),
    (variant(agent0={"idle_stop": "2min"}),
     'lab.json: agents[0] (X).idle_stop: expected seconds above zero, got "2min"'),
    (variant(agent2={"start_timeout": True}),
     "lab.json: agents[2] (Z).start_timeout: expected seconds above zero, got true"),
    (variant(agent1={"name": "X"}), "lab.json: agents[1] (X).name: duplicate agent name, also agents[0]"),
    (variant(agent0={"depends_on": ["Z", "YY"]}),
     "lab.json: agents[0] (X).depends_on[1]: unknown agent 'YY' (did you mean 'Y'?): "
     "dependencies must be agents of this file"),
    (variant(agent2={"depends_on": ["Z"]}),
     "lab.json: agents[2] (Z).depends_on[0]: an agent cannot depend on itself"),
    (variant(agent1={"depends_on": "Z"}),
     'lab.json: agents[1] (Y).depends_on: expected an array of agent names, got "Z"'),
    (variant(agent1={"idle": 3}),
     "lab.json: agents[1] (Y).idle: unknown key (did you mean 'idle_stop'?); expected name, program, listen, "
     "target, depends_on, idle_stop, start_timeout, ready"),
    (variant(agent1={"ready": ["command", "sh"]}),
     'lab.json: agents[1] (Y).ready: expected ["port"], ["http", "/path"] or ["command", "/absolute/program", '
     '...], got ["command", "sh"]'),
    (variant(agent1={"name": ""}), 'lab.json: agents[1].name: expected a non-empty string without spaces, got ""'),
])
def test_config_problems(data, expected):
    assert problem(data) == expected


def test_a_file_from_another_version_is_refused_by_its_first_difference():
    data = variant()
    del data["agents"][2]["target"]
    assert problem(data) == "lab.json: agents[2] (Z).target: missing"
    data = variant(agent0={"ready_timeout": 30.0})
    del data["agents"][0]["start_timeout"]
    assert problem(data) == ("lab.json: agents[0] (X).ready_timeout: unknown key (did you mean 'start_timeout'?); "
                             "expected name, program, listen, target, depends_on, idle_stop, start_timeout, ready")


def test_unreadable_files_are_named(tmp_path):
    path = tmp_path / "activator.json"
    path.write_text('{"fleet": "lab",\n "host": lab}\n')
    with pytest.raises(ConfigError) as info:
        Config.load(path)
    assert str(info.value) == f"{path}:2:10: not valid JSON: Expecting value"
    with pytest.raises(ConfigError) as info:
        Config.load(tmp_path / "nope.json")
    assert str(info.value) == (f"{tmp_path}/nope.json: cannot read the activator's configuration: "
                               "No such file or directory")
    path.write_bytes(b'{"fleet": "\xff"}')
    with pytest.raises(ConfigError, match=rf"^{re.escape(str(path))}: not UTF-8 text: invalid start byte$"):
        Config.load(path)
