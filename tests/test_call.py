"""`agentkit call` against real servers: Python's http.server over HTTP, and plain sockets
that accept and stay silent or answer in another protocol; each failure says which step."""

from __future__ import annotations

import socket
import subprocess
import sys
import textwrap
import threading

import pytest

from agentkit.cli import main
from helpers import wait_for

from backends.supervisord.harness import free_ports


@pytest.fixture
def fleet(tmp_path):
    ports = free_ports(4)
    root = tmp_path / "agents"
    root.mkdir()
    (root / "fleet.yaml").write_text("name: calls\nhosts:\n  lab: {address: 127.0.0.1}\n")
    (root / "lab.yaml").write_text("host: lab\nagents:\n" + textwrap.indent(textwrap.dedent(f"""\
        Web: {{essential: true, command: [python3, -m, http.server, "{{port}}"], port: {ports[0]}}}
        Nobody: {{essential: true, command: [python3], port: {ports[1]}}}
        Silent: {{essential: true, command: [python3], port: {ports[2]}}}
        Greeter: {{essential: true, command: [python3], port: {ports[3]}}}
        """), "  "))
    return root, ports


def call(root, *args) -> tuple[int, str, str]:
    import io
    from contextlib import redirect_stderr, redirect_stdout
    out, err = io.StringIO(), io.StringIO()
    with redirect_stdout(out), redirect_stderr(err):
        code = main(["-m", str(root), "call", *args])
    return code, out.getvalue(), err.getvalue()


def test_http_answers_and_each_failure_names_its_step(fleet, tmp_path):
    root, (web, nobody, silent, greeter) = fleet
    (tmp_path / "hello.txt").write_text("hello from http.server\n")
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(web), "--bind", "127.0.0.1"], cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    quiet = socket.create_server(("127.0.0.1", silent))  # accepts (the backlog), never answers
    talker = socket.create_server(("127.0.0.1", greeter))
    stop = threading.Event()

    def greet():
        talker.settimeout(0.2)
        while not stop.is_set():
            try:
                conn, _ = talker.accept()
            except OSError:
                continue
            with conn:
                conn.sendall(b"220 hello, I speak SMTP\r\n")

    thread = threading.Thread(target=greet, daemon=True)
    thread.start()
    try:
        wait_for(lambda: socket.socket().connect_ex(("127.0.0.1", web)) == 0, "http.server listening")
        code, out, err = call(root, "Web", "--path", "/hello.txt")
        assert (code, out) == (0, "hello from http.server\n") and "Web answered HTTP 200" in err
        code, _, err = call(root, "Web", "--method", "POST", "--data", "x")
        assert code == 0 and "Web answered HTTP 501" in err  # http.server has no POST: its answer, not ours

        code, _, err = call(root, "Nobody", "--timeout", "2")
        assert code == 1 and f"Nobody (127.0.0.1:{nobody}): nothing accepted the connection" in err
        code, _, err = call(root, "Silent", "--timeout", "1")
        assert code == 1 and "accepted the connection, but no HTTP answer came within 1 s" in err
        code, _, err = call(root, "Greeter", "--timeout", "2")
        assert code == 1 and "the answer is not HTTP" in err
        code, out, _ = call(root, "Greeter", "--protocol", "tcp", "--timeout", "2")
        assert code == 0 and out == "220 hello, I speak SMTP\r\n"  # the bytes as they came
        code, _, err = call(root, "Silent", "--protocol", "zmq", "--timeout", "1")
        assert code == 1 and "accepted the connection, but no ZeroMQ answer came within 1 s" in err
    finally:
        stop.set()
        thread.join(timeout=5)
        server.terminate()
        server.wait(timeout=10)
        quiet.close()
        talker.close()
