"""The status service's HTTP side (aiohttp): read-only, answered from the board.

GET /health   every agent as JSON; 200 when every essential agent is active, else 503
GET /metrics  Prometheus text
GET /events   Server-Sent Events: wakes, ready, idle stops, crashes, restarts, start-limit hits
GET /         the page: every agent at a glance, updated live from /events (no external assets)

Anything else is 404 or 405. A client of /events that stops reading is let go
(board.SUBSCRIBER_QUEUE, WRITE_TIMEOUT): it never holds up the others.
"""

from __future__ import annotations

import asyncio
import json
from importlib import resources

from aiohttp import web

from .board import Board
from .metrics import CONTENT_TYPE, Metrics

MAX_EVENT_CLIENTS = 64
WRITE_TIMEOUT = 5.0     # s an /events write may wait for a client that does not read
HEARTBEAT = 15.0        # s between comments on a quiet stream, so proxies and clients see it alive
HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store",
           "Content-Security-Policy": "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'"}


def _page() -> bytes:
    return resources.files(__package__).joinpath("page.html").read_bytes()


class StatusApp:
    def __init__(self, board: Board, sample) -> None:
        self.board = board
        self.sample = sample
        self.metrics = Metrics(board, sample)
        self.page = _page()

    async def health(self, request: web.Request) -> web.Response:
        self.sample()
        body = json.dumps(self.board.health(), indent=1).encode()
        return web.Response(body=body, status=200 if self.board.healthy() else 503,
                            content_type="application/json", headers=HEADERS)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.expose(), headers={"Content-Type": CONTENT_TYPE, **HEADERS})

    async def index(self, request: web.Request) -> web.Response:
        return web.Response(body=self.page, content_type="text/html", charset="utf-8", headers=HEADERS)

    async def events(self, request: web.Request) -> web.StreamResponse:
        board = self.board
        if len(board.subscribers) >= MAX_EVENT_CLIENTS:
            return web.json_response({"error": f"at most {MAX_EVENT_CLIENTS} clients read /events at once"},
                                     status=503, headers=HEADERS)
        # A reconnecting EventSource says where it was (Last-Event-ID); the page's first
        # connection says it in the query, from /health's last_event_id.
        after = request.headers.get("Last-Event-ID") or request.query.get("after", "")
        sub = board.subscribe(int(after) if after.isdigit() else None)
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no",
                                               **HEADERS})
        try:
            await response.prepare(request)
            await self._write(response, b"retry: 2000\n\n")
            while not sub.dropped:
                try:
                    event = await asyncio.wait_for(sub.queue.get(), HEARTBEAT)
                except asyncio.TimeoutError:
                    await self._write(response, b": alive\n\n")
                    continue
                if event is None:
                    break  # the service stops
                await self._write(response, b"id: %d\ndata: %s\n\n" % (event["id"], json.dumps(event).encode()))
        except (ConnectionError, asyncio.TimeoutError):
            pass  # gone, or not reading: let go
        finally:
            board.unsubscribe(sub)
        return response

    @staticmethod
    async def _write(response: web.StreamResponse, data: bytes) -> None:
        await asyncio.wait_for(response.write(data), WRITE_TIMEOUT)


@web.middleware
async def _read_only(request: web.Request, handler):
    if request.method not in ("GET", "HEAD"):
        raise web.HTTPMethodNotAllowed(request.method, ["GET", "HEAD"], headers=HEADERS)
    return await handler(request)


def make_app(board: Board, sample) -> web.Application:
    status = StatusApp(board, sample)
    app = web.Application(middlewares=[_read_only], client_max_size=4096)
    app.router.add_get("/", status.index)
    app.router.add_get("/health", status.health)
    app.router.add_get("/metrics", status.metrics_page)
    app.router.add_get("/events", status.events)

    async def end_streams(_app):
        board.close_subscribers()  # else the runner's cleanup waits for every /events client
    app.on_shutdown.append(end_streams)
    return app
