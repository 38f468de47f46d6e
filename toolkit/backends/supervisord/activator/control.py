"""The activator's control socket (activator.json's "control"): a unix socket in the state
directory, its owner's only, so only the user who ran `agentkit up` (or root) reaches it.

One JSON request per connection, on one line; the answer is JSON lines:

    {"op": "wake", "agents": ["A", "B"], "wait": true}
        start them as a first connection would (their dependencies with them); idle stop
        applies after. Answer: {"results": {"A": null, "B": "why it did not start"}}, once
        each is ready (wait) or at once.
    {"op": "state"}
        {"agents": {"A": Agent.snapshot()}}: what the status service shows.
    {"op": "events"}
        a line {"agent": "A"} each time A starts, is ready, fails or is stopped, until the
        client closes (a client that does not read is let go).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os

from . import PROG
from .agent import StartFailed

EVENT_QUEUE = 1024      # changes a slow events client may fall behind by
HEARTBEAT = 15.0        # s between empty lines on a quiet events stream
REQUEST_LIMIT = 64 * 1024

log = logging.getLogger(PROG)


class Control:
    def __init__(self, activator):
        self.activator = activator
        self.path = activator.config.control
        self.server = None

    async def start(self):
        try:
            os.unlink(self.path)  # a socket file left by an activator that was killed
        except FileNotFoundError:
            pass
        old = os.umask(0o177)  # created 0600: nobody else can even connect
        try:
            self.server = await asyncio.start_unix_server(self.client, self.path, limit=REQUEST_LIMIT)
        finally:
            os.umask(old)

    def close(self):
        if self.server is not None:
            self.server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    async def client(self, reader, writer):
        try:
            line = await asyncio.wait_for(reader.readline(), 10)
            try:
                request = json.loads(line)
                op = request["op"]
            except (ValueError, KeyError, TypeError):
                await self._send(writer, {"error": "expected one JSON object with an \"op\" on a line"})
                return
            if op == "wake":
                await self._send(writer, {"results": await self.wake(request.get("agents") or [],
                                                                    bool(request.get("wait")))})
            elif op == "state":
                await self._send(writer, {"agents": {n: a.snapshot() for n, a in self.activator.agents.items()}})
            elif op == "events":
                await self.events(writer)
            else:
                await self._send(writer, {"error": f"unknown op {op!r} (wake, state, events)"})
        except (ConnectionError, asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def wake(self, names, wait):
        activator = self.activator
        results, waits = {}, {}
        for name in names:
            agent = activator.agents.get(name) if isinstance(name, str) else None
            if agent is None:
                results[str(name)] = "not an optional agent of this host (the activator holds none such)"
                continue
            results[name] = None
            task = activator.spawn(activator.ensure(agent))
            waits[name] = task
            log.info(f"{name}: woken ahead of its first request (agentkit wake)")
        if wait and waits:
            done = await asyncio.gather(*waits.values(), return_exceptions=True)
            for name, outcome in zip(waits, done):
                if isinstance(outcome, BaseException):
                    results[name] = str(outcome) if isinstance(outcome, StartFailed) else repr(outcome)
        return results

    async def events(self, writer):
        queue = asyncio.Queue(EVENT_QUEUE)
        watchers = self.activator.watchers
        watchers.add(queue)
        try:
            while queue in watchers:
                try:
                    name = await asyncio.wait_for(queue.get(), HEARTBEAT)
                except asyncio.TimeoutError:
                    writer.write(b"\n")
                else:
                    writer.write(json.dumps({"agent": name}).encode() + b"\n")
                await asyncio.wait_for(writer.drain(), HEARTBEAT)
        finally:
            watchers.discard(queue)

    @staticmethod
    async def _send(writer, answer):
        writer.write(json.dumps(answer).encode() + b"\n")
        await asyncio.wait_for(writer.drain(), 10)
