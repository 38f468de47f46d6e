"""agentkit-ready: wait until an agent is ready, by the probe its manifest names.

systemd runs it as the agent's ExecStartPost=, so the unit becomes active (and
its dependants and its proxy start) only once the program answers: a TCP port
that accepts, an HTTP path that answers 2xx, or a command that exits 0. It
gives up after --timeout (the agent's start_timeout, which systemd enforces
too) and says what it saw last. supervisord's `up` uses the same probes for the
essential agents, the activator their asyncio twins for the optional ones.

It imports nothing beyond the standard library's sockets (subprocess only for a
command probe, no argparse) and runs as `python3 -S -I ready.py` where it can: it
starts beside the agent on every cold start, and its own start must not be what
the client waits for.
"""

from __future__ import annotations

import os
import socket
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


def connected_to_itself(sockname, peername) -> bool:
    """A connect() to a port nobody listens on, from that same port, succeeds (TCP's simultaneous
    open): on loopback, with a port in the ephemeral range (32768-60999), about once in 20,000
    tries. A probe that retries every few milliseconds meets it within minutes, and would call
    a program that is still loading ready."""
    return sockname is not None and sockname == peername


def _connect(host: str, port: int, timeout: float) -> socket.socket:
    # An IP address as bytes: no name lookup, and no import of the idna codec for it.
    sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect((host.encode("ascii"), port))
        if connected_to_itself(sock.getsockname(), sock.getpeername()):
            raise ConnectionRefusedError(111, "nothing listens yet (the connection reached itself)")
    except BaseException:
        sock.close()
        raise
    return sock


def port_ready(host: str, port: int, timeout: float = 1.0) -> tuple[bool, str]:
    try:
        with _connect(host, port, timeout):
            return True, f"{host}:{port} accepts connections"
    except OSError as exc:
        return False, f"{host}:{port}: {exc.strerror or exc}"


def http_ready(host: str, port: int, path: str, timeout: float = 2.0) -> tuple[bool, str]:
    url = f"http://{host}:{port}{path}"
    try:
        with _connect(host, port, timeout) as sock:
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
    import subprocess  # ~5 ms: only for command probes

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


USAGE = (f"usage: {PROG} --timeout SECONDS (--port HOST:PORT | --http HOST:PORT PATH | --command PROGRAM [ARG...])\n"
         "Wait until an agent is ready, or time out (exit 1).\n"
         f"       {PROG} --live SECONDS FAILURES UNIT (--port HOST:PORT | --http HOST:PORT PATH)\n"
         "Probe a running agent every SECONDS; after FAILURES misses in a row, kill UNIT's main process\n"
         "(systemctl kill), so that its restart policy starts it again.")
LIVE_TIMEOUT = 5.0  # s one liveness probe may take (less when the interval is shorter)


def live_probe(kind: str, host: str, port: int, path: str | None, interval: float):
    """The probe of a liveness check (kind tcp or http), shared by agentkit-ready --live (systemd)
    and the status service (supervisord): an answer slower than the beat is a miss."""
    timeout = min(LIVE_TIMEOUT, interval * 0.9)
    if kind == "http":
        return lambda: http_ready(host, port, path or "/", timeout)
    return lambda: port_ready(host, port, timeout)


def live(probe, interval: float, failures: int, on_dead, say=print) -> None:
    """Probe every `interval` seconds for as long as the agent runs (systemd stops us with it:
    BindsTo=); `failures` misses in a row call on_dead() once, then the count starts over."""
    misses = 0
    next_at = time.monotonic() + interval
    while True:
        # On a fixed beat, a probe's own time included: `failures` misses take `failures` intervals.
        time.sleep(max(0.0, next_at - time.monotonic()))
        next_at = max(next_at + interval, time.monotonic())
        ok, said = probe()
        if ok:
            if misses:
                say(f"{PROG}: answers again: {said}")
            misses = 0
            continue
        misses += 1
        say(f"{PROG}: no answer ({misses} of {failures}): {said}")
        if misses >= failures:
            on_dead()
            misses = 0


def _kill(unit: str) -> None:
    import subprocess

    print(f"{PROG}: {unit} stopped answering: killing its main process, for its restart policy to start "
          "it again", flush=True)
    done = subprocess.run(["systemctl", "kill", "--kill-who=main", "--signal=SIGKILL", unit],
                          stdin=subprocess.DEVNULL, capture_output=True, timeout=30)
    if done.returncode != 0:
        print(f"{PROG}: systemctl kill {unit} failed: {done.stderr.decode(errors='replace').strip()}", flush=True)


def live_main(argv: list[str]) -> int:
    if len(argv) < 5 or not argv[1].replace(".", "", 1).isdigit() or not argv[2].isdigit():
        raise ValueError("--live SECONDS FAILURES UNIT, then one probe")
    interval, failures, unit = float(argv[1]), int(argv[2]), argv[3]
    kind, rest = argv[4], argv[5:]
    if kind == "--port" and len(rest) == 1:
        probe = live_probe("tcp", *_address(rest[0]), None, interval)
    elif kind == "--http" and len(rest) == 2 and rest[1].startswith("/"):
        probe = live_probe("http", *_address(rest[0]), rest[1], interval)
    else:
        raise ValueError(f"unknown liveness probe {' '.join(argv[4:])!r}")
    print(f"{PROG}: watching {unit} every {interval:g} s ({failures} misses in a row: killed)", flush=True)
    live(probe, interval, failures, lambda: _kill(unit), say=lambda line: print(line, flush=True))
    return 0


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def parse(argv: list[str]):
    """(timeout, probe, interval) from the command line; ValueError says what is wrong."""
    if len(argv) < 4 or argv[0] != "--timeout":
        raise ValueError("--timeout SECONDS comes first, then one probe")
    timeout = float(argv[1])
    kind, rest = argv[2], argv[3:]
    if kind == "--port" and len(rest) == 1:
        return (timeout,) + probe_for("port", *_address(rest[0]))
    if kind == "--http" and len(rest) == 2 and rest[1].startswith("/"):
        return (timeout,) + probe_for("http", *_address(rest[0]), path=rest[1])
    if kind == "--command" and rest:
        return (timeout,) + probe_for("command", "", 0, argv=rest, timeout=timeout)
    raise ValueError(f"unknown probe {' '.join(argv[2:])!r}")


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args in (["-h"], ["--help"]):
        print(USAGE)
        return 0
    try:
        if args[:1] == ["--live"]:
            return live_main(args)
        timeout, probe, interval = parse(args)
    except ValueError as exc:
        print(f"{PROG}: {exc}\n{USAGE}", file=sys.stderr)
        return 2
    began = time.monotonic()
    main_pid = os.environ.get("MAINPID", "")  # systemd tells its control processes the main PID
    ok, said = wait(probe, timeout, interval, int(main_pid) if main_pid.isdigit() else None)
    took = time.monotonic() - began
    if ok:
        print(f"{PROG}: ready after {took * 1000:.0f} ms: {said}", file=sys.stderr)
        return 0
    print(f"{PROG}: {said}" if said == EXITED else f"{PROG}: not ready within {timeout:g} s: {said}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
