"""Protecting agentkit-router from its clients: file descriptors, idle and slow connections,
and one rate-limited log line per malformed request instead of a traceback.

The server calls three things at start (main.serve):

- raise_nofile_limit(): every client connection is a file descriptor. With the soft limit
  systemd gives a unit by default (1024), a couple of thousand idle connections used them
  all up, and from then on every new client was reset: accept() fails with EMFILE. The soft
  limit goes up to the hard one, as Go's runtime and most servers do at start (the unit
  also sets LimitNOFILE=). The router runs no child processes and waits on epoll, never on
  select(), so a high limit has no downside here.
- server_kwargs(header_timeout): for web.AppRunner, which hands them to every connection's
  aiohttp RequestHandler. See the comment on server_kwargs for why one aiohttp keep-alive timeout is the
  header timeout too, and why no RequestHandler subclass.
- install_log_filter(): aiohttp logs every request it cannot parse (a 1 MB header line,
  1,000 headers, garbage, a gzip body that is not) with a full traceback at error level, and
  so it does for a client that closes its connection in the middle of its request: any
  client could flood the journal. ClientErrorLog turns each into one line and allows at
  most `limit` of them per `window`, then says how many it left out.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import threading
import time
from typing import Any, Callable

from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError
from aiohttp.web_protocol import RequestPayloadError


# A connection that has not delivered a complete request head this long after it opened, or
# after the router's last answer on it, is closed: idle keep-alive connections and slow
# heads (slowloris) alike. A few seconds of keep-alive are plenty for clients on this host
# or the LAN (Node's default is 5 s, uvicorn's 5 s); aiohttp's default is 3,630 s.
#
# One number because aiohttp 3.14's keep-alive timer already is a header deadline (read in
# aiohttp/web_protocol.py): RequestHandler arms it in connection_made() and again after
# each answer, data_received() never re-arms it however many bytes trickle in, and when it
# fires, _process_keepalive() closes the connection if start() is still waiting for a
# complete message (its _waiter) -- never one whose request is being handled. So a client
# gets exactly `keepalive_timeout` from connecting (or from its previous answer) to deliver
# its whole head. A separate, shorter header timer counted from a head's first byte would
# not lower the worst case -- a client can stay idle until just before the keep-alive
# deadline and only then start trickling -- and aiohttp offers no hook to add one: web.Server
# hard-codes RequestHandler, so a subclass would have to be plumbed in through private
# attributes. tests/router/test_abuse.py holds aiohttp to this behaviour.
#
# A request *body* is not bounded in time by this (aiohttp has no body timeout): the router
# reads each body within the same header_timeout itself (server.Router._body: a 408).

# aiohttp's own limits, said here so that they are visible and tested: longer request or
# header lines and more headers get a 400 and the connection is closed.
MAX_LINE_SIZE = 8190  # the request line
MAX_FIELD_SIZE = 8190  # one header line
MAX_HEADERS = 128
# Until the header timeout, an unfinished head holds about 2 x MAX_HEADERS x MAX_FIELD_SIZE
# (2 MB) of the router's memory: 200 of them took 376 MiB (bench/router_abuse.py). aiohttp has
# no limit on a head's total size.

NOFILE_CAP = 1 << 20  # where the hard limit says "unlimited" (macOS); Linux's is always finite

LOG_LIMIT = 20  # lines about malformed requests per window, then one line saying how many more
LOG_WINDOW = 10.0  # seconds


def raise_nofile_limit() -> tuple[int, int]:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit: (the soft limit before, after)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = NOFILE_CAP if hard == resource.RLIM_INFINITY else hard
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft, soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft, soft
    return soft, resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def server_kwargs(header_timeout: float) -> dict[str, Any]:
    """web.AppRunner's keyword arguments for every client connection (aiohttp's RequestHandler)."""
    return {"keepalive_timeout": header_timeout, "max_line_size": MAX_LINE_SIZE,
            "max_field_size": MAX_FIELD_SIZE, "max_headers": MAX_HEADERS}


_SUMMARY = "agentkit_guard_summary"  # marks the filter's own summary records


class ClientErrorLog(logging.Filter):
    """On aiohttp's server logger: a request aiohttp could not parse, or a client that went
    away in the middle of its request, is one warning line without a traceback -- e.g.
    "400 from 127.0.0.1: Too many headers received" -- and at most `limit` such lines per
    `window` seconds; after that window one line says how many were left out. Anything
    else aiohttp logs (a fault of the router's own) passes unchanged, traceback and all."""

    def __init__(self, logger: logging.Logger, limit: int = LOG_LIMIT, window: float = LOG_WINDOW,
                 clock: Callable[[], float] = time.monotonic) -> None:
        super().__init__()
        self.logger = logger
        self.limit = limit
        self.window = window
        self._clock = clock
        self._lock = threading.Lock()
        self._window_end = float("-inf")
        self._count = 0  # lines about client faults in this window
        self._suppressed = 0  # of those, the ones left out
        self._flush_scheduled = False

    def filter(self, record: logging.LogRecord) -> bool:
        if record.__dict__.get(_SUMMARY):
            return True
        exc = record.exc_info[1] if record.exc_info else None
        fault = client_fault(exc)
        if fault is None:
            return True
        what, detail = fault
        client = record.args[0] if isinstance(record.args, tuple) and record.args and record.args[0] else None
        record.msg = "%s from %s: %s"
        record.args = (what, client or "a client", detail)
        record.exc_info = None
        record.exc_text = None
        record.stack_info = None
        if record.levelno > logging.WARNING:  # the client's fault, not the router's
            record.levelno, record.levelname = logging.WARNING, logging.getLevelName(logging.WARNING)
        return self._admit()

    def _admit(self) -> bool:
        now = self._clock()
        with self._lock:
            rolled = now >= self._window_end
            if rolled:
                left_out, self._suppressed = self._suppressed, 0
                self._window_end = now + self.window
                self._count = 0
            self._count += 1
            admit = self._count <= self.limit
            if not admit:
                self._suppressed += 1
                schedule = not self._flush_scheduled
                self._flush_scheduled = True
            delay = self._window_end - now
        if rolled and left_out:
            self._summary(left_out)
        if not admit and schedule:
            self._schedule(delay)
        return admit

    def _schedule(self, delay: float) -> None:
        """The summary line at the end of this window, from the event loop aiohttp logs on;
        without one, it comes before the next line instead."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            with self._lock:
                self._flush_scheduled = False
            return
        loop.call_later(max(0.0, delay), self.flush)

    def flush(self) -> None:
        """Say how many lines were left out so far (nothing when none were)."""
        with self._lock:
            left_out, self._suppressed = self._suppressed, 0
            self._flush_scheduled = False
        if left_out:
            self._summary(left_out)

    def _summary(self, count: int) -> None:
        self.logger.warning("%d more malformed or broken requests not logged (at most %d lines per %g s)",
                            count, self.limit, self.window, extra={_SUMMARY: True})


def client_fault(exc: BaseException | None) -> tuple[str, str] | None:
    """(what the router did, what was wrong) when `exc` is the client's doing, else None."""
    if isinstance(exc, RequestPayloadError):  # a body aiohttp could not decode: the parser's error is its cause
        exc = exc.__cause__ if isinstance(exc.__cause__, HttpProcessingError) else BadHttpMessage(str(exc))
    if isinstance(exc, HttpProcessingError):
        return str(exc.code or 400), _one_line(exc.message or type(exc).__name__)
    if isinstance(exc, ConnectionError):
        # From reading the request (its body): the client closed the connection midway.
        return "dropped", f"the client closed the connection before its request was complete ({_one_line(str(exc))})"
    return None


def _one_line(text: str, limit: int = 200) -> str:
    """aiohttp's message as one printable line: its parts joined, the ^ markers dropped, at most `limit` long."""
    parts = [p.strip() for p in text.splitlines()]
    line = " ".join(p for p in parts if p and set(p) != {"^"})
    line = "".join(c if c.isprintable() else ascii(c)[1:-1] for c in line)
    return line if len(line) <= limit else line[:limit - 1] + "…"


def install_log_filter(logger_name: str = "aiohttp.server", limit: int = LOG_LIMIT,
                       window: float = LOG_WINDOW) -> ClientErrorLog:
    """Put a ClientErrorLog on `logger_name` (once: a second call replaces the first)."""
    logger = logging.getLogger(logger_name)
    for old in [f for f in logger.filters if isinstance(f, ClientErrorLog)]:
        logger.removeFilter(old)
    guard = ClientErrorLog(logger, limit=limit, window=window)
    logger.addFilter(guard)
    return guard
