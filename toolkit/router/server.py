"""agentkit-router's HTTP service: decide, forward, fail over, report.

One aiohttp application on one event loop: it serves the OpenAI-compatible
endpoints and forwards to the chosen backend through one pooled
aiohttp.ClientSession (keep-alive), streaming passed through chunk by chunk.

Failover: a failed attempt (connection refused or reset, no first byte in
time, 5xx, 429) counts against that backend's circuit breaker and the request
moves at once to the next backend the rules allow (another local backend,
then the cloud, or from the cloud to a local one); when every backend has
failed it, the router backs off (exponential, full jitter, Retry-After
honoured) and tries again, all within the request's deadline. With
`hedge_after`, an attempt that has no first byte by then gets a second one on
the next backend, and the first to answer wins. Nothing is retried once a
byte has gone to the client: a stream that breaks midway is cut, so the
client sees it.

Health costs no tokens: GET /models probes a backend whose circuit is open,
one with an attempt waiting long for its first byte (when those probes fail
too, its circuit opens and the waiting attempts fail over at once), and every
backend when traffic is quiet; a peer's own load signal
(llama.cpp's /slots, a /metrics page) is polled to know when it is full.

The cloud key is read once from a file (LoadCredential= under systemd) into
memory and only ever put in the Authorization header of cloud requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Callable

import aiohttp
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from .. import units
from . import inbound, policy
from .breaker import OPEN, Breaker
from .config import CLOUD
from .gpu import GpuSampler
from .metrics import CONTENT_TYPE, Metrics
from .policy import Decision, PolicyConfig, Task, View
from ..values import seconds
from .settings import default

log = logging.getLogger(units.ROUTER_PROGRAM)

RETRYABLE_STATUS = (429, 500, 502, 503, 504)
# Load signals: a slot busy in llama.cpp's /slots; requests queued in llama.cpp's or vLLM's /metrics.
QUEUED_METRICS = ("llamacpp:requests_deferred", "vllm:num_requests_waiting")


@dataclass(frozen=True)
class Endpoint:
    """Where a backend is: its name (as in the decision), its OpenAI base URL, and how to see its load."""

    name: str
    url: str
    gpu: int | None = None  # its GPU's NVML index on this host; None: not on this host (or not known)
    load: str = "none"  # its own load signal: none, slots or metrics


@dataclass(frozen=True)
class Settings:
    policy: PolicyConfig
    endpoints: tuple[Endpoint, ...]  # in the decision's order (policy.index): the local ones, then the cloud
    cloud_api_key: str | None = None
    # The defaults of agentkit-router's options, in seconds where the table says microseconds.
    timeout: float = seconds(default("timeout"))  # a request's deadline to its first byte, retries included
    attempt_timeout: float = seconds(default("attempt_timeout"))  # one backend's time to answer (not streamed)
    first_byte_timeout: float = seconds(default("first_byte_timeout"))  # one backend's time to a stream's first byte
    hedge_after: float | None = None  # no first byte by then: a second attempt on the next backend
    connect_timeout: float = seconds(default("connect_timeout"))
    header_timeout: float = seconds(default("header_timeout"))  # a client's time to send its head, and its body
    stream_idle_timeout: float = 60.0
    max_request_bytes: int = default("max_request_size")
    breaker_failures: int = default("breaker.failures")
    breaker_open_for: float = seconds(default("breaker.open_for"))
    probe_interval: float = seconds(default("probe_interval"))
    backoff_base: float = 0.05
    backoff_max: float = 2.0

    def __repr__(self) -> str:  # never print the key
        return f"Settings(endpoints={self.endpoints!r}, policy={self.policy!r})"


@dataclass
class Load:
    """What a backend's own load signal said last."""

    busy: int | None = None  # slots busy (slots)
    slots: int | None = None
    queued: int | None = None  # requests waiting (metrics)
    error: str | None = None
    at: float | None = None  # time.monotonic() of the last reading


class Opened:
    """An attempt that has its first byte: a non-streamed answer whole, or a stream's first chunk."""

    __slots__ = ("decision", "resp", "data", "chunks", "first", "release")

    def __init__(self, decision: Decision, resp, data=None, chunks=None, first=b"", release=None):
        self.decision, self.resp, self.data, self.chunks, self.first, self.release = (
            decision, resp, data, chunks, first, release)

    def close(self, done: bool = False) -> None:
        """The attempt is over: read to its end (`done`: its connection goes back to the pool), or given up
        (a hedge lost, a stream cut: its connection closes). Its in-flight count goes either way."""
        if self.chunks is not None:
            self.resp.release() if done else self.resp.close()
        if self.release is not None:
            self.release()
            self.release = None


class Failed:
    __slots__ = ("backend", "cause", "error", "wait")

    def __init__(self, backend: str, cause: str, error: str, wait: float = 0.0):
        self.backend, self.cause, self.error, self.wait = backend, cause, error, wait


class Router:
    def __init__(self, settings: Settings, gpu: GpuSampler) -> None:
        self.settings = settings
        self.config = config = settings.policy
        self.gpu = gpu
        self.view = View.of(config)
        self.names = tuple(config.index)
        if tuple(e.name for e in settings.endpoints) != self.names:
            raise ValueError(f"endpoints {[e.name for e in settings.endpoints]} do not match the backends {self.names}")
        self.endpoints = {e.name: e for e in settings.endpoints}
        self.urls = {e.name: e.url.rstrip("/") for e in settings.endpoints}
        self.backends = {b.name: b for b in config.locals + (config.cloud,)}
        self.breakers = {name: Breaker(name, failures=settings.breaker_failures, open_for=settings.breaker_open_for,
                                       on_change=self._breaker_changed) for name in self.names}
        self.loads = {e.name: Load() for e in settings.endpoints if e.load != "none"}
        # (view index, NVML device) of the backends on this host's GPUs, read at each decision
        self._nvml = tuple((config.index[e.name], e.gpu) for e in settings.endpoints if e.gpu is not None)
        self.metrics = Metrics(self)
        self.session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task] = []
        self._headers = {name: {"Content-Type": "application/json"} for name in self.names}
        if settings.cloud_api_key:
            self._headers[CLOUD]["Authorization"] = "Bearer " + settings.cloud_api_key
        self._last_traffic = {name: 0.0 for name in self.names}
        # Attempts waiting for their first byte, per backend: token -> [since, task, abandoned]. A backend
        # with one waiting long gets probed; when its circuit opens, they are given up and fail over.
        self._waiting: dict[str, dict[object, list]] = {name: {} for name in self.names}

    # --- the decision ---------------------------------------------------------

    def select_backend(self, task: Task, view: View | None = None) -> Decision:
        """The decision for `task` now: reads the GPU snapshot and the breakers, never waits."""
        started = time.perf_counter()
        view = view or self.view
        if self._nvml:
            now = time.monotonic()
            free = view.gpu_free
            for index, device in self._nvml:
                free[index] = self.gpu.free_bytes(device, now)
        decision = policy.decide(self.config, task, view)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self.metrics.decisions[decision.backend, decision.reason].inc()
        return decision

    def _decide(self, task: Task, failed: set[str]) -> Decision:
        """The same rules, with the backends that failed this request counted as down."""
        if not failed:
            return self.select_backend(task)
        view = self.view.copy()
        for name in failed:
            view.up[self.config.index[name]] = False
        return self.select_backend(task, view)

    def _breaker_changed(self, breaker: Breaker) -> None:
        self.view.up[self.config.index[breaker.name]] = breaker.state != OPEN
        if breaker.state == OPEN:
            # A backend found hung (its probes fail too) answers none of the attempts waiting on it:
            # they fail over now rather than at their timeout.
            for entry in self._waiting[breaker.name].values():
                if not entry[2]:
                    entry[2] = True
                    entry[1].cancel()
        log.warning("backend %s (%s): circuit %s%s", breaker.name, self.urls[breaker.name], breaker.state,
                    f" for {breaker.open_for:g} s after: {breaker.last_error}" if breaker.state == OPEN else "")

    # --- lifecycle --------------------------------------------------------------

    async def start(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60)
        # No cookies, no redirects: a gateway passes answers through (both cost per request in aiohttp).
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=None))
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._probe_loop())]
        if self.loads:
            self._tasks.append(loop.create_task(self._load_loop()))

    async def stop(self, app: web.Application) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except asyncio.CancelledError:
                pass
        if self.session is not None:
            await self.session.close()

    async def _probe_loop(self) -> None:
        """Cheap probes (GET /models): every interval while a circuit is open, every ten when traffic is quiet."""
        interval = self.settings.probe_interval
        idle_every = interval * 10
        stalled_after = interval * 2  # an attempt without a first byte this long: is the backend still there?
        probing: dict[str, asyncio.Task] = {}  # a probe in progress per backend: a hung one holds no other
        loop = asyncio.get_running_loop()
        try:
            while True:
                await asyncio.sleep(interval)
                now = time.monotonic()
                for name, breaker in self.breakers.items():
                    if name in probing and not probing[name].done():
                        continue
                    if (breaker.up and breaker.state == "closed" and now - self._last_traffic[name] < idle_every
                            and not self._stalled(name, now - stalled_after)):
                        continue
                    self._last_traffic[name] = now
                    probing[name] = loop.create_task(self._probe(name))
        finally:
            for task in probing.values():
                task.cancel()
            await asyncio.gather(*probing.values(), return_exceptions=True)

    def _stalled(self, name: str, since: float) -> bool:
        """Whether an attempt has been waiting on `name` for its first byte since before `since`."""
        return any(entry[0] < since for entry in self._waiting[name].values())

    def _probe_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=min(2.0, self.settings.probe_interval * 4),
                                     connect=self.settings.connect_timeout)

    async def _probe(self, name: str) -> None:
        try:
            await self._probe_once(name)
        except Exception:  # whatever a backend answers must not end the probe loop for every backend
            log.exception("probing backend %s", name)

    async def _probe_once(self, name: str) -> None:
        breaker = self.breakers[name]
        try:
            async with self.session.get(self.urls[name] + "/models", headers=self._headers[name],
                                        timeout=self._probe_timeout()) as resp:
                await resp.read()
                if resp.status >= 500 or resp.status == 429:
                    self._failed(name, "http_5xx" if resp.status >= 500 else "http_429", f"probe: HTTP {resp.status}")
                    return
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            self._failed(name, _cause(exc), f"probe: {_describe(exc)}")
            return
        if breaker.state != "closed":
            log.warning("backend %s: probe answered", name)
        breaker.success()

    async def _load_loop(self) -> None:
        """The peers' own load signals, every probe interval (a reading costs the backend no tokens)."""
        reading: dict[str, asyncio.Task] = {}  # one reading in progress per peer: a hung one delays no other
        loop = asyncio.get_running_loop()
        try:
            while True:
                for name in self.loads:
                    if name not in reading or reading[name].done():
                        reading[name] = loop.create_task(self._read_load_safely(name))
                await asyncio.sleep(self.settings.probe_interval)
        finally:
            for task in reading.values():
                task.cancel()
            await asyncio.gather(*reading.values(), return_exceptions=True)

    async def _read_load_safely(self, name: str) -> None:
        try:
            await self._read_load(name)
        except Exception as exc:  # whatever a peer answers must not end its readings
            log.error("reading the load of backend %s: %s", name, _describe(exc))

    async def _read_load(self, name: str) -> None:
        endpoint = self.endpoints[name]
        load = self.loads[name]
        origin = self.urls[name].removesuffix("/v1")
        path = "/slots" if endpoint.load == "slots" else "/metrics"
        full = False
        try:
            async with self.session.get(origin + path, timeout=self._probe_timeout()) as resp:
                text = await resp.text()
                if resp.status != 200:
                    raise ValueError(f"HTTP {resp.status} from {origin}{path}")
            if endpoint.load == "slots":
                slots = json.loads(text)
                if not isinstance(slots, list):
                    raise ValueError(f"{origin}{path} is not a list of slots")
                busy = sum(1 for s in slots if isinstance(s, dict) and (s.get("is_processing") or s.get("state", 0)))
                load.busy, load.slots = busy, len(slots)
                full = bool(slots) and busy >= len(slots)
            else:
                queued = 0
                for family in text_string_to_metric_families(text):
                    if family.name in QUEUED_METRICS:
                        queued += int(sum(s.value for s in family.samples))
                load.queued = queued
                full = queued > 0
            load.error = None
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError, ValueError, ArithmeticError, RecursionError) as exc:
            # No reading says nothing about the load: the breaker and the in-flight limit still guard it.
            # (ArithmeticError: a count of +Inf; RecursionError: JSON nested too deeply.)
            load.error = _describe(exc)
        load.at = time.monotonic()
        self.view.full[self.config.index[name]] = full

    def _failed(self, name: str, cause: str, error: str) -> None:
        self.metrics.failures[name, cause].inc()
        self.breakers[name].failure(error)

    # --- HTTP handlers --------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat", "/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "completions", "/completions")

    async def _body(self, request: web.Request) -> dict:
        """The request's JSON body, read within header_timeout (aiohttp bounds the head's time, not the body's:
        a client sending its body a byte a second would hold its connection for as long as it liked)."""
        try:
            async with asyncio.timeout(self.settings.header_timeout):
                raw = await request.read()
        except TimeoutError:
            raise inbound.RequestError(f"the request body did not arrive within {self.settings.header_timeout:g} s",
                                       status=408) from None
        return inbound.parse_body(raw)

    async def route(self, request: web.Request) -> web.Response:
        body = await self._body(request)
        kind = "chat" if "messages" in body else "text" if "prompt" in body else None
        if kind is None:
            body = dict(body, messages=[{"role": "user", "content": ""}])
            kind = "chat"
        task = inbound.task_of(body, kind, request.headers)
        decision = self.select_backend(task)
        return web.json_response({
            "backend": decision.backend, "model": decision.model, "score": round(decision.score, 4),
            "reason": decision.reason, "base_url": self.urls[decision.backend],
            "context_tokens": task.context_tokens,
        })

    async def models(self, request: web.Request) -> web.Response:
        data, seen = [], set()
        for name in self.names:
            for m in self.backends[name].models:
                if m.name not in seen:
                    seen.add(m.name)
                    data.append({"id": m.name, "object": "model", "created": 0, "owned_by": f"agentkit-router ({name})"})
        return web.json_response({"object": "list", "data": data})

    async def health(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        backends = {}
        for name in self.names:
            breaker = self.breakers[name]
            b = self.backends[name]
            i = self.config.index[name]
            out = dict(breaker.describe(), url=self.urls[name], up=breaker.up, inflight=self.view.inflight[i],
                       models=[m.name for m in b.models], open_for_seconds=breaker.open_for)
            if name != CLOUD:
                out.update(max_inflight=b.max_inflight, reserved_bytes=self.view.reserved[i],
                           gpu=("nvml" if self.endpoints[name].gpu is not None and self.gpu.available else "capacity"),
                           gpu_free_bytes=self.view.gpu_free[i], capacity_bytes=b.capacity, full=self.view.full[i])
            if name in self.loads:
                load = self.loads[name]
                out["load"] = {"signal": self.endpoints[name].load, "busy_slots": load.busy, "slots": load.slots,
                               "queued": load.queued, "error": load.error,
                               "age_seconds": None if load.at is None else round(now - load.at, 3)}
            backends[name] = out
        backends[CLOUD]["api_key"] = "set" if self.settings.cloud_api_key else "none"
        any_up = any(b["up"] for b in backends.values())
        return web.json_response({
            "status": "ok" if all(b["up"] for b in backends.values()) else "degraded" if any_up else "down",
            "backends": backends, "gpu": self.gpu.status(now),
            "local_reserved_bytes": sum(self.view.reserved),
        }, status=200 if any_up else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.expose(), headers={"Content-Type": CONTENT_TYPE})

    # --- forwarding -------------------------------------------------------------------

    async def _complete(self, request: web.Request, endpoint: str, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        body = await self._body(request)
        task = inbound.task_of(body, "chat" if endpoint == "chat" else "text", request.headers)
        stream = body.get("stream") is True
        deadline = time.monotonic() + self.settings.timeout
        failed: set[str] = set()
        last_error = "no backend tried"
        retry_after = 0.0
        rounds = 0
        previous: str | None = None
        while True:
            decision = self._decide(task, failed)
            backend = decision.backend
            if backend in failed:
                # Every backend the rules allow has failed this request: back off, then a new round.
                rounds += 1
                pause = max(random.uniform(0, min(self.settings.backoff_max, self.settings.backoff_base * 2 ** rounds)),
                            retry_after)
                if time.monotonic() + pause >= deadline:
                    return self._unavailable(endpoint, decision, last_error, started)
                self.metrics.retries.inc()
                await asyncio.sleep(pause)
                failed.clear()
                retry_after = 0.0
                previous = None  # a new round: its first attempt is a retry, not a failover
                continue
            if previous is not None and previous != backend:
                self.metrics.failovers[previous, backend].inc()
            previous = backend
            opened, failures = await self._first_byte(task, decision, failed, path, body, stream, deadline)
            for failure in failures:
                self._failed(failure.backend, failure.cause, failure.error)
                failed.add(failure.backend)
                retry_after = max(retry_after, failure.wait)
                last_error = failure.error
            if opened is not None:
                return await self._deliver(request, opened, endpoint, started)
            if time.monotonic() >= deadline:
                return self._unavailable(endpoint, decision, last_error, started)

    async def _first_byte(self, task: Task, decision: Decision, failed: set[str], path: str, body: dict,
                          stream: bool, deadline: float) -> tuple[Opened | None, list[Failed]]:
        """One attempt, and with hedge_after a second on the next backend when a stream's first is slow to its
        first byte (streams only: a request that is not streamed has its whole answer as its first byte, and
        every generation longer than hedge_after would be sent twice): the winner (the first to answer) and
        the attempts that failed."""
        hedge_after = self.settings.hedge_after if stream else None
        if hedge_after is None:
            # One attempt, in this task: no task of its own to make and schedule on the hot path (when its
            # circuit opens, _breaker_changed cancels this task and _open turns that into a failure).
            return _settled([await self._open(decision, self._claim(decision, task), path, body, stream,
                                              deadline)])
        attempts: dict[asyncio.Task, Callable[[], None]] = {}  # each attempt and what gives its claim back

        def attempt(d: Decision) -> asyncio.Task:
            release = self._claim(d, task)
            t = asyncio.ensure_future(self._open(d, release, path, body, stream, deadline))
            attempts[t] = release
            return t

        first = attempt(decision)
        winner = None
        try:
            done, _ = await asyncio.wait((first,), timeout=hedge_after)
            second = None if done else self._decide(task, failed | {decision.backend})
            if second is not None and second.backend != decision.backend and second.backend not in failed:
                self.metrics.hedges[decision.backend, second.backend].inc()
                attempt(second)
            results = []
            pending = set(attempts)
            while pending and not any(isinstance(r, Opened) for r in results):
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                results += [t.result() for t in attempts if t in done]
            winner, failures = _settled(results)
            return winner, failures
        finally:
            # The loser of a hedge, or every attempt when the client went away: cancelled, their
            # connections closed and their claims given back (a task cancelled before it ran never
            # reached its own finally).
            for t in attempts:
                if not t.done():
                    t.cancel()
            await asyncio.gather(*attempts, return_exceptions=True)
            for t, release in attempts.items():
                result = None if t.cancelled() or t.exception() is not None else t.result()
                if isinstance(result, Opened) and result is not winner:
                    result.close()
                elif result is not winner:
                    release()

    def _claim(self, decision: Decision, task: Task) -> Callable[[], None]:
        """Count an attempt in its backend's in-flight figures now, in the same step as the decision (so that
        a burst of requests sees each other's), and return what gives them back: once, however it ends."""
        backend = decision.backend
        i = self.config.index[backend]
        view = self.view
        reserved = policy.reservation(self.config, decision, task)
        self._last_traffic[backend] = time.monotonic()
        view.inflight[i] += 1
        view.reserved[i] += reserved
        held = True

        def release() -> None:
            nonlocal held
            if held:
                held = False
                view.inflight[i] -= 1
                view.reserved[i] -= reserved
        return release

    async def _open(self, decision: Decision, release: Callable[[], None], path: str, body: dict, stream: bool,
                    deadline: float) -> Opened | Failed:
        """Send to one backend and wait for its first byte (a stream's first chunk, or a whole answer)."""
        backend = decision.backend
        remaining = max(0.001, deadline - time.monotonic())
        wait = min(remaining, self.settings.first_byte_timeout if stream else self.settings.attempt_timeout)
        timeout = aiohttp.ClientTimeout(total=None, connect=min(wait, self.settings.connect_timeout),
                                        sock_read=self.settings.stream_idle_timeout if stream else wait)
        resp = None
        kept = False  # the Opened stream holds the response and the in-flight count from here
        token = object()
        waiting = self._waiting[backend]
        waiting[token] = entry = [time.monotonic(), asyncio.current_task(), False]
        try:
            async with asyncio.timeout(wait):
                resp = await self.session.post(self.urls[backend] + path, data=inbound.forwarded(body, decision.model),
                                               headers=self._headers[backend], timeout=timeout, allow_redirects=False)
                if resp.status in RETRYABLE_STATUS:
                    await _drain(resp)
                    return Failed(backend, "http_429" if resp.status == 429 else "http_5xx",
                                  f"{backend}: HTTP {resp.status} from {self.urls[backend]}{path}",
                                  _retry_after(resp.headers.get("Retry-After")))
                if not stream or resp.status != 200:
                    data = await resp.read()
                    return Opened(decision, resp, data=data)
                chunks = resp.content.iter_any()
                try:
                    first = await chunks.__anext__()
                except StopAsyncIteration:
                    first = b""
                kept = True
                return Opened(decision, resp, chunks=chunks, first=first, release=release)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            what = "no first byte" if isinstance(exc, asyncio.TimeoutError) else _describe(exc)
            return Failed(backend, _cause(exc), f"{backend}: {what}" + (f" within {wait:g} s" if isinstance(
                exc, asyncio.TimeoutError) else ""))
        except asyncio.CancelledError:
            if not entry[2]:
                raise  # the client went away, or a hedge was won elsewhere
            asyncio.current_task().uncancel()  # given up by _breaker_changed: a failure like a timeout
            return Failed(backend, "timeout", f"{backend}: no first byte, and its circuit opened meanwhile "
                                              f"({self.breakers[backend].last_error})")
        finally:
            del waiting[token]
            if not kept:
                release()
                if resp is not None:
                    resp.release()

    async def _deliver(self, request: web.Request, opened: Opened, endpoint: str, started: float) -> web.StreamResponse:
        decision = opened.decision
        backend = decision.backend
        resp = opened.resp
        headers = {"X-Agentkit-Backend": backend, "X-Agentkit-Model": decision.model,
                   "X-Agentkit-Reason": decision.reason, "X-Agentkit-Score": f"{decision.score:.3f}",
                   "Content-Type": resp.headers.get("Content-Type", "application/json")}
        if opened.chunks is None:
            self.breakers[backend].success()
            self._done(endpoint, backend, resp.status, started)
            return web.Response(body=opened.data, status=resp.status, headers=headers)
        # A 200 stream: from the first byte on there is no going back.
        headers["Cache-Control"] = "no-cache"
        out = web.StreamResponse(status=200, headers=headers)
        done = False
        client_gone = False
        try:
            await out.prepare(request)
            chunk = opened.first
            # From here the session's sock_read (stream_idle_timeout) bounds every wait.
            chunks = opened.chunks.__aiter__()
            while True:
                if chunk:
                    try:
                        await out.write(chunk)
                    except (ConnectionError, OSError):
                        client_gone = True  # the client's side: no fault of the backend's
                        raise
                try:
                    chunk = await chunks.__anext__()
                except StopAsyncIteration:
                    break
            done = True
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if client_gone:
                self._done(endpoint, backend, 499, started)  # nginx's "client closed the request"
                return out
            # Bytes went out already: cut the client's stream so it knows, and don't retry.
            self._failed(backend, "broken", f"{backend}: stream broke: {_describe(exc)}")
            self._done(endpoint, backend, 502, started)
            if request.transport is not None:
                request.transport.close()
            return out
        finally:
            opened.close(done)
        self.breakers[backend].success()
        await out.write_eof()
        self._done(endpoint, backend, 200, started)
        return out

    def _done(self, endpoint: str, backend: str, status: int, started: float) -> None:
        self.metrics.request_seconds[endpoint, backend].observe(time.perf_counter() - started)
        self.metrics.response(endpoint, backend, status).inc()

    def _unavailable(self, endpoint: str, decision: Decision, last_error: str, started: float) -> web.Response:
        self._done(endpoint, decision.backend, 503, started)
        return _error(503, f"no backend could serve the request within {self.settings.timeout:g} s "
                           f"(decision: {decision.backend}, {decision.reason}); last error: {last_error}",
                      "service_unavailable", headers={"Retry-After": "1"})


def _settled(results: list) -> tuple[Opened | None, list[Failed]]:
    """The first Opened of `results` (any other is given up) and the failures."""
    winner = None
    failures = []
    for r in results:
        if isinstance(r, Failed):
            failures.append(r)
        elif winner is None:
            winner = r
        else:
            r.close()
    return winner, failures


def _retry_after(value: str | None) -> float:
    try:
        return min(max(float(value), 0.0), 60.0) if value else 0.0
    except ValueError:
        return 0.0


async def _drain(resp: aiohttp.ClientResponse) -> None:
    try:
        await asyncio.wait_for(resp.read(), 1.0)
    except (aiohttp.ClientError, asyncio.TimeoutError, OSError):
        pass


def _cause(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    return "broken"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timed out"
    text = str(exc) or type(exc).__name__
    return f"{type(exc).__name__}: {text}"[:300]


def _error(status: int, message: str, kind: str, param: str | None = None, headers=None) -> web.Response:
    body = {"error": {"message": message, "type": kind, "param": param, "code": None}}
    return web.Response(status=status, body=json.dumps(body).encode(), content_type="application/json",
                        headers=headers)


@web.middleware
async def _errors(request: web.Request, handler):
    """Every client mistake becomes a 4xx in OpenAI's error format; nothing a client sends escapes as a 500."""
    router: Router = request.app["router"]
    try:
        return await handler(request)
    except inbound.RequestError as exc:
        router.metrics.rejected.labels(str(exc.status)).inc()
        return _error(exc.status, str(exc), "invalid_request_error", exc.param)
    except web.RequestPayloadError as exc:  # a body aiohttp cannot decode (Content-Encoding: gzip that is not)
        router.metrics.rejected.labels("400").inc()
        cause = getattr(exc.__cause__, "message", None) or "its encoding is broken"
        return _error(400, f"the request body cannot be read: {cause}", "invalid_request_error")
    except web.HTTPRequestEntityTooLarge:
        router.metrics.rejected.labels("413").inc()
        return _error(413, f"the request body is larger than the router's limit of "
                           f"{router.settings.max_request_bytes} bytes", "invalid_request_error")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        router.metrics.rejected.labels(str(exc.status)).inc()
        return _error(exc.status, f"{exc.reason}: {request.method} {request.path}", "invalid_request_error",
                      headers={k: v for k, v in exc.headers.items() if k == "Allow"})
    except (ConnectionResetError, asyncio.CancelledError):
        raise
    except Exception:
        log.exception("internal error on %s %s", request.method, request.path)
        return _error(500, "internal error in the router (logged)", "server_error")


def make_app(router: Router) -> web.Application:
    app = web.Application(middlewares=[_errors], client_max_size=router.settings.max_request_bytes)
    app["router"] = router
    app.router.add_post("/v1/chat/completions", router.chat)
    app.router.add_post("/v1/completions", router.completions)
    app.router.add_post("/v1/route", router.route)
    app.router.add_get("/v1/models", router.models)
    app.router.add_get("/health", router.health)
    app.router.add_get("/metrics", router.metrics_page)
    app.on_startup.append(router.start)
    app.on_cleanup.append(router.stop)
    return app
