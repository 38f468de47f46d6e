"""agentkit-router against a hostile client, as a real process on loopback (guard.py).

Ten thousand idle connections, slow and idle ones that the header timeout closes, a
5,000-digit number, malformed request heads and a flood of them. In every case a steady
client sends a chat completion every 50 ms, each on a new connection, the whole time, and
must lose none. The router starts with the soft RLIMIT_NOFILE that systemd gives a unit by
default (1024), so it has to raise the limit itself. Every socket, thread and process is
closed on failure too, and every loop is bounded in time and count.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import logging
import os
import re
import resource
import socket
import time

import pytest

from agentkit.router import guard

from helpers import wait_for
from .steady import CHAT, Steady, closed_by_peer, post
from .test_router import RouterProcess, backends  # noqa: F401  (backends: the stand-ins fixture)

UNIT_SOFT_NOFILE = 1024  # systemd's default soft limit for a unit without LimitNOFILE=
IDLE = 10_000
BIG_HEADER = b"GET /health HTTP/1.1\r\nHost: router\r\nX-Big: " + b"a" * (1 << 20) + b"\r\n\r\n"
MANY_HEADERS = (b"GET /health HTTP/1.1\r\nHost: router\r\n"
                + b"".join(b"X-H%d: v\r\n" % i for i in range(1000)) + b"\r\n")
BAD_REQUEST_LINE = b"GET / HTTQ/1.1\r\nHost: router\r\n\r\n"
PARTIAL_HEAD = b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nX-Slow: "


# --- helpers ------------------------------------------------------------------------------------

@contextlib.contextmanager
def soft_nofile(limit: int):
    """This process's soft RLIMIT_NOFILE at `limit` for the block (what a child started in it inherits)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def exchange(port: int, data: bytes, timeout: float = 10.0) -> int | str:
    """Raw bytes on a new connection: the status code answered, or what happened instead."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except OSError:
            pass  # the router answers and closes before taking 1 MB: read what it said
        got = b""
        for _ in range(100):
            if b"\r\n" in got:
                break
            try:
                chunk = s.recv(65536)
            except OSError as exc:
                if got:
                    break
                return type(exc).__name__
            if not chunk:
                break
            got += chunk
    match = re.match(rb"HTTP/1\.[01] (\d{3}) ", got)
    return int(match.group(1)) if match else f"no status line: {got[:40]!r}"


def router_fds(router: RouterProcess) -> int:
    return len(os.listdir(f"/proc/{router.process.pid}/fd"))


def log_lines(router: RouterProcess) -> list[str]:
    return router.log.read_text(errors="replace").splitlines()


@pytest.fixture
def start(tmp_path, backends):  # noqa: F811
    """Start agentkit-router against the stand-ins, without NVML, with the unit's default soft NOFILE."""
    local, cloud = backends
    routers = []

    def start(*extra: str) -> RouterProcess:
        args = ["--local-url", local.url, "--local-model", "local-8b", "--cloud-url", cloud.url,
                "--cloud-model", "cloud-large", *extra]
        with soft_nofile(UNIT_SOFT_NOFILE):
            router = RouterProcess(args, {"LD_LIBRARY_PATH": str(tmp_path / "no-nvml")}, tmp_path)
        routers.append(router)
        return router

    yield start
    for router in routers:
        router.close()


@pytest.fixture
def many_files():
    """This process's soft NOFILE raised to its hard limit for the test (skipped when that is too low)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < IDLE + 1000:
        pytest.skip(f"{IDLE} connections need {IDLE + 1000} open files; this process's hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --- the cases -----------------------------------------------------------------------------------

def test_ten_thousand_idle_connections_leave_room_for_new_clients(start, many_files):
    router = start("--header-timeout", "2min")  # they stay open while we look
    log = router.log.read_text()
    assert f"the soft limit was {UNIT_SOFT_NOFILE})" in log, log
    socks: list[socket.socket] = []
    try:
        with Steady(router.base) as steady:
            deadline = time.monotonic() + 90
            for _ in range(IDLE):
                if time.monotonic() > deadline:
                    break
                sock = socket.socket()
                socks.append(sock)
                sock.settimeout(5)
                sock.connect(("127.0.0.1", router.port))
            assert len(socks) == IDLE, f"opened {len(socks)} connections in 90 s"
            # The router holds every one of them (a descriptor each), so its limit went up.
            wait_for(lambda: router_fds(router) >= IDLE, f"the router to hold {IDLE} connections", timeout=30)
            client = router.client()
            for _ in range(3):
                reply = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "new"}])
                assert reply.choices[0].message.content
            assert post(router.base, "/v1/chat/completions", CHAT)[0] == 200
            assert not any(closed_by_peer(s) for s in socks[:100] + socks[-100:])
        steady.check()
    finally:
        for sock in socks:
            sock.close()


def test_slow_and_idle_connections_are_closed_after_the_header_timeout(start):
    router = start("--header-timeout", "1s")
    slow: list[socket.socket] = []
    idle: list[socket.socket] = []
    kept = polite = None
    try:
        with Steady(router.base) as steady:
            opened = time.monotonic()
            for _ in range(20):
                s = socket.create_connection(("127.0.0.1", router.port), timeout=5)
                s.sendall(PARTIAL_HEAD)
                slow.append(s)
                idle.append(socket.create_connection(("127.0.0.1", router.port), timeout=5))
            # A keep-alive connection that made one request and then waits.
            kept = http.client.HTTPConnection("127.0.0.1", router.port, timeout=5)
            kept.request("POST", "/v1/chat/completions", body=CHAT, headers={"Content-Type": "application/json"})
            answer = kept.getresponse()
            assert answer.status == 200 and answer.read()
            answered = time.monotonic()
            # A client that is slow but within the timeout: its head in three pieces over 0.6 s.
            polite = socket.create_connection(("127.0.0.1", router.port), timeout=5)
            slow_ones = {id(s): None for s in slow}
            idle_ones = {id(s): None for s in idle}
            kept_closed = None
            pieces = [b"POST /v1/chat/completions HTTP/1.1\r\n", b"Host: router\r\nContent-Type: application/json\r\n",
                      b"Content-Length: %d\r\n\r\n" % len(CHAT) + CHAT]
            for step in range(120):  # 6 s at most
                now = time.monotonic()
                if step % 6 == 0 and pieces:
                    polite.sendall(pieces.pop(0))
                for s in slow:
                    if slow_ones[id(s)] is None:
                        if step % 4 == 0:
                            try:
                                s.sendall(b"a")  # one more byte of a header that never ends
                            except OSError:
                                slow_ones[id(s)] = now - opened
                                continue
                        if closed_by_peer(s):
                            slow_ones[id(s)] = now - opened
                for s in idle:
                    if idle_ones[id(s)] is None and closed_by_peer(s):
                        idle_ones[id(s)] = now - opened
                if kept_closed is None and closed_by_peer(kept.sock):
                    kept_closed = now - answered
                if kept_closed is not None and None not in slow_ones.values() and None not in idle_ones.values():
                    break
                time.sleep(0.05)
            polite.settimeout(5)
            assert polite.recv(12) == b"HTTP/1.1 200"
        for name, times in (("a slow head", list(slow_ones.values())), ("an idle connection", list(idle_ones.values())),
                            ("an idle keep-alive connection", [kept_closed])):
            assert None not in times, f"{name} was still open after 6 s: {times}"
            assert all(0.8 <= t <= 3.0 for t in times), f"{name} was closed after {times} s, not about 1 s"
        steady.check()
    finally:
        for s in slow + idle:
            s.close()
        if kept is not None:
            kept.close()
        if polite is not None:
            polite.close()


def test_a_body_sent_a_byte_at_a_time_gets_a_408_after_the_header_timeout(start):
    router = start("--header-timeout", "1s")
    s = socket.create_connection(("127.0.0.1", router.port), timeout=5)
    try:
        with Steady(router.base) as steady:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
                      b"Content-Length: %d\r\n\r\n" % len(CHAT))
            sent = time.monotonic()
            answer = b""
            s.setblocking(False)
            for i in range(len(CHAT)):  # a byte every 0.1 s, until the router answers (at most len(CHAT) of them)
                try:
                    s.send(CHAT[i:i + 1])
                    answer += s.recv(4096)
                except (BlockingIOError, InterruptedError):
                    pass
                if answer:
                    break
                time.sleep(0.1)
            waited = time.monotonic() - sent
            assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
            assert 0.8 <= waited <= 3.0, waited
        steady.check()
    finally:
        s.close()


def test_a_5000_digit_max_tokens_is_a_400_naming_the_field(start):
    router = start()
    huge = b"1" + b"0" * 5000
    with Steady(router.base) as steady:
        for field, body in (
                ("max_tokens", b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], "max_tokens": '
                 + huge + b"}"),
                ("metadata.trace", b'{"model": "auto", "messages": [{"role": "user", "content": "hi"}], '
                 b'"metadata": {"trace": -' + huge + b"}}")):
            status, text = post(router.base, "/v1/chat/completions", body)
            assert status == 400, text
            error = json.loads(text)["error"]
            assert (error["type"], error["param"]) == ("invalid_request_error", field)
            assert error["message"].startswith(f"{field} is a number of 5001 digits"), error
    steady.check()
    assert "Traceback" not in router.log.read_text()


def test_a_body_that_cannot_be_read_is_a_400_or_one_line(start):
    router = start()
    with Steady(router.base) as steady:
        before = len(log_lines(router))
        gzip = (b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Type: application/json\r\n"
                b"Content-Encoding: gzip\r\nContent-Length: 10\r\n\r\n0123456789")
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
            s.sendall(gzip)
            answer = s.recv(65536)
        assert answer.startswith(b"HTTP/1.1 400 "), answer
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["message"] == "the request body cannot be read: Can not decode content-encoding: gzip", error
        # A client that goes away in the middle of its body.
        with socket.create_connection(("127.0.0.1", router.port), timeout=10) as s:
            s.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nHost: router\r\nContent-Length: 100\r\n\r\n{")
            time.sleep(0.2)
        wait_for(lambda: any("dropped from 127.0.0.1" in x for x in log_lines(router)[before:]), "the line about it")
        time.sleep(0.3)
    steady.check()
    added = log_lines(router)[before:]
    assert len(added) <= 2 and "Traceback" not in router.log.read_text(), added


@pytest.mark.parametrize("name, data, says", [
    ("a 1 MB header line", BIG_HEADER, "Got more than 8190 bytes when reading"),
    ("1,000 headers", MANY_HEADERS, "Too many headers received"),
    ("a bad request line", BAD_REQUEST_LINE, "Bad status line"),
])
def test_a_malformed_request_head_gets_a_4xx_and_one_log_line(start, name, data, says):
    router = start()
    with Steady(router.base) as steady:
        before = len(log_lines(router))
        assert exchange(router.port, data) in (400, 431)
        line = wait_for(lambda: [x for x in log_lines(router)[before:] if "aiohttp.server" in x], f"the line about {name}")
        time.sleep(0.3)  # nothing more comes
        added = log_lines(router)[before:]
    steady.check()
    assert len(added) == 1, added
    assert re.search(r"aiohttp\.server: warning: 4\d\d from 127\.0\.0\.1: ", line[0]) and says in line[0], line
    assert "Traceback" not in router.log.read_text()


def test_a_flood_of_malformed_requests_logs_at_most_the_rate_limit(start):
    router = start()
    flood = 500
    with Steady(router.base) as steady:
        before = len(log_lines(router))
        started = time.monotonic()
        answers = [exchange(router.port, BIG_HEADER if i % 2 else MANY_HEADERS) for i in range(flood)]
        took = time.monotonic() - started
        assert set(answers) <= {400, 431}, {a for a in answers if a not in (400, 431)}

        def accounted():
            """(lines about a request, summary lines, the requests the summaries say they left out)."""
            added = [x for x in log_lines(router)[before:] if "aiohttp.server" in x]
            summary = [x for x in added if "not logged" in x]
            left_out = sum(int(re.search(r"(\d+) more malformed", x).group(1)) for x in summary)
            return [x for x in added if " from 127.0.0.1: " in x], summary, left_out

        # Each window's summary line comes at its end.
        wait_for(lambda: len(accounted()[0]) + accounted()[2] == flood, "the rate limit's summary line",
                 timeout=guard.LOG_WINDOW + 5)
    steady.check()
    rejected, summary, left_out = accounted()
    if took < guard.LOG_WINDOW:  # one window: the limit's lines and one summary
        assert (len(rejected), len(summary)) == (guard.LOG_LIMIT, 1), rejected + summary
    assert len(rejected) + len(summary) <= (int(took // guard.LOG_WINDOW) + 1) * (guard.LOG_LIMIT + 1)
    assert "Traceback" not in router.log.read_text()


# --- the mechanisms on their own ----------------------------------------------------------------

def test_raise_nofile_limit_goes_to_the_hard_limit():
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard <= 64:
        pytest.skip(f"the hard limit is {hard}")
    with soft_nofile(64):
        before, after = guard.raise_nofile_limit()
        assert before == 64 and after == resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        assert after == (hard if hard != resource.RLIM_INFINITY else guard.NOFILE_CAP)
        assert guard.raise_nofile_limit() == (after, after)


def test_the_log_filter_makes_one_line_and_limits_them():
    from aiohttp.http_exceptions import LineTooLong

    now = [100.0]
    logger = logging.getLogger("test_abuse.aiohttp.server")
    logger.propagate = False
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        filt = guard.ClientErrorLog(logger, limit=3, window=10.0, clock=lambda: now[0])
        logger.addFilter(filt)
        try:
            raise LineTooLong(b"aaaa\n\x1b[31m", 8190)
        except LineTooLong as exc:
            error = exc
        for _ in range(5):
            logger.exception("Error handling request from %s", "192.0.2.7", exc_info=error)
        assert [r.getMessage() for r in records] == [
            "400 from 192.0.2.7: Got more than 8190 bytes when reading: b'aaaa\\n\\x1b[31m'."] * 3
        assert {(r.levelno, r.exc_info) for r in records} == {(logging.WARNING, None)}
        logger.error("something of the router's own", exc_info=RuntimeError("bug"))  # unchanged
        assert records[-1].exc_info is not None and records[-1].levelno == logging.ERROR
        now[0] += 10.0  # the next window: first the summary (no event loop here), then the line
        logger.exception("Error handling request from %s", "192.0.2.7", exc_info=ConnectionResetError("Connection lost"))
        assert [r.getMessage() for r in records[-2:]] == [
            "2 more malformed or broken requests not logged (at most 3 lines per 10 s)",
            "dropped from 192.0.2.7: the client closed the connection before its request was complete "
            "(Connection lost)"]
    finally:
        logger.removeHandler(handler)
        for f in list(logger.filters):
            logger.removeFilter(f)
