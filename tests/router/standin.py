"""A stand-in OpenAI-compatible LLM backend for agentkit-router's tests and benchmarks.

It plays a "local" (llama.cpp / vLLM / Ollama style) or "cloud" backend on
loopback, answers like OpenAI's API closely enough for the official `openai`
client, says who answered (header ``X-Standin-Backend: <name>`` and a reply
text starting with ``<name>: ``), and can be made slow, failing, hanging or
down on demand.

Two ways to run it:

* in-process, on its own thread and event loop (tests)::

      with StandinBackend("local").start() as local:
          client = openai.OpenAI(base_url=local.url, api_key="x")
          local.set_mode("error", status=503)
          local.stop()        # down: connection refused, open connections reset
          local.start()       # up again, on the same port

* as a process (benchmarks; wrk drives it), on uvloop when importable::

      python tests/router/standin.py --name local --port 9001 [--host 127.0.0.1] [--delay 0]
                                     [--mode ok] [--slots 4]

  prints ``listening http://127.0.0.1:9001/v1`` once listening and exits 0 on
  SIGTERM / SIGINT. ``--port 0`` picks a free port (read it from that line).

Endpoints: ``POST /v1/chat/completions``, ``POST /v1/completions`` (both with
``stream: true`` as server-sent events ending in ``data: [DONE]``) and
``GET /v1/models`` (the router's health probe); and, at the root as llama.cpp's
server has them, its load signals:

* ``GET /slots``: a list of ``slots`` slot objects (``id``, ``id_task``, ``n_ctx``,
  ``is_processing``, ...), ``is_processing`` true for as many as requests are in
  flight here (``inflight``: completion requests being handled, held, hung or
  delayed ones included), or as ``set_slots(total, busy)`` says;
* ``GET /metrics``: Prometheus text with the gauges ``llamacpp:requests_processing``
  (the busy slots) and ``llamacpp:requests_deferred`` (requests in flight beyond
  the slots), each settable with ``set_metrics(processing=, deferred=)``.

Modes (``set_mode``) apply to every endpoint, /v1/models, /slots and /metrics
included, so a health probe or a load poll sees what traffic sees; ``delay``
only slows the two completion endpoints.

It serves with aiohttp's low-level ``web.Server`` (no Application, router or
middlewares: one dict lookup per request) and logs nothing per request, so the
instant path stays fast enough for wrk at ~10k req/s.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import re
import signal
import socket
import struct
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

MODES = ("ok", "error", "ratelimit", "hang", "drop-midstream")
MAX_CONTENT = 200  # characters of the user's message echoed back
MAX_PIECES = 32  # a streamed reply is cut into 3..MAX_PIECES content chunks
SLOTS = 4  # llama.cpp's slots (parallel sequences) /slots lists unless set_slots() says otherwise
N_CTX = 4096  # each slot's context, as /slots says it

_JSON = "application/json"
_SSE_DONE = b"data: [DONE]\n\n"
_WORDS = re.compile(r"\S+\s*|\s+")  # pieces that concatenate back to the text


@dataclass(frozen=True, slots=True)
class _Mode:
    """One immutable snapshot: set_mode() swaps the whole object, so a request
    never sees half of an update made from another thread."""

    name: str = "ok"
    delay: float = 0.0
    status: int = 500
    retry_after: float | None = None


class _Drop(Exception):
    """Raised inside a handler to end the connection without (the rest of) a response."""


class StandinBackend:
    """A stand-in OpenAI-compatible backend; see the module docstring.

    Thread-safety: every public method may be called from any thread except the
    backend's own loop thread (start/stop/close block on it). ``requests`` is
    appended under a lock; read ``list(backend.requests)`` for a stable copy.
    """

    MAX_WAIT = 60.0  # bound on "hang" and on hold(), in seconds
    START_TIMEOUT = 10.0  # bound on start()/stop()/close() waiting for the loop thread

    def __init__(self, name: str, *, port: int = 0, host: str = "127.0.0.1",
                 record: bool = True) -> None:
        if not name:
            raise ValueError("a backend needs a name")
        self.name = name
        self.host = host
        self.port = port  # 0 until the first start() picks one; kept from then on
        self.record = record  # the process mode turns this off: no unbounded growth under wrk
        self.requests: list[dict[str, Any]] = []
        self.held = 0  # requests waiting in hold() right now (only the loop thread writes it)
        self.inflight = 0  # completion requests being handled right now (only the loop thread writes it)

        self._mode = _Mode()
        self._holding = False
        self._slots: tuple[int, int | None] = (SLOTS, None)  # (total, busy: None = the requests in flight)
        self._load: tuple[int | None, int | None] = (None, None)  # /metrics (processing, deferred); None: derived
        self._requests_lock = threading.Lock()
        self._control_lock = threading.Lock()  # serialises start/stop/close
        self._headers = {"X-Standin-Backend": name}
        self._ids = itertools.count(1)
        self._id_prefix = os.urandom(4).hex()
        self._routes: dict[tuple[str, str], Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]] = {
            ("POST", "/v1/chat/completions"): self._chat,
            ("POST", "/v1/completions"): self._text_completion,
            ("GET", "/v1/models"): self._models,
            ("GET", "/slots"): self._slots_page,
            ("GET", "/metrics"): self._metrics_page,
        }

        # Owned by the loop thread (or the process mode's loop):
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: web.Server | None = None  # aiohttp's protocol factory, one per loop
        self._listener: asyncio.AbstractServer | None = None  # the listening socket
        self._wake: asyncio.Event | None = None  # set (and replaced) on every state change
        self._waiters: set[asyncio.Task[Any]] = set()  # request tasks in hold/hang/delay

    # ------------------------------------------------------------------ control

    @property
    def url(self) -> str:
        """Base URL as the openai client wants it: http://HOST:PORT/v1."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/v1"

    def start(self) -> "StandinBackend":
        """Start the loop thread if needed and listen; returns once listening.

        Idempotent. Raises OSError when the port cannot be bound and
        TimeoutError when the loop thread does not answer in START_TIMEOUT."""
        with self._control_lock:
            if self._thread is None or not self._thread.is_alive():
                self._start_thread()
            assert self._loop is not None
            self._call(self._listen())
        return self

    def stop(self) -> None:
        """Go down: close the listener (new connections are refused) and reset
        every open connection, in-flight requests included. Idempotent."""
        with self._control_lock:
            if self._thread is not None and self._thread.is_alive():
                self._call(self._unlisten())

    def close(self) -> None:
        """stop(), then end the loop thread. Safe to call twice; start() again
        would begin a new thread."""
        with self._control_lock:
            thread, loop = self._thread, self._loop
            if thread is None or loop is None:
                return
            try:
                if thread.is_alive():
                    self._call(self._unlisten())
            finally:
                try:
                    loop.call_soon_threadsafe(loop.stop)
                except RuntimeError:  # the loop is closed already
                    pass
                thread.join(self.START_TIMEOUT)
                self._thread = None
                self._loop = None
                self._server = None

    def __enter__(self) -> "StandinBackend":
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def set_mode(self, mode: str, *, delay: float = 0.0, status: int = 500,
                 retry_after: float | None = None) -> None:
        """Change how requests are answered, from now on (and for requests
        waiting in "hang", which then proceed under the new mode).

        "ok"             answer (after `delay` s when delay > 0: "slow")
        "error"          reply `status` (400..599, normally 5xx) with an OpenAI error body
        "ratelimit"      429, with Retry-After: <retry_after> when it is given
        "hang"           accept, never answer until the mode changes or stop();
                         gives up with a 504 after MAX_WAIT s
        "drop-midstream" stream=true: send the first chunk, then close the
                         connection abruptly; otherwise close without a response
        `delay` is waited before the reply in every mode but "hang".
        """
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; one of {', '.join(MODES)}")
        if delay < 0:
            raise ValueError("delay must be >= 0")
        if not 400 <= status <= 599:
            raise ValueError("status must be an HTTP error status (400..599)")
        if retry_after is not None and retry_after < 0:
            raise ValueError("retry_after must be >= 0")
        self._mode = _Mode(mode, float(delay), int(status), retry_after)
        self._notify()

    def hold(self) -> None:
        """From now on, requests whose last user message (or prompt) contains
        "HOLD" wait until release() (at most MAX_WAIT s); see `held`."""
        self._holding = True
        self._notify()

    def release(self) -> None:
        """Let every held request go on, and stop holding new ones."""
        self._holding = False
        self._notify()

    def set_slots(self, total: int, busy: int | None = None) -> None:
        """/slots lists `total` slots, `busy` of them processing; busy None (the default): as many
        as requests are in flight here, at most `total`."""
        if total < 0:
            raise ValueError("total must be >= 0")
        if busy is not None and not 0 <= busy <= total:
            raise ValueError("busy must be from 0 to total")
        self._slots = (int(total), None if busy is None else int(busy))

    def set_metrics(self, *, processing: int | None = None, deferred: int | None = None) -> None:
        """/metrics says `processing` and `deferred`; None (the default) for either: derived from
        the slots (the busy ones) and the requests in flight beyond them."""
        for name, value in (("processing", processing), ("deferred", deferred)):
            if value is not None and value < 0:
                raise ValueError(f"{name} must be >= 0")
        self._load = (processing, deferred)

    def load(self) -> dict[str, int]:
        """What /slots and /metrics say now: {slots, busy, processing, deferred}."""
        total, busy = self._slots
        inflight = self.inflight
        if busy is None:
            busy = min(inflight, total)
        processing, deferred = self._load
        return {"slots": total, "busy": busy,
                "processing": busy if processing is None else processing,
                "deferred": max(0, inflight - total) if deferred is None else deferred}

    def clear_requests(self) -> None:
        with self._requests_lock:
            self.requests.clear()

    # ------------------------------------------------------ loop thread plumbing

    def _start_thread(self) -> None:
        loop = asyncio.new_event_loop()
        ready = threading.Event()
        thread = threading.Thread(target=self._run_loop, args=(loop, ready),
                                  name=f"standin-{self.name}", daemon=True)
        thread.start()
        if not ready.wait(self.START_TIMEOUT):
            loop.call_soon_threadsafe(loop.stop)
            raise TimeoutError(f"standin {self.name}: the loop thread did not start")
        self._loop, self._thread = loop, thread

    @staticmethod
    def _run_loop(loop: asyncio.AbstractEventLoop, ready: threading.Event) -> None:
        asyncio.set_event_loop(loop)
        loop.call_soon(ready.set)
        try:
            loop.run_forever()
        finally:
            # Finish what is left (idle keep-alive connections' tasks) quietly.
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for task in pending:
                task.cancel()
            if pending:
                loop.run_until_complete(asyncio.wait(pending, timeout=2))
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    def _call(self, coro: Awaitable[Any]) -> Any:
        """Run a coroutine on the backend's loop from another thread, bounded."""
        assert self._loop is not None
        future = asyncio.run_coroutine_threadsafe(coro, self._loop)  # type: ignore[arg-type]
        try:
            return future.result(self.START_TIMEOUT)
        except TimeoutError:
            future.cancel()
            raise TimeoutError(f"standin {self.name}: its loop did not answer in "
                               f"{self.START_TIMEOUT} s") from None

    def _notify(self) -> None:
        """Wake the loop's waiters so they re-check mode and hold (any thread)."""
        loop = self._loop
        if loop is None:
            return  # not started: nobody waits
        try:
            loop.call_soon_threadsafe(self._wake_all)
        except RuntimeError:  # loop closed meanwhile
            pass

    def _wake_all(self) -> None:
        old, self._wake = self._wake, asyncio.Event()
        if old is not None:
            old.set()

    async def _listen(self) -> None:
        if self._listener is not None:
            return
        loop = asyncio.get_running_loop()
        self._loop = loop
        if self._server is None:
            # handler_cancellation: a client that goes away cancels its handler,
            # so requests given up in hold/hang do not count in `held`.
            self._server = web.Server(self._handle, handler_cancellation=True,
                                      access_log=None, loop=loop)
        self._wake = asyncio.Event()
        # reuse_address: start() after stop() binds the same port at once.
        self._listener = await loop.create_server(
            self._server, self.host, self.port, reuse_address=True, backlog=1024)
        self.port = self._listener.sockets[0].getsockname()[1]

    async def _unlisten(self) -> None:
        listener, self._listener = self._listener, None
        if listener is None:
            return
        listener.close()  # closes the listening socket now: connection refused
        if self._server is not None:
            for handler in self._server.connections:
                if handler.transport is not None:
                    _reset(handler.transport)
        # Requests waiting in hold/hang/delay end now, not when their wait does.
        waiting = list(self._waiters)
        for task in waiting:
            task.cancel()
        if waiting:
            await asyncio.wait(waiting, timeout=2)

    async def _wait_until(self, done: Callable[[], bool], timeout: float) -> bool:
        """Wait until done() holds, re-checking on every state change; False
        after `timeout` s. stop() cancels the waiting request."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        task = asyncio.current_task()
        assert task is not None
        self._waiters.add(task)
        try:
            while not done():
                remaining = deadline - loop.time()
                if remaining <= 0:
                    return False
                wake = self._wake
                assert wake is not None
                try:
                    async with asyncio.timeout(remaining):
                        await wake.wait()
                except TimeoutError:
                    pass
            return True
        finally:
            self._waiters.discard(task)

    # ---------------------------------------------------------------- requests

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        route = self._routes.get((request.method, request.path))
        if route is None:
            if any(path == request.path for _, path in self._routes):
                return self._error(405, f"{request.method} is not allowed on {request.path}",
                                   "invalid_request_error")
            return self._error(404, f"no such endpoint: {request.method} {request.path}",
                               "invalid_request_error")
        try:
            return await route(request)
        except _Drop:
            # Abort: the client sees the connection end mid-response. The
            # returned response is never sent (aiohttp ignores the write error).
            if request.transport is not None:
                request.transport.abort()
            return web.Response(status=499)

    def _record(self, request: web.BaseRequest, body: Any) -> None:
        if self.record:
            entry = {"method": request.method, "path": request.path, "json": body,
                     "headers": {k.lower(): v for k, v in request.headers.items()}}
            with self._requests_lock:
                self.requests.append(entry)

    async def _read_json(self, request: web.BaseRequest) -> tuple[dict[str, Any] | None, str]:
        """The parsed JSON object body, or (None, why not). Records the request."""
        raw = await request.content.read()  # no client_max_size limit, unlike request.read()
        try:
            body = json.loads(raw)
        except (ValueError, UnicodeDecodeError) as exc:
            self._record(request, None)
            return None, f"could not parse the JSON body of your request: {exc}"
        self._record(request, body)
        if not isinstance(body, dict):
            return None, "the request body must be a JSON object"
        return body, ""

    async def _chat(self, request: web.BaseRequest) -> web.StreamResponse:
        self.inflight += 1
        try:
            return await self._chat_in_flight(request)
        finally:
            self.inflight -= 1

    async def _text_completion(self, request: web.BaseRequest) -> web.StreamResponse:
        self.inflight += 1
        try:
            return await self._text_completion_in_flight(request)
        finally:
            self.inflight -= 1

    async def _chat_in_flight(self, request: web.BaseRequest) -> web.StreamResponse:
        body, problem = await self._read_json(request)
        if body is None:
            return self._error(400, problem, "invalid_request_error")
        messages = body.get("messages")
        if not isinstance(messages, list):
            return self._error(400, "'messages' is a required property (a list)",
                               "invalid_request_error", param="messages")
        text = _last_user_text(messages)
        return await self._answer(request, body, text, chat=True)

    async def _text_completion_in_flight(self, request: web.BaseRequest) -> web.StreamResponse:
        body, problem = await self._read_json(request)
        if body is None:
            return self._error(400, problem, "invalid_request_error")
        prompt = body.get("prompt", "")
        if isinstance(prompt, list):  # a batch of prompts: echo the last text one
            prompt = next((p for p in reversed(prompt) if isinstance(p, str)), "")
        text = prompt if isinstance(prompt, str) else ""
        return await self._answer(request, body, text, chat=False)

    async def _models(self, request: web.BaseRequest) -> web.StreamResponse:
        self._record(request, None)
        mode = await self._mode_after_hang()
        if mode is None:
            return self._gave_up()
        if mode.name != "ok":
            return self._failure(mode)  # delay does not slow the health probe
        return self._json(200, {"object": "list", "data": [
            {"id": f"{self.name}-model", "object": "model", "created": 0,
             "owned_by": self.name}]})

    async def _load_mode(self, request: web.BaseRequest) -> web.StreamResponse | None:
        """A load page's answer under a mode other than ok (None: ok, answer it)."""
        self._record(request, None)
        mode = await self._mode_after_hang()
        if mode is None:
            return self._gave_up()
        if mode.name != "ok":
            return self._failure(mode)
        return None

    async def _slots_page(self, request: web.BaseRequest) -> web.StreamResponse:
        """llama.cpp's GET /slots: one object per slot."""
        failed = await self._load_mode(request)
        if failed is not None:
            return failed
        load = self.load()
        return self._json(200, [{"id": i, "id_task": i + 1 if i < load["busy"] else -1, "n_ctx": N_CTX,
                                 "speculative": False, "is_processing": i < load["busy"]}
                                for i in range(load["slots"])])

    async def _metrics_page(self, request: web.BaseRequest) -> web.StreamResponse:
        """llama.cpp's GET /metrics (Prometheus text), its two load gauges."""
        failed = await self._load_mode(request)
        if failed is not None:
            return failed
        load = self.load()
        text = (
            "# HELP llamacpp:requests_processing Number of requests processing.\n"
            "# TYPE llamacpp:requests_processing gauge\n"
            f"llamacpp:requests_processing {load['processing']}\n"
            "# HELP llamacpp:requests_deferred Number of requests deferred.\n"
            "# TYPE llamacpp:requests_deferred gauge\n"
            f"llamacpp:requests_deferred {load['deferred']}\n")
        return web.Response(status=200, body=text.encode(), headers={
            **self._headers, "Content-Type": "text/plain; version=0.0.4; charset=utf-8"})

    async def _mode_after_hang(self) -> _Mode | None:
        """The mode to answer under: the current one, or, in "hang", the one
        that ends the hang (None when it lasted MAX_WAIT)."""
        mode = self._mode
        if mode.name == "hang":
            if not await self._wait_until(lambda: self._mode.name != "hang", self.MAX_WAIT):
                return None
            mode = self._mode
        return mode

    async def _answer(self, request: web.BaseRequest, body: dict[str, Any], text: str,
                      *, chat: bool) -> web.StreamResponse:
        if self._holding and "HOLD" in text:
            self.held += 1
            try:
                await self._wait_until(lambda: not self._holding, self.MAX_WAIT)
            finally:
                self.held -= 1
        mode = await self._mode_after_hang()
        if mode is None:
            return self._gave_up()
        if mode.delay > 0:
            await self._wait_until(lambda: False, mode.delay)  # a sleep stop() can cancel
        stream = bool(body.get("stream"))
        if mode.name == "ok":
            pass
        elif mode.name == "drop-midstream":
            if not stream:
                raise _Drop
        else:
            return self._failure(mode)

        model = body.get("model")
        model = model if isinstance(model, str) and model else f"{self.name}-model"
        content = f"{self.name}: {text[:MAX_CONTENT]}"
        prompt_tokens = len(text.split())
        completion_tokens = len(content.split())
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}
        created = int(time.time())
        if chat:
            ident = f"chatcmpl-{self._id_prefix}{next(self._ids):06x}"
        else:
            ident = f"cmpl-{self._id_prefix}{next(self._ids):06x}"

        if not stream:
            if chat:
                choice = {"index": 0, "message": {"role": "assistant", "content": content},
                          "logprobs": None, "finish_reason": "stop"}
                kind = "chat.completion"
            else:
                choice = {"index": 0, "text": content, "logprobs": None, "finish_reason": "stop"}
                kind = "text_completion"
            return self._json(200, {"id": ident, "object": kind, "created": created,
                                    "model": model, "choices": [choice], "usage": usage})

        # stream=true: server-sent events, one `data: {chunk}` per event.
        if chat:
            kind = "chat.completion.chunk"
            choices = [[{"index": 0, "delta": {"role": "assistant", "content": ""},
                         "logprobs": None, "finish_reason": None}]]
            choices += [[{"index": 0, "delta": {"content": piece}, "logprobs": None,
                          "finish_reason": None}] for piece in _pieces(content)]
            choices.append([{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}])
        else:
            kind = "text_completion"
            choices = [[{"index": 0, "text": piece, "logprobs": None, "finish_reason": None}]
                       for piece in _pieces(content)]
            choices.append([{"index": 0, "text": "", "logprobs": None, "finish_reason": "stop"}])
        options = body.get("stream_options")
        if isinstance(options, dict) and options.get("include_usage"):
            choices.append([])  # OpenAI's last chunk: no choices, the usage

        response = web.StreamResponse(status=200, headers={
            **self._headers, "Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await response.prepare(request)
        for i, chunk_choices in enumerate(choices):
            chunk: dict[str, Any] = {"id": ident, "object": kind, "created": created,
                                     "model": model, "choices": chunk_choices}
            if options and not chunk_choices:
                chunk["usage"] = usage
            await response.write(b"data: " + json.dumps(chunk).encode() + b"\n\n")
            if i == 0 and mode.name == "drop-midstream":
                await _flushed(request)
                raise _Drop
        await response.write(_SSE_DONE)
        await response.write_eof()
        return response

    # ------------------------------------------------------------- responses

    def _json(self, status: int, payload: Any, headers: dict[str, str] | None = None
              ) -> web.Response:
        return web.Response(status=status, body=json.dumps(payload).encode(),
                            content_type=_JSON, headers=headers or self._headers)

    def _error(self, status: int, message: str, kind: str, *, code: str | None = None,
               param: str | None = None, headers: dict[str, str] | None = None
               ) -> web.Response:
        """An error in OpenAI's format: {"error": {"message", "type", "param", "code"}}."""
        return self._json(status, {"error": {"message": message, "type": kind,
                                             "param": param, "code": code}}, headers)

    def _failure(self, mode: _Mode) -> web.Response:
        """The reply of the "error" and "ratelimit" modes (and drop for GETs)."""
        if mode.name == "ratelimit":
            headers = self._headers
            if mode.retry_after is not None:
                headers = {**headers, "Retry-After": format(mode.retry_after, "g")}
            return self._error(429, f"standin {self.name}: rate limit reached",
                               "requests", code="rate_limit_exceeded", headers=headers)
        if mode.name == "drop-midstream":
            raise _Drop
        return self._error(mode.status, f"standin {self.name}: error mode ({mode.status})",
                           "server_error" if mode.status >= 500 else "invalid_request_error")

    def _gave_up(self) -> web.Response:
        return self._error(504, f"standin {self.name}: hung for {self.MAX_WAIT:g} s, giving up",
                           "server_error")


# ------------------------------------------------------------------- helpers

def _last_user_text(messages: list[Any]) -> str:
    """The text of the last user message (string content, or its text parts)."""
    for message in reversed(messages):
        if isinstance(message, dict) and message.get("role") == "user":
            content = message.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
                return " ".join(part["text"] for part in content
                                if isinstance(part, dict) and isinstance(part.get("text"), str))
            return ""
    return ""


def _pieces(content: str) -> list[str]:
    """Cut a reply into 3..MAX_PIECES pieces that concatenate back to it:
    word by word, by thirds when there are fewer than three words."""
    pieces = _WORDS.findall(content)
    if len(pieces) < 3:  # content is "<name>: ...", never shorter than 3 characters
        n = len(content)
        return [content[: n // 3], content[n // 3: 2 * n // 3], content[2 * n // 3:]]
    if len(pieces) > MAX_PIECES:
        size = -(-len(pieces) // MAX_PIECES)
        pieces = ["".join(pieces[i: i + size]) for i in range(0, len(pieces), size)]
    return pieces


def _reset(transport: asyncio.BaseTransport) -> None:
    """Close a connection abruptly, with a TCP RST (SO_LINGER 0) where possible."""
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except (OSError, AttributeError, TypeError):
            pass
    transport.abort()  # type: ignore[attr-defined]


async def _flushed(request: web.BaseRequest, timeout: float = 1.0) -> None:
    """Wait (bounded) until what was written has left the transport's buffer,
    so that abort() after it does not swallow it."""
    transport = request.transport
    deadline = time.monotonic() + timeout
    while (transport is not None and not transport.is_closing()
           and transport.get_write_buffer_size() > 0 and time.monotonic() < deadline):
        await asyncio.sleep(0.005)


# --------------------------------------------------------------- process mode

async def _serve(backend: StandinBackend) -> None:
    """Listen on the running loop until SIGTERM or SIGINT."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await backend._listen()
    print(f"listening {backend.url}", flush=True)
    await stop.wait()
    await backend._unlisten()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="A stand-in OpenAI-compatible LLM backend.")
    parser.add_argument("--name", default="local", help="who answers (default: local)")
    parser.add_argument("--port", type=int, default=9001, help="0 picks a free one (default: 9001)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--delay", type=float, default=0.0,
                        help="seconds before each completion reply (default: 0)")
    parser.add_argument("--mode", choices=MODES, default="ok", help="how it answers (default: ok)")
    parser.add_argument("--slots", type=int, default=SLOTS, help=f"slots /slots lists (default: {SLOTS})")
    args = parser.parse_args(argv)
    if args.delay < 0 or args.slots < 0:
        parser.error("--delay and --slots must be >= 0")
    # record=False: nobody reads `requests` here, and wrk would grow it without bound.
    backend = StandinBackend(args.name, port=args.port, host=args.host, record=False)
    if args.delay > 0 or args.mode != "ok":
        backend.set_mode(args.mode, delay=args.delay)
    backend.set_slots(args.slots)
    try:
        import uvloop
        loop_factory: Callable[[], asyncio.AbstractEventLoop] | None = uvloop.new_event_loop
    except ImportError:
        loop_factory = None
    with asyncio.Runner(loop_factory=loop_factory) as runner:
        runner.run(_serve(backend))
    return 0


if __name__ == "__main__":
    sys.exit(main())
