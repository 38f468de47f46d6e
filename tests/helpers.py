"""Helpers every kind of test shares."""

from __future__ import annotations

import time
from typing import Callable, TypeVar

import pytest

T = TypeVar("T")


def wait_for(condition: Callable[[], T], what: str, timeout: float = 10.0, interval: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy and return that; fail the test
    naming `what` after `timeout` seconds. Bounded in time and in count."""
    deadline = time.monotonic() + timeout
    for _ in range(int(timeout / interval) + 2):
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            break
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:g} s waiting for {what}")


def http_get(port: int, path: str = "/", timeout: float = 30.0) -> tuple[int, bytes]:
    """One HTTP GET to 127.0.0.1:port on a fresh connection, as curl does: (status, body)."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        answer = conn.getresponse()
        return answer.status, answer.read()
    finally:
        conn.close()


def clients_during_start(port: int, count: int = 20, spread: float = 1.0) -> tuple[list, float]:
    """`count` clients, each one GET on its own connection, arriving over `spread` seconds
    (while an agent starts): each answer (status, body) or what went wrong, and the seconds
    until the last was answered."""
    import threading

    answers: list = [None] * count

    def client(i: int) -> None:
        time.sleep(i * spread / count)
        try:
            answers[i] = http_get(port, timeout=30)
        except Exception as exc:  # recorded for the caller's assertion
            answers[i] = repr(exc)

    began = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    if any(t.is_alive() for t in threads):
        pytest.fail("a client got no answer within 60 s")
    return answers, time.monotonic() - began
