"""Failover end to end: agentkit-router (a real process) in front of three stand-in backends, through the
official openai client (max_retries=0, so every retry seen is the router's own).

The backends (tests/router/standin.py, on threads of this process, loopback only): two local ones, the
router's own `local` and the peer `pc2`, and the `cloud`. Each says who answered (the reply text starts
with "<name>: "), and the router says where it sent a request (the X-Agentkit-Backend header, read
through with_raw_response). The routing, fixed by the rule table:

    simple_chat  0.2   light: local (least loaded local with room), fails over to pc2, then the cloud
    batch        pc2   a fixed backend: pc2, fails over to local (the least loaded other local)
    code_gen...  0.9   heavy: the cloud, fails over to local (cloud_down)

For each kind of backend and each way of failing -- down (connection refused), 5xx, 429 with
Retry-After, a hang before the first byte (not streamed: --attempt-timeout; streamed:
--first-byte-timeout), a connection dropped before any answer, a stream cut midway -- the tests check
where each request went, that none is lost (every one answered 200, except the stream cut midway, which
the client sees as an error and which is never retried), what /health and /metrics say of the circuit,
and that the backend takes work again once it is back.

Every wait is bounded (helpers.wait_for, client timeouts); every router and stand-in is stopped by a
fixture, also when a test fails.
"""

from __future__ import annotations

import concurrent.futures
import os
import time
from pathlib import Path

import openai
import pytest

from .conftest import fail_or_skip
from .standin import StandinBackend
from .test_router import ROUTER, RouterProcess
from helpers import wait_for


ATTEMPT_TIMEOUT = 0.6  # --attempt-timeout: a request that is not streamed
FIRST_BYTE_TIMEOUT = 0.25  # --first-byte-timeout: a stream's first chunk
BREAKER_FAILURES = 2  # --breaker-failures
BREAKER_OPEN = 5.0  # --breaker-open: longer than any test, so an open circuit stays open until a probe answers
PROBE_INTERVAL = 0.05  # --probe-interval
SLACK = 0.4  # what a failover may add to a timeout on a loaded test machine

LIGHT, FIXED, HEAVY = "simple_chat", "batch", "code_generation"
TASK_OF = {"local": LIGHT, "pc2": FIXED, "cloud": HEAVY}  # the task each backend serves first
FAILS_OVER_TO = {"local": "pc2", "pc2": "local", "cloud": "local"}
REASON = {"local": "light_task", "pc2": "rule", "cloud": "heavy_task"}
FAILOVER_REASON = {"local": "light_task", "pc2": "rule", "cloud": "cloud_down"}
COMPLETIONS = ("/v1/chat/completions", "/v1/completions")


class Router(RouterProcess):
    """agentkit-router as in test_router.py, without NVML (an empty LD_LIBRARY_PATH first): the decision
    uses the configured GPU capacity."""

    def __init__(self, args: list[str], tmp: Path):
        super().__init__(args, {"LD_LIBRARY_PATH": str(tmp / "no-nvml")}, tmp)

    def health(self, backend: str) -> dict:
        return self.get("/health")["backends"][backend]


def sample(metrics: dict, name: str, **labels) -> float:
    return metrics.get((name, tuple(sorted(labels.items()))), 0.0)


def failovers(router: Router, source: str, target: str) -> float:
    return sample(router.metrics(), "agentkit_router_failovers_total", from_backend=source, to_backend=target)


@pytest.fixture
def backends():
    """The three stand-ins: {name: StandinBackend}, all up and answering."""
    started = {}
    try:
        for name in ("local", "pc2", "cloud"):
            started[name] = StandinBackend(name).start()
        yield started
    finally:
        for backend in started.values():
            backend.close()


@pytest.fixture
def start_router(tmp_path, backends):
    """Start agentkit-router in front of the three stand-ins; `extra` flags win over the defaults here."""
    routers: list[Router] = []

    def start(*extra: str, pc2: str = "max_inflight=4") -> Router:
        args = ["--local-url", backends["local"].url, "--local-model", "local-8b",
                "--peer", f"pc2 url={backends['pc2'].url} {pc2}; pc2-8b",
                "--cloud-url", backends["cloud"].url, "--cloud-model", "cloud-large",
                "--rule", f"{LIGHT}=0.2", "--rule", f"{FIXED}=pc2", "--rule", f"{HEAVY}=0.9",
                "--probe-interval", f"{PROBE_INTERVAL * 1000:g}ms", "--breaker-failures", str(BREAKER_FAILURES),
                "--breaker-open", f"{BREAKER_OPEN:g}s", "--timeout", "5s",
                "--attempt-timeout", f"{ATTEMPT_TIMEOUT * 1000:g}ms",
                "--first-byte-timeout", f"{FIRST_BYTE_TIMEOUT * 1000:g}ms"]
        router = Router(args + list(extra), tmp_path)
        routers.append(router)
        wait_for(lambda: router.get("/health")["status"] == "ok", "every backend up")
        return router

    yield start
    for router in routers:
        router.close()


class Answer:
    """One answered request: who the router says it sent it to, why, the reply's text and its time."""

    def __init__(self, backend: str, reason: str, text: str, seconds: float):
        self.backend, self.reason, self.text, self.seconds = backend, reason, text, seconds

    def __repr__(self) -> str:
        return f"Answer({self.backend}, {self.reason}, {self.text!r}, {self.seconds:.3f} s)"


def ask(client: openai.OpenAI, task_type: str, content: str = "hello", *, stream: bool = False) -> Answer:
    """One chat completion through the official client; a stream is read to its end."""
    started = time.monotonic()
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": content}], metadata={"task_type": task_type},
        stream=stream)
    reply = raw.parse()
    if stream:
        text = "".join(chunk.choices[0].delta.content or "" for chunk in reply if chunk.choices)
    else:
        text = reply.choices[0].message.content
    return Answer(raw.headers["x-agentkit-backend"], raw.headers["x-agentkit-reason"], text,
                  time.monotonic() - started)


def completions_at(backend: StandinBackend) -> int:
    return sum(1 for r in list(backend.requests) if r["path"] in COMPLETIONS)


def fail(backend: StandinBackend, mode: str) -> None:
    if mode == "down":
        backend.stop()
    elif mode == "5xx":
        backend.set_mode("error", status=503)
    elif mode == "429":
        backend.set_mode("ratelimit", retry_after=30)
    elif mode in ("hang", "hang-stream"):
        backend.set_mode("hang")
    elif mode == "drop":
        backend.set_mode("drop-midstream")  # not streamed: the connection closes with no answer at all
    else:
        raise ValueError(mode)


# mode -> (the cause the router counts, what /health's last_error says: a request's error or, once the
# circuit is open, its probe's)
CAUSES = {
    "down": ("connect", ("Cannot connect",)),
    "5xx": ("http_5xx", ("HTTP 503",)),
    "429": ("http_429", ("HTTP 429",)),
    "hang": ("timeout", (f"no first byte within {ATTEMPT_TIMEOUT:g} s", "probe: timed out")),
    "hang-stream": ("timeout", (f"no first byte within {FIRST_BYTE_TIMEOUT:g} s", "probe: timed out")),
    "drop": ("broken", ("ServerDisconnectedError",)),
}


@pytest.mark.parametrize("mode", list(CAUSES))
@pytest.mark.parametrize("failing", ["local", "pc2", "cloud"])
def test_a_failing_backend_loses_no_request(start_router, backends, failing, mode):
    router = start_router()
    client = router.client()
    target = FAILS_OVER_TO[failing]
    task = TASK_OF[failing]
    stream = mode == "hang-stream"
    backend = backends[failing]
    first = ask(client, task, "before", stream=stream)
    assert (first.backend, first.reason, first.text) == (failing, REASON[failing], f"{failing}: before")

    backend.clear_requests()
    fail(backend, mode)
    answers = [ask(client, task, f"request {i}", stream=stream) for i in range(BREAKER_FAILURES + 2)]
    # None lost: each answered 200 (the client raises otherwise), whole, by the backend it fails over to.
    assert [(a.backend, a.reason, a.text) for a in answers] == [
        (target, FAILOVER_REASON[failing], f"{target}: request {i}") for i in range(len(answers))], answers
    if mode.startswith("hang"):
        # The first one waited: at most the attempt's timeout (the first byte's, for a stream); less when
        # the stalled attempt's probes opened the circuit first (which gives the waiting attempts up).
        timeout = FIRST_BYTE_TIMEOUT if stream else ATTEMPT_TIMEOUT
        assert min(timeout, 2 * PROBE_INTERVAL) <= answers[0].seconds < timeout + SLACK, answers
    else:
        # ...the others moved at once: no wait on a refused connection, an error, or a Retry-After of 30 s.
        assert answers[0].seconds < SLACK, answers
    # ...and once the circuit opened, nothing waits: the backend is skipped.
    assert answers[-1].seconds < SLACK, answers

    cause, errors = CAUSES[mode]
    health = wait_for(lambda: (h := router.health(failing))["state"] == "open" and h,
                      f"{failing}'s circuit to open")
    assert health["up"] is False and any(e in health["last_error"] for e in errors), health
    assert 0 < health["retry_in_seconds"] <= BREAKER_OPEN and health["open_for_seconds"] == BREAKER_OPEN, health
    assert router.get("/health")["status"] == "degraded"
    metrics = router.metrics()
    assert sample(metrics, "agentkit_router_backend_state", backend=failing, state="open") == 1
    assert sample(metrics, "agentkit_router_backend_state", backend=failing, state="closed") == 0
    assert 0 < sample(metrics, "agentkit_router_backend_cooldown_seconds", backend=failing) <= BREAKER_OPEN
    assert sample(metrics, "agentkit_router_backend_cooldown_seconds", backend=target) == 0
    assert sample(metrics, "agentkit_router_backend_up", backend=failing) == 0
    assert sample(metrics, "agentkit_router_backend_failures_total", backend=failing, cause=cause) >= BREAKER_FAILURES
    moved = sample(metrics, "agentkit_router_failovers_total", from_backend=failing, to_backend=target)
    if mode == "down":
        assert 1 <= moved <= BREAKER_FAILURES
    else:
        # Each request the failing backend got (and failed) moved on once; none was sent to it twice.
        assert moved == completions_at(backend) and 1 <= moved <= BREAKER_FAILURES, (moved, backend.requests)
    assert sum(sample(metrics, "agentkit_router_failovers_total", from_backend=failing, to_backend=other)
               for other in backends if other not in (failing, target)) == 0
    assert sample(metrics, "agentkit_router_responses_total", endpoint="chat", backend=target,
                  code="200") == len(answers)
    assert sum(v for (name, labels), v in metrics.items() if name == "agentkit_router_responses_total"
               and dict(labels)["code"] != "200") == 0  # no 5xx went to the client

    # Back: the probes (GET /v1/models) close the circuit at once, without waiting out the cooldown.
    backend.set_mode("ok")
    backend.start()
    wait_for(lambda: router.health(failing)["state"] == "closed", f"{failing}'s circuit to close", timeout=3)
    again = ask(client, task, "again", stream=stream)
    assert (again.backend, again.text) == (failing, f"{failing}: again")
    metrics = router.metrics()
    assert sample(metrics, "agentkit_router_backend_state", backend=failing, state="closed") == 1
    assert sample(metrics, "agentkit_router_backend_cooldown_seconds", backend=failing) == 0


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What iterating a cut stream raises: openai's APIConnectionError, or the HTTP library's own error."""
    errors: list[type[BaseException]] = [openai.APIError]
    for name in ("httpx", "httpx2"):
        try:
            errors.append(__import__(name).TransportError)
        except ImportError:
            pass
    return tuple(errors)


@pytest.mark.parametrize("failing", ["local", "pc2", "cloud"])
def test_a_stream_cut_midway_is_cut_for_the_client_and_never_retried(start_router, backends, failing):
    """The backend sends its first chunk, then closes the connection: the router passed that chunk on, so
    it cannot fail over; it must cut the client's stream (an error, not a stream that just ends early)."""
    router = start_router()
    client = router.client()
    backend = backends[failing]
    for b in backends.values():
        b.clear_requests()
    backend.set_mode("drop-midstream")
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": "one two three four"}],
        metadata={"task_type": TASK_OF[failing]}, stream=True)
    assert raw.headers["x-agentkit-backend"] == failing
    chunks = []
    with pytest.raises(_stream_errors()):
        for chunk in raw.parse():
            chunks.append(chunk)
    # What came is the failing backend's first chunk (the assistant's role) and nothing else, nobody else's.
    assert len(chunks) == 1 and chunks[0].choices[0].delta.role == "assistant", chunks
    assert not (chunks[0].choices[0].delta.content or "")
    assert completions_at(backend) == 1  # sent once, never again
    assert [completions_at(b) for name, b in backends.items() if name != failing] == [0, 0]
    metrics = wait_for(lambda: (m := router.metrics()) and sample(
        m, "agentkit_router_responses_total", endpoint="chat", backend=failing, code="502") == 1 and m,
        "the cut stream in /metrics")
    # (a probe of the backend, GET /v1/models, may have been dropped too: at least the stream's failure)
    assert sample(metrics, "agentkit_router_backend_failures_total", backend=failing, cause="broken") >= 1
    assert sum(sample(metrics, "agentkit_router_failovers_total", from_backend=failing, to_backend=other)
               for other in backends if other != failing) == 0
    assert sample(metrics, "agentkit_router_retries_total") == 0
    assert sum(sample(metrics, "agentkit_router_responses_total", endpoint="chat", backend=other, code="200")
               for other in backends) == 0
    # The router is fine, and so is the backend once it answers whole again.
    backend.set_mode("ok")
    wait_for(lambda: router.health(failing)["state"] == "closed", f"{failing}'s circuit closed", timeout=3)
    assert ask(client, TASK_OF[failing], "whole", stream=True).text == f"{failing}: whole"


def test_a_request_fails_over_local_then_pc2_then_the_cloud(start_router, backends):
    router = start_router("--breaker-failures", "100")  # no circuit opens: each request tries them all
    client = router.client()
    backends["local"].set_mode("error", status=500)
    backends["pc2"].set_mode("error", status=502)
    answer = ask(client, LIGHT, "down the line")
    assert (answer.backend, answer.reason, answer.text) == ("cloud", "local_down", "cloud: down the line")
    assert failovers(router, "local", "pc2") == 1 and failovers(router, "pc2", "cloud") == 1
    assert completions_at(backends["local"]) == completions_at(backends["pc2"]) == 1
    # A heavy task with the cloud down too: the cloud, then a local backend... that fails, then the other.
    backends["cloud"].stop()
    backends["pc2"].set_mode("ok")
    answer = ask(client, HEAVY, "heavy")
    assert (answer.backend, answer.reason, answer.text) == ("pc2", "cloud_down", "pc2: heavy")
    assert failovers(router, "cloud", "local") == 1 and failovers(router, "local", "pc2") == 2


def test_the_cloud_down_sends_heavy_work_to_a_local_backend(start_router, backends):
    router = start_router()
    client = router.client()
    assert ask(client, HEAVY).backend == "cloud"
    backends["cloud"].stop()
    answers = [ask(client, HEAVY, f"heavy {i}") for i in range(4)]
    assert [(a.backend, a.reason, a.text) for a in answers] == [
        ("local", "cloud_down", f"local: heavy {i}") for i in range(4)]
    wait_for(lambda: router.health("cloud")["state"] == "open", "the cloud's circuit to open")
    assert 1 <= failovers(router, "cloud", "local") <= BREAKER_FAILURES
    # With the cloud's circuit open, light work still goes local, and the decision says why heavy work does.
    assert ask(client, LIGHT).reason == "light_task"
    backends["cloud"].start()
    wait_for(lambda: router.health("cloud")["state"] == "closed", "the cloud's circuit to close", timeout=3)
    assert ask(client, HEAVY, "back").text == "cloud: back"


# --- load: in flight, the peers' own signals ---------------------------------------------------------

def hold(pool, client, task_type: str, backend: StandinBackend, count: int) -> concurrent.futures.Future:
    """One request the stand-in holds; returns once `count` are held there."""
    future = pool.submit(ask, client, task_type, "HOLD")
    wait_for(lambda: backend.held >= count or future.done(), f"{count} requests held on {backend.name}")
    assert not future.done(), future.result()
    return future


@pytest.fixture
def pool(backends):
    executor = concurrent.futures.ThreadPoolExecutor(max_workers=8, thread_name_prefix="failover-test")
    try:
        yield executor
    finally:
        for backend in backends.values():
            backend.release()
        executor.shutdown(wait=True, cancel_futures=True)


def test_work_goes_to_the_least_loaded_local_backend(start_router, backends, pool):
    """local and pc2 both take 4 at once: held requests spread over both, one each in turn."""
    router = start_router("--local-max-inflight", "4")
    client = router.client()
    local, pc2 = backends["local"], backends["pc2"]
    local.hold()
    pc2.hold()
    held = []
    for i in range(4):
        held.append(pool.submit(ask, client, LIGHT, f"HOLD {i}"))
        wait_for(lambda: local.held + pc2.held == i + 1, f"{i + 1} requests held")
        # Ties go to the router's own backend; else to the one with fewer in flight.
        assert (local.held, pc2.held) == ((i + 2) // 2, (i + 1) // 2), f"request {i}"
    health = router.get("/health")["backends"]
    assert (health["local"]["inflight"], health["pc2"]["inflight"]) == (2, 2)
    local.release()
    pc2.release()
    answers = [f.result(timeout=10) for f in held]
    assert sorted(a.backend for a in answers) == ["local", "local", "pc2", "pc2"]
    assert all(a.text == f"{a.backend}: HOLD {i}" for i, a in enumerate(answers))


def test_the_in_flight_limits_overflow_to_pc2_then_the_cloud(start_router, backends, pool):
    router = start_router("--local-max-inflight", "2", pc2="max_inflight=2")
    client = router.client()
    local, pc2 = backends["local"], backends["pc2"]
    local.hold()
    pc2.hold()
    held = [hold(pool, client, LIGHT, local, 1)]
    held += [pool.submit(ask, client, LIGHT, f"HOLD {i}") for i in range(3)]
    wait_for(lambda: (local.held, pc2.held) == (2, 2), "2 requests held on each local backend")
    overflow = [ask(client, LIGHT, f"overflow {i}") for i in range(3)]
    assert [(a.backend, a.reason, a.text) for a in overflow] == [
        ("cloud", "local_busy", f"cloud: overflow {i}") for i in range(3)]
    health = router.get("/health")["backends"]
    assert [health[name]["inflight"] for name in ("local", "pc2")] == [2, 2]
    assert [health[name]["max_inflight"] for name in ("local", "pc2")] == [2, 2]
    metrics = router.metrics()
    assert sample(metrics, "agentkit_router_inflight", backend="local") == 2
    assert sample(metrics, "agentkit_router_decisions_total", backend="cloud", reason="local_busy") == 3
    # Room on pc2 again: light work goes back local, to the one with room.
    pc2.release()
    wait_for(lambda: router.health("pc2")["inflight"] == 0, "pc2's requests to finish")
    assert ask(client, LIGHT, "room").backend == "pc2"
    local.release()
    answers = [f.result(timeout=10) for f in held]
    assert sorted(a.backend for a in answers) == ["local", "local", "pc2", "pc2"]
    assert ask(client, LIGHT, "idle").backend == "local"


@pytest.mark.parametrize("signal_", ["slots", "metrics"])
def test_a_peer_saying_it_is_full_gets_no_more_work(start_router, backends, pool, signal_):
    """pc2's own load signal (llama.cpp's /slots, or /metrics' requests_deferred) says full while the
    router itself has room left there (max_inflight=4): work for pc2 goes to the other local backend."""
    router = start_router(pc2=f"max_inflight=4 load={signal_}")
    client = router.client()
    pc2 = backends["pc2"]
    held = []
    if signal_ == "slots":
        pc2.set_slots(1)  # one slot; a request held on it keeps it busy
        pc2.hold()
        held.append(hold(pool, client, FIXED, pc2, 1))
    else:
        assert ask(client, FIXED).backend == "pc2"
        pc2.set_metrics(deferred=2)
    health = wait_for(lambda: (h := router.health("pc2"))["full"] and h, "the router to see pc2 full")
    assert health["load"]["signal"] == signal_ and health["load"]["error"] is None, health
    if signal_ == "slots":
        assert (health["load"]["busy_slots"], health["load"]["slots"]) == (1, 1)
    else:
        assert health["load"]["queued"] == 2
    assert sample(router.metrics(), "agentkit_router_backend_full", backend="pc2") == 1
    answers = [ask(client, FIXED, f"elsewhere {i}") for i in range(3)]
    assert [(a.backend, a.text) for a in answers] == [("local", f"local: elsewhere {i}") for i in range(3)]
    assert router.health("pc2")["state"] == "closed"  # full is not down
    # Not full any more: pc2 again.
    pc2.release()
    pc2.set_metrics()
    wait_for(lambda: not router.health("pc2")["full"], "the router to see pc2 with room")
    assert ask(client, FIXED, "room").text == "pc2: room"
    assert all(f.result(timeout=10).backend == "pc2" for f in held)


# --- the first byte: its timeout, and hedging ---------------------------------------------------------

def test_a_stream_fails_over_after_the_first_byte_timeout_not_the_attempt_timeout(start_router, backends):
    router = start_router("--first-byte-timeout", "500ms", "--attempt-timeout", "30s",
                          "--breaker-failures", "1000")
    client = router.client()
    backends["local"].set_mode("hang")
    answers = [ask(client, LIGHT, f"stream {i}", stream=True) for i in range(3)]
    assert [(a.backend, a.text) for a in answers] == [("pc2", f"pc2: stream {i}") for i in range(3)]
    for a in answers:
        assert 0.5 <= a.seconds < 0.5 + SLACK, answers
    metrics = router.metrics()
    assert sample(metrics, "agentkit_router_failovers_total", from_backend="local", to_backend="pc2") == 3
    assert sample(metrics, "agentkit_router_backend_failures_total", backend="local", cause="timeout") >= 3
    assert completions_at(backends["local"]) == 3


def test_requests_waiting_on_a_hung_backend_fail_over_when_its_circuit_opens(start_router, backends):
    """Long timeouts: the attempts stalled on a hung local get it probed; when the probes time out too its
    circuit opens, and the requests waiting there move on at once, not at their 10 s timeouts."""
    router = start_router("--attempt-timeout", "10s", "--first-byte-timeout", "10s")
    client = router.client()
    backends["local"].set_mode("hang")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        waiting = [pool.submit(ask, client, LIGHT, f"waiting {i}", stream=i == 1) for i in range(2)]
        answers = [f.result(timeout=10) for f in waiting]
    assert sorted((a.backend, a.text) for a in answers) == [("pc2", "pc2: waiting 0"), ("pc2", "pc2: waiting 1")]
    assert all(a.seconds < 3 for a in answers), answers
    assert max(a.seconds for a in answers) >= 2 * PROBE_INTERVAL, answers  # one, at least, waited on local
    assert router.health("local")["state"] == "open"
    metrics = router.metrics()
    assert sample(metrics, "agentkit_router_failovers_total", from_backend="local", to_backend="pc2") >= 1
    assert sample(metrics, "agentkit_router_backend_failures_total", backend="local", cause="timeout") >= 2


def test_hedging_answers_from_pc2_after_hedge_after(start_router, backends):
    router = start_router("--hedge-after", "200ms", "--first-byte-timeout", "2s", "--attempt-timeout", "2s",
                          "--breaker-failures", "1000")
    client = router.client()
    local = backends["local"]
    assert ask(client, LIGHT, "quick").backend == "local"  # a first byte in time: no hedge
    assert sample(router.metrics(), "agentkit_router_hedges_total", from_backend="local", to_backend="pc2") == 0
    local.clear_requests()
    local.set_mode("hang")
    answers = [ask(client, LIGHT, f"hedged {i}", stream=True) for i in range(4)]
    assert [(a.backend, a.text) for a in answers] == [("pc2", f"pc2: hedged {i}") for i in range(4)]
    for a in answers:
        assert 0.2 <= a.seconds < 0.2 + SLACK, answers  # hedge_after, far from the 2 s timeouts
    metrics = router.metrics()
    assert sample(metrics, "agentkit_router_hedges_total", from_backend="local", to_backend="pc2") == 4
    assert sample(metrics, "agentkit_router_failovers_total", from_backend="local", to_backend="pc2") == 0
    assert completions_at(local) == 4  # each tried there first, once
    # Not streamed: its first byte is its whole answer, so no hedge (a generation longer than hedge_after
    # would be sent twice); it fails over at its attempt timeout instead.
    late = ask(client, LIGHT, "not hedged")
    assert (late.backend, late.text) == ("pc2", "pc2: not hedged") and 2.0 <= late.seconds < 2.0 + SLACK, late
    assert sample(router.metrics(), "agentkit_router_hedges_total", from_backend="local", to_backend="pc2") == 4
    # The losing attempts were given up: nothing is left in flight on local.
    wait_for(lambda: router.health("local")["inflight"] == 0 and local.inflight == 0, "the hung attempts to go")


if not ROUTER.exists() and not os.environ.get("VIRTUAL_ENV"):
    fail_or_skip("agentkit-router is not installed: run ./dev test")
