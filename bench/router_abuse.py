"""Measurement: agentkit-router against a hostile client (idle and slow connections, absurd numbers,
malformed request heads); prints a table, asserts nothing.

Setting: agentkit-router as a subprocess (`python -m agentkit.router.main`, so PYTHONPATH may point
it at another tree, e.g. the code before a change) in front of two stand-in backends
(tests/router/standin.py, threads of this process), started with RLIMIT_NOFILE's soft limit at
1024 as systemd gives a unit without LimitNOFILE= (the hard limit is left as it is). A fresh router
for each scenario:

- idle N: N TCP connections opened to the router that never send a byte, while a steady client
  (a new connection per request, a chat completion every 50 ms) runs the whole time; then new
  clients: are they served? The router's open descriptors and its NOFILE soft limit are read
  from /proc.
- slow clients: one connection sends a partial request head, one more header byte a second,
  and never finishes it; one sends nothing; one sends a whole head and then its body a byte a
  second: how long each stays open (capped).
- unfinished heads: 200 connections each send 120 headers of 8,000 bytes and never the end
  of the head: the router's resident memory with them open.
- a chat completion whose max_tokens has 5,000 digits: the status and the error's param.
- a 1 MB header line, 1,000 headers: the status and the lines the router logs for each; then a
  flood of 500 such requests: the lines logged in all (one router, after 12 s so that a
  rate limit's summary line is in).

    .venv/bin/python bench/router_abuse.py [--idle 2000,10000] [--cap 25] [--flood 500] [--heads 200] [--json]

Every socket and process is closed at the end, on failure too; every loop is bounded.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests" / "router"))

from standin import StandinBackend  # noqa: E402
from steady import CHAT, Steady, closed_by_peer, post  # noqa: E402

UNIT_SOFT_NOFILE = 1024  # what systemd gives a service without LimitNOFILE= (soft)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def raise_own_nofile() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


class Router:
    def __init__(self, local: StandinBackend, cloud: StandinBackend, workdir: Path, extra: list[str] = ()):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / f"router-{self.port}.log"
        self._log = open(self.log_path, "w")
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

        def limit():  # in the child, before exec: the unit's soft limit
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(UNIT_SOFT_NOFILE, hard), hard))

        args = [sys.executable, "-m", "agentkit.router.main", "--listen", f"127.0.0.1:{self.port}",
                "--local-url", local.url, "--local-model", "local-8b", "--cloud-url", cloud.url,
                "--cloud-model", "cloud-large", *extra]
        env = dict(os.environ, LD_LIBRARY_PATH=str(workdir / "no-nvml"))
        self.process = subprocess.Popen(args, stdout=self._log, stderr=subprocess.STDOUT, env=env,
                                        preexec_fn=limit, start_new_session=True)
        deadline = time.monotonic() + 20
        for _ in range(400):
            if self.process.poll() is not None:
                raise RuntimeError(f"the router exited ({self.process.returncode}):\n{self.log()}")
            if post(self.base, "/v1/chat/completions", CHAT, timeout=2)[0] == 200:
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the router did not answer within 20 s:\n{self.log()}")
            time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> int:
        return len(self.log().splitlines())

    def nofile(self) -> str:
        try:
            for line in Path(f"/proc/{self.process.pid}/limits").read_text().splitlines():
                if line.startswith("Max open files"):
                    return "/".join(line.split()[3:5])
        except OSError:
            pass
        return "?"

    def fds(self) -> int:
        try:
            return len(os.listdir(f"/proc/{self.process.pid}/fd"))
        except OSError:
            return -1

    def close(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()


def open_idle(port: int, count: int, seconds: float) -> tuple[list[socket.socket], str]:
    """Up to `count` connections that send nothing, within `seconds`; (sockets, how it ended)."""
    socks: list[socket.socket] = []
    end = time.monotonic() + seconds
    note = "all opened"
    for _ in range(count):
        if time.monotonic() > end:
            note = f"stopped after {seconds:g} s"
            break
        s = socket.socket()
        s.settimeout(2)
        try:
            s.connect(("127.0.0.1", port))
        except OSError as exc:
            s.close()
            note = f"connect failed: {exc}"
            break
        socks.append(s)
    return socks, note


def scenario_idle(local, cloud, workdir: Path, count: int, extra: list[str]) -> dict:
    router = Router(local, cloud, workdir, extra)
    socks: list[socket.socket] = []
    try:
        with Steady(router.base) as steady:
            time.sleep(0.5)
            started = time.monotonic()
            socks, note = open_idle(router.port, count, seconds=60)
            opened = time.monotonic() - started
            time.sleep(1.0)  # let the router accept what it can
            fds = router.fds()
            probes = [post(router.base, "/v1/chat/completions", CHAT, timeout=5) for _ in range(3)]
            reset = sum(closed_by_peer(s) for s in socks)
            time.sleep(0.5)
        new = "; ".join(sorted({"200" if s == 200 else f"{s}: {t[:70]}" for s, t in probes}))
        return {"scenario": f"idle {count}", "router NOFILE": router.nofile(),
                "opened": f"{len(socks)} in {opened:.1f} s ({note})", "router fds": fds,
                "closed by router": reset, "new client": new, "steady client": steady.summary()}
    finally:
        for s in socks:
            s.close()
        router.close()


def scenario_slow(local, cloud, workdir: Path, cap: float, extra: list[str]) -> dict:
    router = Router(local, cloud, workdir, extra)
    # name -> (what it sends first, what it sends again each second, or None)
    kinds = {"partial head, 1 byte/s": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nX-Slow: ", b"a"),
             "connected, nothing sent": (b"", None),
             "whole head, body 1 byte/s": (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
                                           b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n", b" ")}
    socks = {name: socket.create_connection(("127.0.0.1", router.port), timeout=2) for name in kinds}
    closed: dict[str, float | None] = dict.fromkeys(kinds)
    try:
        with Steady(router.base) as steady:
            started = time.monotonic()
            for name, (first, _) in kinds.items():
                if first:
                    socks[name].sendall(first)
            for i in range(int(cap * 10) + 1):
                now = time.monotonic() - started
                if now > cap or None not in closed.values():
                    break
                for name, (_, again) in kinds.items():
                    if closed[name] is not None:
                        continue
                    if again and i % 10 == 0:
                        try:
                            socks[name].sendall(again)
                        except OSError:
                            closed[name] = now
                            continue
                    if closed_by_peer(socks[name]):
                        closed[name] = now
                time.sleep(0.1)
        out = {"scenario": "slow clients"}
        for name, value in closed.items():
            out[name] = f"closed after {value:.1f} s" if value is not None else f"still open after {cap:g} s"
        out["steady client"] = steady.summary()
        return out
    finally:
        for sock in socks.values():
            sock.close()
        router.close()


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return -1


def scenario_heavy_heads(local, cloud, workdir: Path, count: int, extra: list[str]) -> dict:
    """`count` connections, each with a head of 120 headers of 8,000 bytes that never ends: the router's memory."""
    router = Router(local, cloud, workdir, extra)
    head = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\n"
            + b"".join(b"X-%d: %s\r\n" % (i, b"v" * 8000) for i in range(120)))
    socks: list[socket.socket] = []
    try:
        before = rss_kib(router.process.pid)
        started = time.monotonic()
        for _ in range(count):
            if time.monotonic() - started > 30:
                break
            sock = socket.create_connection(("127.0.0.1", router.port), timeout=5)
            socks.append(sock)
            try:
                sock.sendall(head)
            except OSError:
                break
        time.sleep(1.0)
        after = rss_kib(router.process.pid)
        return {"scenario": f"{len(socks)} unfinished heads of {len(head) >> 10} KiB",
                "router RSS": f"{before >> 10} MiB before, {after >> 10} MiB with them "
                              f"({(after - before) / max(1, len(socks)):.0f} KiB each)",
                "closed by router": sum(closed_by_peer(s) for s in socks)}
    finally:
        for sock in socks:
            sock.close()
        router.close()


def exchange(port: int, data: bytes, timeout: float = 5.0) -> str:
    """Send raw bytes on a fresh connection; the response's status code, or what happened."""
    s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    try:
        try:
            s.sendall(data)
        except OSError:
            pass  # the router may answer and close before taking it all; read what it said
        got = b""
        end = time.monotonic() + timeout
        for _ in range(1000):
            if b"\r\n" in got or time.monotonic() > end:
                break
            try:
                chunk = s.recv(65536)
            except OSError as exc:
                return f"{type(exc).__name__}" if not got else got.split(b" ")[1].decode()
            if not chunk:
                break
            got += chunk
        return got.split(b" ")[1].decode() if got.startswith(b"HTTP/") else f"no answer ({got[:30]!r})"
    finally:
        s.close()


BIG_HEADER = b"GET /health HTTP/1.1\r\nHost: router\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
MANY_HEADERS = (b"GET /health HTTP/1.1\r\nHost: router\r\n"
                + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n")


def scenario_malformed(local, cloud, workdir: Path, flood: int, extra: list[str]) -> dict:
    router = Router(local, cloud, workdir, extra)
    try:
        out: dict = {"scenario": "bodies and heads"}
        body = (b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1'
                + b"0" * 5000 + b"}")
        before = router.lines()
        status, text = post(router.base, "/v1/chat/completions", body)
        time.sleep(0.3)
        try:
            param = json.loads(text)["error"].get("param")
        except (ValueError, KeyError, TypeError, AttributeError):
            param = "-"
        out["5000-digit max_tokens"] = f"{status}, param {param}, {router.lines() - before} log lines"
        for name, data in (("1 MB header line", BIG_HEADER), ("1,000 headers", MANY_HEADERS)):
            before = router.lines()
            status = exchange(router.port, data)
            time.sleep(0.3)
            added = router.log().splitlines()[before:]
            out[name] = (f"{status}, {len(added)} log lines"
                         + (", with a traceback" if any("Traceback" in line for line in added) else ""))
        before = router.lines()
        started = time.monotonic()
        statuses: dict[str, int] = {}
        for i in range(flood):
            status = exchange(router.port, BIG_HEADER if i % 2 else MANY_HEADERS)
            statuses[status] = statuses.get(status, 0) + 1
            if time.monotonic() - started > 60:
                break
        took = time.monotonic() - started
        time.sleep(max(0.5, 12 - took))  # a rate limit's summary line comes at the end of its window
        added = router.log().splitlines()[before:]
        out[f"flood of {flood}"] = (f"{sum(statuses.values())} sent in {took:.1f} s "
                                    f"({', '.join(f'{k}: {v}' for k, v in sorted(statuses.items()))}), "
                                    f"{len(added)} log lines, "
                                    f"{sum('Traceback' in line for line in added)} tracebacks")
        return out
    finally:
        router.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--idle", default="2000,10000", help="idle connection counts, comma-separated")
    parser.add_argument("--cap", type=float, default=25.0, help="how long to watch a slow connection, s")
    parser.add_argument("--flood", type=int, default=500)
    parser.add_argument("--heads", type=int, default=200, help="unfinished 1 MB request heads held open at once")
    parser.add_argument("--router-arg", action="append", default=[], help="one more router option (repeatable)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    own = raise_own_nofile()
    rows = []
    local = StandinBackend("local", record=False).start()
    cloud = StandinBackend("cloud", record=False).start()
    try:
        with tempfile.TemporaryDirectory(prefix="router-abuse-") as tmp:
            workdir = Path(tmp)
            for count in (int(c) for c in args.idle.split(",") if c):
                if count + 100 > own:
                    rows.append({"scenario": f"idle {count}", "skipped": f"this process's NOFILE limit is {own}"})
                    continue
                rows.append(scenario_idle(local, cloud, workdir, count, args.router_arg))
            rows.append(scenario_slow(local, cloud, workdir, args.cap, args.router_arg))
            rows.append(scenario_heavy_heads(local, cloud, workdir, args.heads, args.router_arg))
            rows.append(scenario_malformed(local, cloud, workdir, args.flood, args.router_arg))
    finally:
        local.close()
        cloud.close()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    code = f"PYTHONPATH={os.environ['PYTHONPATH']}" if os.environ.get("PYTHONPATH") else "this tree"
    print(f"agentkit-router under a hostile client (router code: {code}; soft NOFILE at start {UNIT_SOFT_NOFILE})")
    for row in rows:
        print(f"\n{row['scenario']}")
        for key, value in row.items():
            if key != "scenario":
                print(f"  {key:28} {value}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
