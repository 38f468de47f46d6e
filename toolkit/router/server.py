"""agentkit-router's HTTP service: decide, forward, fail over, report.

One aiohttp application on one event loop: it serves the OpenAI-compatible
endpoints and forwards to the chosen backend through one pooled
aiohttp.ClientSession (keep-alive), streaming passed through chunk by chunk.

Failover: a failed attempt (connection refused or reset, timeout, 5xx, 429)
counts against that backend's circuit breaker and the request moves to the
other backend at once if the rules allow it there; when every backend has
failed it, the router backs off (exponential, full jitter, Retry-After
honoured) and tries again, all within the request's deadline. Nothing is
retried once a byte has gone to the client: a stream that breaks midway is
cut, so the client sees it.

The cloud key is read once from a file (LoadCredential= under systemd) into
memory and only ever put in the Authorization header of cloud requests.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import random
import time
from dataclasses import dataclass, replace

import aiohttp
from aiohttp import web

from .. import units
from . import inbound, policy
from .breaker import Breaker
from .gpu import GpuSampler
from .metrics import CONTENT_TYPE, Metrics
from .policy import CLOUD, LOCAL, Decision, PolicyConfig, Task, View
from ..values import seconds
from .settings import default

log = logging.getLogger(units.ROUTER_PROGRAM)

CREDENTIAL = "cloud-api-key"  # the name under $CREDENTIALS_DIRECTORY (LoadCredential=)
RETRYABLE_STATUS = (429, 500, 502, 503, 504)


@dataclass(frozen=True)
class Settings:
    policy: PolicyConfig
    local_url: str  # base URL, e.g. http://127.0.0.1:8080/v1
    cloud_url: str
    cloud_api_key: str | None = None
    # The defaults of agentkit-router's options, in seconds where the table says microseconds.
    gpu_device: int = default("gpu.device")
    timeout: float = seconds(default("timeout"))  # a request's deadline to its first byte, retries included
    attempt_timeout: float = seconds(default("attempt_timeout"))  # one backend's time to answer (or start streaming)
    connect_timeout: float = seconds(default("connect_timeout"))
    stream_idle_timeout: float = 60.0
    max_request_bytes: int = default("max_request_size")
    breaker_failures: int = default("breaker.failures")
    breaker_open_for: float = seconds(default("breaker.open_for"))
    probe_interval: float = seconds(default("probe_interval"))
    backoff_base: float = 0.05
    backoff_max: float = 2.0

    def __repr__(self) -> str:  # never print the key
        return f"Settings(local_url={self.local_url!r}, cloud_url={self.cloud_url!r}, policy={self.policy!r})"


class Router:
    def __init__(self, settings: Settings, gpu: GpuSampler) -> None:
        self.settings = settings
        self.config = settings.policy
        self.gpu = gpu
        self.view = View()
        self._cloud_inflight = 0  # the local count lives in the decision's view
        self.urls = {LOCAL: settings.local_url.rstrip("/"), CLOUD: settings.cloud_url.rstrip("/")}
        self.breakers = {name: Breaker(name, failures=settings.breaker_failures, open_for=settings.breaker_open_for,
                                       on_change=self._breaker_changed) for name in policy.BACKENDS}
        self.metrics = Metrics(self)
        self.session: aiohttp.ClientSession | None = None
        self._probe_task: asyncio.Task | None = None
        self._headers = {LOCAL: {"Content-Type": "application/json"}, CLOUD: {"Content-Type": "application/json"}}
        if settings.cloud_api_key:
            self._headers[CLOUD]["Authorization"] = "Bearer " + settings.cloud_api_key
        self._last_traffic = {LOCAL: 0.0, CLOUD: 0.0}

    def inflight(self, backend: str) -> int:
        return self.view.local_inflight if backend == LOCAL else self._cloud_inflight

    # --- the decision ---------------------------------------------------------

    def select_backend(self, task: Task, view: View | None = None) -> Decision:
        """The decision for `task` now: reads the GPU snapshot and the breakers, never waits."""
        started = time.perf_counter()
        view = view or self.view
        view.gpu_free = self.gpu.free_bytes(self.settings.gpu_device, time.monotonic())
        decision = policy.decide(self.config, task, view)
        self.metrics.decision_seconds.observe(time.perf_counter() - started)
        self.metrics.decisions[decision.backend, decision.reason].inc()
        return decision

    def _breaker_changed(self, breaker: Breaker) -> None:
        up = breaker.state != "open"
        if breaker.name == LOCAL:
            self.view.local_up = up
        else:
            self.view.cloud_up = up
        log.warning("backend %s (%s): circuit %s%s", breaker.name, self.urls[breaker.name], breaker.state,
                    f" after: {breaker.last_error}" if breaker.state == "open" else "")

    # --- lifecycle --------------------------------------------------------------

    async def start(self, app: web.Application) -> None:
        connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60)
        # No cookies, no redirects: a gateway passes answers through (both cost per request in aiohttp).
        self.session = aiohttp.ClientSession(connector=connector, auto_decompress=False,
                                             cookie_jar=aiohttp.DummyCookieJar(),
                                             timeout=aiohttp.ClientTimeout(total=None))
        self._probe_task = asyncio.get_running_loop().create_task(self._probe_loop())

    async def stop(self, app: web.Application) -> None:
        if self._probe_task is not None:
            self._probe_task.cancel()
            try:
                await self._probe_task
            except asyncio.CancelledError:
                pass
        if self.session is not None:
            await self.session.close()

    async def _probe_loop(self) -> None:
        """Cheap probes (GET /models): every interval while a circuit is open, every ten when traffic is quiet."""
        interval = self.settings.probe_interval
        idle_every = interval * 10
        while True:
            await asyncio.sleep(interval)
            now = time.monotonic()
            for name, breaker in self.breakers.items():
                if breaker.up and breaker.state == "closed" and now - self._last_traffic[name] < idle_every:
                    continue
                self._last_traffic[name] = now
                await self._probe(name)

    async def _probe(self, name: str) -> None:
        breaker = self.breakers[name]
        timeout = aiohttp.ClientTimeout(total=min(2.0, self.settings.probe_interval * 4),
                                        connect=self.settings.connect_timeout)
        try:
            async with self.session.get(self.urls[name] + "/models", headers=self._headers[name],
                                        timeout=timeout) as resp:
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

    def _failed(self, name: str, cause: str, error: str) -> None:
        self.metrics.failures[name, cause].inc()
        self.breakers[name].failure(error)

    # --- HTTP handlers --------------------------------------------------------------

    async def chat(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "chat", "/chat/completions")

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._complete(request, "completions", "/completions")

    async def route(self, request: web.Request) -> web.Response:
        body = inbound.parse_body(await request.read())
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
        names = [self.config.local.name] + ([self.config.small.name] if self.config.small else []) + [self.config.cloud_model]
        owners = [LOCAL] * (len(names) - 1) + [CLOUD]
        return web.json_response({"object": "list", "data": [
            {"id": n, "object": "model", "created": 0, "owned_by": f"agentkit-router ({o})"} for n, o in zip(names, owners)]})

    async def health(self, request: web.Request) -> web.Response:
        now = time.monotonic()
        backends = {name: dict(self.breakers[name].describe(), url=self.urls[name], up=self.breakers[name].up,
                               inflight=self.inflight(name)) for name in policy.BACKENDS}
        backends[CLOUD]["api_key"] = "set" if self.settings.cloud_api_key else "none"
        gpu = self.gpu.status(now)
        if not self.gpu.available:
            gpu["capacity_bytes"] = self.config.gpu_capacity
        any_up = any(b["up"] for b in backends.values())
        return web.json_response({
            "status": "ok" if all(b["up"] for b in backends.values()) else "degraded" if any_up else "down",
            "backends": backends, "gpu": gpu, "local_reserved_bytes": self.view.local_reserved,
        }, status=200 if any_up else 503)

    async def metrics_page(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.expose(), headers={"Content-Type": CONTENT_TYPE})

    # --- forwarding -------------------------------------------------------------------

    async def _complete(self, request: web.Request, endpoint: str, path: str) -> web.StreamResponse:
        started = time.perf_counter()
        body = inbound.parse_body(await request.read())
        task = inbound.task_of(body, "chat" if endpoint == "chat" else "text", request.headers)
        stream = body.get("stream") is True
        deadline = time.monotonic() + self.settings.timeout
        failed: set[str] = set()
        last_error = "no backend tried"
        retry_after = 0.0
        rounds = 0
        previous: str | None = None
        while True:
            if failed:
                # The same rules, with the backends that failed this request counted as down.
                view = replace(self.view, local_up=self.view.local_up and LOCAL not in failed,
                               cloud_up=self.view.cloud_up and CLOUD not in failed)
                decision = self.select_backend(task, view)
            else:
                decision = self.select_backend(task)
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
                continue
            if previous is not None and previous != backend:
                self.metrics.failovers[previous, backend].inc()
            previous = backend
            outcome = await self._attempt(request, endpoint, path, body, task, decision, stream, deadline, started)
            if isinstance(outcome, web.StreamResponse):
                return outcome
            cause, last_error, wait = outcome
            self._failed(backend, cause, last_error)
            failed.add(backend)
            retry_after = max(retry_after, wait)
            if time.monotonic() >= deadline:
                return self._unavailable(endpoint, decision, last_error, started)

    async def _attempt(self, request, endpoint, path, body, task, decision, stream, deadline, started):
        """One try on one backend: the client's response, or (cause, error, retry_after) to go on."""
        backend = decision.backend
        reserved = policy.reservation(self.config, decision, task)
        self._last_traffic[backend] = time.monotonic()
        if backend == LOCAL:
            self.view.local_inflight += 1
            self.view.local_reserved += reserved
        else:
            self._cloud_inflight += 1
        remaining = max(0.001, min(deadline - time.monotonic(), self.settings.attempt_timeout))
        timeout = aiohttp.ClientTimeout(total=None if stream else remaining,
                                        connect=min(remaining, self.settings.connect_timeout),
                                        sock_read=self.settings.stream_idle_timeout if stream else remaining)
        headers = {"X-Agentkit-Backend": backend, "X-Agentkit-Model": decision.model,
                   "X-Agentkit-Reason": decision.reason, "X-Agentkit-Score": f"{decision.score:.3f}"}
        try:
            try:
                posting = self.session.post(self.urls[backend] + path, data=inbound.forwarded(body, decision.model),
                                            headers=self._headers[backend], timeout=timeout, allow_redirects=False)
                # A stream has no total timeout: bound the wait for its headers here.
                resp = await (asyncio.wait_for(posting, remaining) if stream else posting)
            except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                return _cause(exc), f"{backend}: {_describe(exc)}", 0.0
            async with resp:
                if resp.status in RETRYABLE_STATUS:
                    await _drain(resp)
                    wait = _retry_after(resp.headers.get("Retry-After"))
                    return ("http_429" if resp.status == 429 else "http_5xx",
                            f"{backend}: HTTP {resp.status} from {self.urls[backend]}{path}", wait)
                headers["Content-Type"] = resp.headers.get("Content-Type", "application/json")
                if not stream or resp.status != 200:
                    try:
                        data = await resp.read()
                    except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                        return _cause(exc), f"{backend}: {_describe(exc)}", 0.0
                    self.breakers[backend].success()
                    out = web.Response(body=data, status=resp.status, headers=headers)
                    self._done(endpoint, backend, resp.status, started)
                    return out
                return await self._stream(request, resp, endpoint, backend, headers, started, remaining)
        finally:
            if backend == LOCAL:
                self.view.local_inflight -= 1
                self.view.local_reserved -= reserved
            else:
                self._cloud_inflight -= 1

    async def _stream(self, request, resp, endpoint, backend, headers, started, first_wait):
        """Pass a 200 stream through; from the first byte on there is no going back."""
        headers["Cache-Control"] = "no-cache"
        out = web.StreamResponse(status=200, headers=headers)
        chunks = resp.content.iter_any()
        try:
            first = await asyncio.wait_for(chunks.__anext__(), first_wait)
        except StopAsyncIteration:
            first = b""
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            return _cause(exc), f"{backend}: {_describe(exc)} before the first byte", 0.0
        await out.prepare(request)
        try:
            if first:
                await out.write(first)
            # From here the session's sock_read (stream_idle_timeout) bounds every wait.
            async for chunk in chunks:
                await out.write(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            # Bytes went out already: cut the client's stream so it knows, and don't retry.
            self._failed(backend, "broken", f"{backend}: stream broke: {_describe(exc)}")
            self._done(endpoint, backend, 502, started)
            request.transport.close() if request.transport is not None else None
            return out
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


def read_key(path: str | None) -> str | None:
    """The cloud key: --cloud-api-key-file, else the credential systemd passed (LoadCredential=)."""
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory or not os.path.exists(os.path.join(directory, CREDENTIAL)):
            return None
        path = os.path.join(directory, CREDENTIAL)
    with open(path, encoding="utf-8") as handle:
        key = handle.read().strip()
    return key or None
