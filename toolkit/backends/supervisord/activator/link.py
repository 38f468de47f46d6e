"""Forwarding: a client's connection to an agent's public port, and its target's.

Protocol callbacks move the bytes (no task and no copy per chunk beyond the
socket's own); each side pauses the other's reading when its own writes back up,
and a half-close passes through.
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial

from agentkit import ready

from . import PROG
from .agent import StartFailed

HOLD_LIMIT = 256 * 1024    # bytes of a client's we hold while its target starts, then stop reading
CONNECT_ATTEMPTS = 3       # starts in a row after which a target that refuses is given up

log = logging.getLogger(PROG)


class _Side(asyncio.Protocol):
    """One end of a forwarded connection: what it reads goes to its peer's transport."""

    __slots__ = ("link", "transport", "peer", "eof")

    def __init__(self, link, peer=None):
        self.link = link
        self.transport = None
        self.peer = peer
        self.eof = False

    def connection_made(self, transport):
        self.transport = transport
        if self.peer is None:  # the client's side: find the target
            self.link.client_connected()

    def data_received(self, data):
        link = self.link
        link.agent.touched = True
        peer = self.peer
        if peer is None:
            link.hold(data)
        elif not link.closed:
            peer.transport.write(data)

    def eof_received(self):
        self.eof = True
        peer = self.peer
        if peer is None:  # the client half-closed before its target was connected: passed on then
            return True
        if peer.eof:
            self.link.close()
        elif peer.transport.can_write_eof():
            peer.transport.write_eof()
        else:
            self.link.close()
        return True  # keep our writing half open

    def connection_lost(self, exc):
        self.link.close()

    def pause_writing(self):
        if self.peer is not None:
            self.peer.transport.pause_reading()

    def resume_writing(self):
        if self.peer is not None:
            self.peer.transport.resume_reading()


class Link:
    """A client's connection to an agent's public port, and (once ready) to its target."""

    __slots__ = ("activator", "agent", "client", "upstream", "held", "held_size", "closed", "task")

    def __init__(self, activator, agent):
        self.activator = activator
        self.agent = agent
        self.client = _Side(self)
        self.upstream = None
        self.held = []
        self.held_size = 0
        self.closed = False
        self.task = None
        agent.conns += 1
        agent.accepted += 1
        activator.links.add(self)

    def client_connected(self):
        self.task = asyncio.get_running_loop().create_task(self.connect())

    def hold(self, data):
        self.held.append(data)
        self.held_size += len(data)
        if self.held_size >= HOLD_LIMIT:
            self.client.transport.pause_reading()

    async def connect(self):
        agent, activator = self.agent, self.activator
        loop = asyncio.get_running_loop()
        host, port = agent.spec.target
        try:
            for _ in range(CONNECT_ATTEMPTS):
                if agent.ready:
                    try:
                        transport, upstream = await loop.create_connection(
                            partial(_Side, self, self.client), host, port)
                    except OSError:
                        agent.ready = False  # not listening (crashed, stopped): start it
                    else:
                        if not ready.connected_to_itself(transport.get_extra_info("sockname"),
                                                         transport.get_extra_info("peername")):
                            self.attach(upstream)
                            return
                        transport.abort()
                        agent.ready = False
                agent.waiting += 1
                try:
                    await activator.ensure(agent)
                finally:
                    agent.waiting -= 1
            raise StartFailed(f"{host}:{port} refused {CONNECT_ATTEMPTS} connections in a row, "
                              "each right after the agent was ready")
        except StartFailed:
            self.close()  # the start's own log line says why
        except Exception as exc:  # noqa: BLE001 - a bug here must not leave the client hanging
            log.error(f"{agent.name}: internal error while connecting a client: {type(exc).__name__}: {exc}")
            self.close()

    def attach(self, upstream):
        if self.closed:
            upstream.transport.close()
            return
        self.upstream = upstream
        client = self.client
        client.peer = upstream
        if self.held:
            held, self.held, self.held_size = self.held, [], 0
            client.transport.resume_reading()  # first: the write below may pause it again
            upstream.transport.write(b"".join(held))
        if client.eof:
            if upstream.transport.can_write_eof():
                upstream.transport.write_eof()
            else:
                self.close()

    def close(self):
        if self.closed:
            return
        self.closed = True
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.close()
        task = self.task
        if task is not None and not task.done() and task is not asyncio.current_task():
            task.cancel()  # the client left while its agent was starting; the start goes on
        agent = self.agent
        agent.conns -= 1
        agent.last = time.monotonic()
        self.activator.links.discard(self)

    def abort(self):
        for side in (self.client, self.upstream):
            if side is not None and side.transport is not None:
                side.transport.abort()
        self.close()
