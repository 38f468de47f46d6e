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


class EventStream:
    """A client of a status service's /events (Server-Sent Events), read on a thread of its
    own: `events` fills as they arrive, each with `received` (time.time()) added. A context
    manager; the connection is closed on exit, which ends the thread."""

    def __init__(self, port: int, path: str = "/events", timeout: float = 60.0):
        import http.client
        import threading

        self.events: list[dict] = []
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
        self.conn.request("GET", path)
        self.response = self.conn.getresponse()
        assert self.response.status == 200, self.response.status
        assert self.response.getheader("Content-Type", "").startswith("text/event-stream")
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        import json

        data = []
        try:
            for raw in self.response:
                line = raw.decode().rstrip("\r\n")
                if line.startswith("data:"):
                    data.append(line[5:].strip())
                elif not line and data:
                    event = json.loads("\n".join(data))
                    event["received"] = time.time()
                    self.events.append(event)
                    data = []
        except (OSError, ValueError, AttributeError):
            pass  # closed: the test is over (http.client ends a read it was closed under so)

    def kinds(self, agent: str) -> list[str]:
        return [e["kind"] for e in self.events if e["agent"] == agent]

    def wait(self, agent: str, kind: str, timeout: float = 30.0) -> dict:
        return wait_for(lambda: next((e for e in self.events if e["agent"] == agent and e["kind"] == kind), None),
                        f"a {kind} event of {agent} on /events", timeout=timeout)

    def close(self):
        import socket

        try:
            self.conn.sock.shutdown(socket.SHUT_RDWR)
        except (OSError, AttributeError):
            pass
        self.conn.close()
        self.thread.join(timeout=5)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def metric(text: str, name: str, **labels) -> float | None:
    """The value of one sample of a Prometheus text page, by name and labels (a subset), or None."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return None


def at_once(call, count: int, timeout: float = 60.0) -> tuple[list, list]:
    """`count` calls of `call()` from as many threads at once: (results, exceptions)."""
    import threading

    results, errors = [], []

    def one():
        try:
            results.append(call())
        except Exception as exc:  # noqa: BLE001 - handed back to the test
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=timeout)
    return results, errors
