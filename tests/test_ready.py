"""The readiness probes never take a connection to themselves for a listening program.

A connect() to a loopback port in the ephemeral range that nobody listens on succeeds now
and then, from that same port (TCP's simultaneous open). A probe that retries every few
milliseconds while a program loads meets it within minutes and would call the program ready
(seen: the readiness benchmark's chain timed out in CI, its agents' private ports being
37411-37413).
"""

import asyncio
import socket
import time
from types import SimpleNamespace

import pytest

from agentkit import ready
from agentkit.backends.supervisord.activator.core import Activator

ATTEMPTS = 150_000  # seen: a self-connection within 6,000 to 66,000 tries on Linux's default range
SECONDS = 30.0


def unused_ephemeral_port():
    """An even port of the ephemeral range that nothing uses: Linux gives connect() even
    source ports (and bind(0) odd ones), so only an even port can be reached from itself."""
    for _ in range(100):
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))  # the kernel picks from the ephemeral range
            port = probe.getsockname()[1] | 1
        port -= 1
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    pytest.fail("no unused even port in the ephemeral range")


def attempts_until_a_socket_reaches_itself(port):
    """How many plain connect()s it took until one reached itself; skips when none did."""
    deadline = time.monotonic() + SECONDS
    for attempt in range(1, ATTEMPTS + 1):
        sock = socket.socket()
        try:
            sock.connect(("127.0.0.1", port))
        except OSError:
            if time.monotonic() > deadline:
                break
            continue
        finally:
            sock.close()
        return attempt
    pytest.skip(f"no connection to 127.0.0.1:{port} reached itself in {attempt} tries on this kernel")


def test_the_port_probe_does_not_take_its_own_connection_for_a_listener():
    port = unused_ephemeral_port()
    attempts_until_a_socket_reaches_itself(port)  # this kernel does it
    deadline = time.monotonic() + SECONDS
    for _ in range(ATTEMPTS):
        ok, said = ready.port_ready("127.0.0.1", port)
        assert not ok, said
        if time.monotonic() > deadline:
            break


def test_the_activator_probe_does_not_take_its_own_connection_for_a_listener():
    port = unused_ephemeral_port()
    attempts_until_a_socket_reaches_itself(port)
    agent = SimpleNamespace(spec=SimpleNamespace(ready=["port"], target=("127.0.0.1", port)))

    async def probe_many():
        deadline = time.monotonic() + SECONDS
        for _ in range(ATTEMPTS):
            assert not await Activator.probe(None, agent)
            if time.monotonic() > deadline:
                break

    asyncio.run(probe_many())
