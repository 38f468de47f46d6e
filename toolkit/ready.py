"""agentkit-ready: wait until an agent is ready, by the probe its manifest names.

systemd runs it as the agent's ExecStartPost=, so the unit becomes active (and
its dependants and its proxy start) only once the program answers: a TCP port
that accepts, an HTTP path that answers 2xx, or a command that exits 0. It
gives up after --timeout (the agent's start_timeout, which systemd enforces
too) and says what it saw last. supervisord's `up` uses the same probes for the
essential agents, the activator their asyncio twins for the optional ones.

It imports nothing beyond the standard library's sockets: it starts beside the
agent on every cold start, and its own start must not be what the client waits for.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import time

PROG = "agentkit-ready"
PORT_INTERVAL = 0.005   # s between connect() attempts: a refused connect costs microseconds
HTTP_INTERVAL = 0.02    # s between HTTP requests
COMMAND_INTERVAL = 0.1  # s between runs of a probe command (each one is a fork and exec)


def http_request(host: str, path: str) -> bytes:
    """The request of an HTTP probe (HTTP/1.0: the server closes, no keep-alive to manage)."""
    return f"GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: {PROG}\r\nConnection: close\r\n\r\n".encode("ascii")


def http_status(head: bytes) -> int | None:
    """The status code of a response's first line, or None when it is not HTTP."""
    parts = head.split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def port_ready(host: str, port: int, timeout: float = 1.0) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def http_ready(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[bool, str]:
    url = f"http://{host}:{port}{path}"
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(http_request(host, path))
            head = b""
            while b"\r\n" not in head and len(head) < 4096:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
    except OSError as exc:
        return False, f"{url}: {exc.strerror or exc}"
    status = http_status(head)
    if status is None:
        return False, f"{url}: the answer is not HTTP ({head[:40]!r})"
    return 200 <= status < 300, f"{url} answered {status}"


def command_ready(argv: list[str], timeout: float) -> tuple[bool, str]:
    try:
        done = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return False, f"{argv[0]} ran past {timeout:g} s"
    except OSError as exc:
        return False, f"{argv[0]}: {exc.strerror or exc}"
    if done.returncode == 0:
        return True, f"{argv[0]} exited 0"
    last = done.stderr.decode("utf-8", "replace").strip().splitlines()[-1:] or [""]
    return False, f"{argv[0]} exited {done.returncode}" + (f": {last[0][-200:]}" if last[0] else "")


EXITED = "the program exited before it was ready"


def _alive(pid: int | None) -> bool:
    if pid is None:
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def wait(probe, timeout: float, interval: float, pid: int | None = None) -> tuple[bool, str]:
    """Call probe() until it says ready or `timeout` seconds passed; its last word either way.
    `pid`: the program's; once it is gone no probe can pass (systemd waits for ExecStartPost=
    to finish even when the main process has exited, so the probe must notice)."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):  # bounded: one try per interval, and one more
        ok, said = probe()
        if ok or time.monotonic() >= deadline:
            return ok, said
        if not _alive(pid):
            return False, EXITED
        time.sleep(interval)
    return False, said


def probe_for(kind: str, host: str, port: int, path: str | None = None, argv: list[str] | None = None,
              timeout: float = 30.0):
    """(probe, interval) for a readiness kind: port, http, command."""
    if kind == "port":
        return (lambda: port_ready(host, port)), PORT_INTERVAL
    if kind == "http":
        return (lambda: http_ready(host, port, path or "/")), HTTP_INTERVAL
    if kind == "command":
        return (lambda: command_ready(list(argv or ()), timeout)), COMMAND_INTERVAL
    raise ValueError(f"no probe for readiness {kind!r}")


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog=PROG, description="Wait until an agent is ready, or time out.")
    parser.add_argument("--timeout", type=float, required=True, metavar="SECONDS")
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--port", type=_address, metavar="HOST:PORT", help="ready when HOST:PORT accepts a connection")
    what.add_argument("--http", nargs=2, metavar=("HOST:PORT", "PATH"), help="ready when PATH answers 2xx")
    what.add_argument("--command", nargs=argparse.REMAINDER, help="ready when this command exits 0")
    args = parser.parse_args(argv)
    began = time.monotonic()
    if args.port:
        probe, interval = probe_for("port", *args.port)
    elif args.http:
        probe, interval = probe_for("http", *_address(args.http[0]), path=args.http[1])
    else:
        if not args.command:
            parser.error("--command needs the command to run")
        probe, interval = probe_for("command", "", 0, argv=args.command, timeout=args.timeout)
    main_pid = os.environ.get("MAINPID", "")  # systemd tells its control processes the main PID
    ok, said = wait(probe, args.timeout, interval, int(main_pid) if main_pid.isdigit() else None)
    took = time.monotonic() - began
    if ok:
        print(f"{PROG}: ready after {took * 1000:.0f} ms: {said}", file=sys.stderr)
        return 0
    print(f"{PROG}: {said}" if said == EXITED else f"{PROG}: not ready within {args.timeout:g} s: {said}",
          file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
