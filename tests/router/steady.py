"""A steady client for the router's abuse tests and bench/router_abuse.py: one chat completion every
`interval` on a new connection, on a thread, the whole time a hostile client is at work; it must lose
nothing. Every loop is bounded in time and count."""

from __future__ import annotations

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

CHAT = json.dumps({"model": "auto", "messages": [{"role": "user", "content": "steady"}],
                   "metadata": {"task_type": "simple_chat"}}).encode()


def post(base: str, path: str, data: bytes, timeout: float = 10.0) -> tuple[int | None, str]:
    """(status, body) of one POST on a new connection; (None, what went wrong) when there is no answer."""
    request = urllib.request.Request(base + path, data=data, method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            return resp.status, resp.read().decode(errors="replace")
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode(errors="replace")
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        return None, f"{type(reason).__name__}: {reason}"


class Steady:
    """Use as a context manager: it starts with the block (once it has its first answer) and stops at its
    end (after at least `least` requests)."""

    def __init__(self, base: str, interval: float = 0.05, limit: float = 300.0, least: int = 5):
        self.base, self.interval, self.limit, self.least = base, interval, limit, least
        self.ok = 0
        self.failed: list[str] = []
        self.slowest = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="steady-client", daemon=True)

    def _run(self) -> None:
        end = time.monotonic() + self.limit
        for _ in range(int(self.limit / self.interval) + 1):
            if self._stop.is_set() or time.monotonic() > end:
                return
            started = time.monotonic()
            status, body = post(self.base, "/v1/chat/completions", CHAT)
            self.slowest = max(self.slowest, time.monotonic() - started)
            if status == 200:
                self.ok += 1
            else:
                self.failed.append(f"{status}: {body[:120]!r}")
            self._stop.wait(self.interval)

    def _until(self, done, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        for _ in range(int(seconds / 0.02) + 1):
            if done() or time.monotonic() > deadline or not self._thread.is_alive():
                return
            time.sleep(0.02)

    def __enter__(self) -> "Steady":
        self._thread.start()
        self._until(lambda: self.ok or self.failed, 30)
        return self

    def __exit__(self, *exc) -> None:
        self._until(lambda: self.ok + len(self.failed) >= self.least, 5)
        self._stop.set()
        self._thread.join(30)

    def summary(self) -> str:
        text = f"{self.ok} ok, {len(self.failed)} failed, slowest {self.slowest * 1000:.0f} ms"
        if self.failed:
            text += f" (first: {self.failed[0]})"
        return text

    def check(self) -> None:
        """For a test: the client stopped, lost nothing, and made its requests."""
        assert not self._thread.is_alive(), "the steady client did not stop"
        assert self.failed == [], f"the steady client lost {len(self.failed)} of {self.ok + len(self.failed)}"
        assert self.ok >= self.least


def closed_by_peer(sock: socket.socket) -> bool:
    """True once the router closed or reset the connection (a non-blocking peek)."""
    sock.setblocking(False)
    try:
        return sock.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        sock.setblocking(True)
