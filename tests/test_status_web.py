"""The status service's HTTP side (statusd/web.py) on a real aiohttp server with real clients: a
client of /events that stops reading is let go and never holds up the others, /health keeps
answering meanwhile, and nothing but GET is served. The board is fed directly (the sources
are tested against systemd and supervisord themselves, tests/e2e and tests/backends)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest
from aiohttp import web
from helpers import EventStream, http_get, wait_for

from agentkit.statusd import board as board_mod
from agentkit.statusd.board import Board, Observation
from agentkit.statusd.web import make_app

EVENTS = 3000


@pytest.fixture
def served():
    """(board, port, loop): the app on 127.0.0.1, its loop on a thread of its own; stopped after."""
    board = Board("lab")
    for name in ("A", "B"):
        board.track(name, name == "A", f"agentkit-{name}.service")
        board.rows[name].seen = Observation("active" if name == "A" else "dormant", "x")
    board.source_up = True
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder = {}

    async def start():
        runner = web.AppRunner(make_app(board, lambda: None), access_log=None)
        await runner.setup()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        await web.TCPSite(runner, "127.0.0.1", port).start()
        holder.update(runner=runner, port=port)
        started.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert started.wait(10)
    try:
        yield board, holder["port"], loop
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def test_a_stalled_events_client_is_let_go_and_the_others_get_every_event(served):
    board, port, loop = served
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stalled.connect(("127.0.0.1", port))
    stalled.sendall(b"GET /events HTTP/1.1\r\nHost: x\r\n\r\n")  # and never reads again
    try:
        with EventStream(port) as reader:
            wait_for(lambda: len(board.subscribers) == 2, "both clients subscribed")

            def publish(first, count):
                for i in range(first, first + count):
                    board.publish({"agent": "B", "kind": "wake", "time": time.time(), "state": "starting",
                                   "detail": "x" * 1000, "n": i})
            # 2,000 events a second (a fleet-wide restart is a few hundred), 3 MB in all: more
            # than the stalled client's socket buffers hold, so its writes back up.
            for first in range(0, EVENTS, 20):
                loop.call_soon_threadsafe(publish, first, 20)
                time.sleep(0.01)
                if first % 500 == 0:
                    assert http_get(port, "/health", timeout=5)[0] == 200  # answers all along
            wait_for(lambda: len(reader.events) == EVENTS or board.dropped_clients > 1,
                     f"the reading client to get all {EVENTS} events", timeout=60)
            assert board.dropped_clients <= 1, f"the reading client was let go too, after {len(reader.events)}"
            assert [e["n"] for e in reader.events] == list(range(EVENTS))
            wait_for(lambda: board.dropped_clients == 1, "the stalled client to be let go", timeout=30)
            assert len(board.subscribers) == 1
    finally:
        stalled.close()
    assert board_mod.SUBSCRIBER_QUEUE < EVENTS  # what made the stalled client fall behind


def test_only_get_is_served_and_a_reconnecting_client_gets_what_it_missed(served):
    board, port, loop = served
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(b"POST /health HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n")
        assert sock.recv(100).startswith(b"HTTP/1.1 405")
    for i in range(3):
        loop.call_soon_threadsafe(board.publish, {"agent": "B", "kind": "ready", "time": time.time(),
                                                  "state": "active", "detail": "", "n": i})
    wait_for(lambda: len(board.events) == 3, "three events kept")
    first = board.events[0]["id"]
    with EventStream(port, f"/events?after={first}") as reader:  # as the page's first connection asks
        wait_for(lambda: len(reader.events) == 2, "the two events after the first")
        assert [e["n"] for e in reader.events] == [1, 2]
