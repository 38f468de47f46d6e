"""Tests of the stand-in OpenAI-compatible backend (tests/router/standin.py),
with the official openai client and aiohttp's client against a started backend.

Every wait is bounded in time; every backend thread, client, thread pool and
process is cleaned up by a fixture or a finally, also when a test fails.
"""

from __future__ import annotations

import asyncio
import json
import queue
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import aiohttp
import openai
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import standin  # noqa: E402
from standin import StandinBackend  # noqa: E402
from helpers import wait_for

KEY = "sk-standin-test"
WAIT = 10.0  # upper bound on any wait in these tests, in seconds


def _stream_errors() -> tuple[type[BaseException], ...]:
    """What iterating a stream cut short raises: openai wraps it in
    APIConnectionError; older clients let the HTTP library's error through."""
    errors: list[type[BaseException]] = [openai.APIConnectionError]
    for name in ("httpx", "httpx2"):
        try:
            module = __import__(name)
        except ImportError:
            continue
        errors.append(module.TransportError)
    return tuple(errors)


def run(coro: Any, timeout: float = WAIT) -> Any:
    """Run an aiohttp-client coroutine on a fresh loop, bounded."""
    async def bounded() -> Any:
        return await asyncio.wait_for(coro, timeout)
    return asyncio.run(bounded())


def chat(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="test-model", messages=[{"role": "user", "content": text}], **kwargs)


# ----------------------------------------------------------------- fixtures

@pytest.fixture
def backend():
    b = StandinBackend("local")
    try:
        yield b.start()
    finally:
        b.close()


def make_client(backend: StandinBackend, timeout: float = WAIT) -> openai.OpenAI:
    return openai.OpenAI(base_url=backend.url, api_key=KEY, max_retries=0, timeout=timeout)


@pytest.fixture
def client(backend):
    c = make_client(backend)
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def pool():
    # Requests running here all have client timeouts, and the backend fixture
    # (torn down after this one) resets their connections: none outlive the test.
    executor = ThreadPoolExecutor(max_workers=8, thread_name_prefix="standin-test")
    try:
        yield executor
    finally:
        executor.shutdown(wait=False, cancel_futures=True)


# ------------------------------------------------------------ the endpoints

def test_chat_non_stream(backend, client):
    raw = client.chat.completions.with_raw_response.create(
        model="some-model",
        messages=[{"role": "system", "content": "be brief"},
                  {"role": "user", "content": "first question"},
                  {"role": "assistant", "content": "an answer"},
                  {"role": "user", "content": "hello there"}])
    assert raw.headers["x-standin-backend"] == "local"
    reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "some-model"
    assert isinstance(reply.created, int)
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "local: hello there"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens

    [seen] = backend.requests
    assert seen["path"] == "/v1/chat/completions"
    assert seen["json"]["model"] == "some-model"
    assert seen["json"]["messages"][-1]["content"] == "hello there"
    assert seen["headers"]["authorization"] == f"Bearer {KEY}"
    backend.clear_requests()
    assert backend.requests == []


def test_chat_truncates_and_reads_text_parts(client):
    long = "x" * 150 + " " + "y" * 300
    assert chat(client, long).choices[0].message.content == "local: " + long[:200]
    parts = client.chat.completions.create(model="m", messages=[
        {"role": "user", "content": [{"type": "text", "text": "part one"},
                                     {"type": "text", "text": "part two"}]}])
    assert parts.choices[0].message.content == "local: part one part two"


def test_chat_stream(client):
    chunks = list(chat(client, "hello streaming world", stream=True))
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert len({c.id for c in chunks}) == 1
    assert chunks[0].choices[0].delta.role == "assistant"
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(pieces) >= 3
    assert "".join(pieces) == "local: hello streaming world"
    assert chunks[-1].choices[0].finish_reason == "stop"
    assert [c.choices[0].finish_reason for c in chunks[:-1]] == [None] * (len(chunks) - 1)


def test_chat_stream_short_reply_still_three_pieces(client):
    chunks = list(chat(client, "", stream=True))
    pieces = [c.choices[0].delta.content for c in chunks[1:-1]]
    assert len(pieces) >= 3 and "".join(pieces) == "local: "


def test_chat_stream_include_usage(client):
    chunks = list(chat(client, "count me", stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].choices == []
    assert chunks[-1].usage.completion_tokens > 0
    assert all(c.usage is None for c in chunks[:-1])


def test_stream_wire_format(backend):
    async def go() -> tuple[int, dict[str, str], bytes]:
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{backend.url}/chat/completions", json={
                    "model": "m", "stream": True,
                    "messages": [{"role": "user", "content": "a b c"}]}) as response:
                return response.status, dict(response.headers), await response.read()

    status, headers, body = run(go())
    assert status == 200
    assert headers["Content-Type"].startswith("text/event-stream")
    assert headers["X-Standin-Backend"] == "local"
    events = body.decode().split("\n\n")
    assert events[-1] == "" and events[-2] == "data: [DONE]"
    assert all(e.startswith("data: ") for e in events[:-1])
    for event in events[:-2]:
        assert json.loads(event[len("data: "):])["object"] == "chat.completion.chunk"


def test_completions_non_stream(backend, client):
    raw = client.completions.with_raw_response.create(model="text-model", prompt="once upon")
    assert raw.headers["x-standin-backend"] == "local"
    reply = raw.parse()
    assert reply.object == "text_completion"
    assert reply.model == "text-model"
    assert reply.choices[0].text == "local: once upon"
    assert reply.choices[0].finish_reason == "stop"
    assert backend.requests[-1]["path"] == "/v1/completions"
    assert backend.requests[-1]["json"]["prompt"] == "once upon"


def test_completions_stream(client):
    chunks = list(client.completions.create(model="m", prompt="a time there was", stream=True))
    assert all(c.object == "text_completion" for c in chunks)
    texts = [c.choices[0].text for c in chunks]
    assert len([t for t in texts if t]) >= 3
    assert "".join(texts) == "local: a time there was"
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_models(backend, client):
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-standin-backend"] == "local"
    models = raw.parse().data
    assert [(m.id, m.owned_by) for m in models] == [("local-model", "local")]
    assert backend.requests[-1]["path"] == "/v1/models"
    assert backend.requests[-1]["json"] is None


def test_bad_requests_get_openai_errors(backend):
    async def go() -> list[tuple[int, str, Any]]:
        results = []
        async with aiohttp.ClientSession() as session:
            for method, path, data in [("POST", "/chat/completions", b"{not json"),
                                       ("POST", "/completions", b"[1, 2]"),
                                       ("POST", "/chat/completions", b'{"model": "m"}'),
                                       ("GET", "/chat/completions", None),
                                       ("GET", "/nowhere", None)]:
                async with session.request(method, backend.url + path, data=data) as r:
                    results.append((r.status, r.headers.get("X-Standin-Backend"), await r.json()))
        return results

    results = run(go())
    assert [status for status, _, _ in results] == [400, 400, 400, 405, 404]
    for _, who, body in results:
        assert who == "local"
        assert isinstance(body["error"]["message"], str) and body["error"]["type"]
    assert backend.requests[0]["json"] is None  # the unparseable body is still recorded


def test_bad_json_raises_bad_request_in_openai(backend, client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="m", messages=None)  # type: ignore[arg-type]


# -------------------------------------------------------------------- modes

def test_error_mode(backend, client):
    backend.set_mode("error")
    with pytest.raises(openai.InternalServerError) as caught:
        chat(client, "hi")
    assert caught.value.status_code == 500
    assert caught.value.response.headers["x-standin-backend"] == "local"
    assert caught.value.body["type"] == "server_error"

    backend.set_mode("error", status=503)
    with pytest.raises(openai.InternalServerError) as caught:
        client.models.list()  # the health probe sees it too
    assert caught.value.status_code == 503

    backend.set_mode("ok")
    assert chat(client, "hi").choices[0].message.content == "local: hi"


def test_ratelimit_mode(backend, client):
    backend.set_mode("ratelimit", retry_after=2)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(client, "hi")
    assert caught.value.response.headers["retry-after"] == "2"
    assert caught.value.response.headers["x-standin-backend"] == "local"

    backend.set_mode("ratelimit", retry_after=0.5)
    with pytest.raises(openai.RateLimitError) as caught:
        client.models.list()
    assert caught.value.response.headers["retry-after"] == "0.5"

    backend.set_mode("ratelimit")
    with pytest.raises(openai.RateLimitError) as caught:
        client.completions.create(model="m", prompt="p")
    assert "retry-after" not in caught.value.response.headers


def test_slow_mode(client, backend):
    backend.set_mode("ok", delay=0.3)
    started = time.monotonic()
    reply = chat(client, "take your time")
    assert time.monotonic() - started >= 0.3
    assert reply.choices[0].message.content == "local: take your time"

    started = time.monotonic()
    chunks = list(chat(client, "slow stream", stream=True))
    assert time.monotonic() - started >= 0.3
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_hang_mode_times_the_client_out(backend):
    backend.set_mode("hang")
    impatient = make_client(backend, timeout=0.5)
    try:
        with pytest.raises(openai.APITimeoutError):
            chat(impatient, "anyone?")
        with pytest.raises(openai.APITimeoutError):
            impatient.models.list()
    finally:
        impatient.close()


def test_hang_ends_when_mode_changes(backend, client, pool):
    backend.set_mode("hang")
    pending = pool.submit(chat, client, "wait for it")
    wait_for(lambda: len(backend.requests) == 1, "the request to arrive")
    time.sleep(0.1)
    assert not pending.done()
    backend.set_mode("ok")
    assert pending.result(WAIT).choices[0].message.content == "local: wait for it"


def test_hang_is_bounded(backend, client):
    backend.MAX_WAIT = 0.2  # the instance's own bound, 60 s by default
    backend.set_mode("hang")
    with pytest.raises(openai.APIStatusError) as caught:
        chat(client, "hello?")
    assert caught.value.status_code == 504


def test_drop_midstream_stream(backend, client):
    backend.set_mode("drop-midstream")
    received = []
    with pytest.raises(_stream_errors()):
        for chunk in chat(client, "you will not hear the end of this", stream=True):
            received.append(chunk)
    assert len(received) == 1 and received[0].choices[0].delta.role == "assistant"


def test_drop_midstream_wire(backend):
    backend.set_mode("drop-midstream")

    async def go() -> tuple[bytes, BaseException | None]:
        got = b""
        async with aiohttp.ClientSession() as session:
            async with session.post(f"{backend.url}/completions", json={
                    "model": "m", "prompt": "p q r", "stream": True}) as response:
                assert response.status == 200
                try:
                    async for data in response.content.iter_any():
                        got += data
                except aiohttp.ClientError as exc:
                    return got, exc
        return got, None

    got, error = run(go())
    assert isinstance(error, aiohttp.ClientPayloadError)
    events = [e for e in got.decode().split("\n\n") if e]
    assert len(events) == 1  # the first chunk, then nothing: no [DONE]
    assert json.loads(events[0][len("data: "):])["choices"][0]["text"]


def test_drop_midstream_non_stream_and_probe(backend, client):
    backend.set_mode("drop-midstream")
    with pytest.raises(openai.APIConnectionError):
        chat(client, "hi")
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    backend.set_mode("ok")
    assert chat(client, "hi").choices[0].message.content == "local: hi"


def test_set_mode_checks_its_arguments(backend):
    with pytest.raises(ValueError):
        backend.set_mode("sleepy")
    with pytest.raises(ValueError):
        backend.set_mode("ok", delay=-1)
    with pytest.raises(ValueError):
        backend.set_mode("error", status=200)
    with pytest.raises(ValueError):
        backend.set_mode("ratelimit", retry_after=-1)


# ------------------------------------------------------------------ up/down

def test_stop_refuses_then_start_again_on_same_port(backend, client):
    port, url = backend.port, backend.url
    assert port != 0 and url == f"http://127.0.0.1:{port}/v1"
    assert chat(client, "before").choices[0].message.content == "local: before"

    backend.stop()
    backend.stop()  # idempotent
    with pytest.raises(openai.APIConnectionError) as caught:
        chat(client, "while down")
    assert not isinstance(caught.value, openai.APITimeoutError)
    with pytest.raises(openai.APIConnectionError):
        client.models.list()

    backend.start()
    assert backend.port == port and backend.url == url
    assert chat(client, "after").choices[0].message.content == "local: after"


def test_stop_drops_open_connections(backend, client, pool):
    backend.set_mode("hang")
    pending = pool.submit(chat, client, "in flight")
    wait_for(lambda: len(backend.requests) == 1, "the request to arrive")
    started = time.monotonic()
    backend.stop()
    with pytest.raises(openai.APIConnectionError) as caught:
        pending.result(WAIT)
    assert not isinstance(caught.value, openai.APITimeoutError)  # reset, not left hanging
    assert time.monotonic() - started < WAIT


def test_close_is_idempotent_and_ends_the_thread():
    with StandinBackend("ctx") as b:
        assert b.port != 0
        names = {t.name for t in threading.enumerate()}
        assert "standin-ctx" in names
        b.close()
    b.close()
    assert "standin-ctx" not in {t.name for t in threading.enumerate()}

    async def probe() -> None:
        async with aiohttp.ClientSession() as session:
            async with session.get(f"{b.url}/models"):
                pass

    with pytest.raises(aiohttp.ClientConnectionError):
        run(probe())


def test_fixed_port_and_restart_after_close():
    first = StandinBackend("fixed").start()
    try:
        port = first.port
    finally:
        first.close()
    again = StandinBackend("fixed", port=port)
    try:
        again.start()
        assert again.port == port
        again.close()
        again.start()  # a closed backend starts a new thread
        c = make_client(again)
        try:
            assert c.models.list().data[0].id == "fixed-model"
        finally:
            c.close()
    finally:
        again.close()


# --------------------------------------------------------------------- hold

def test_hold_and_release(backend, client, pool):
    backend.hold()
    pending = [pool.submit(chat, client, f"HOLD number {i}") for i in range(3)]
    wait_for(lambda: backend.held == 3, "3 held requests")
    # Requests without the marker are not held.
    assert chat(client, "not me").choices[0].message.content == "local: not me"
    assert not any(f.done() for f in pending)
    assert backend.held == 3

    backend.release()
    answers = sorted(f.result(WAIT).choices[0].message.content for f in pending)
    assert answers == [f"local: HOLD number {i}" for i in range(3)]
    assert backend.held == 0
    # Released for good: new HOLD requests pass.
    assert chat(client, "HOLD no more").choices[0].message.content == "local: HOLD no more"


def test_hold_counts_only_waiting_requests(backend):
    backend.hold()
    impatient = make_client(backend, timeout=0.3)
    try:
        with pytest.raises(openai.APITimeoutError):
            impatient.completions.create(model="m", prompt="HOLD me")
    finally:
        impatient.close()
    wait_for(lambda: backend.held == 0, "the abandoned request to leave hold")


def test_stop_ends_held_requests(backend, client, pool):
    backend.hold()
    pending = pool.submit(chat, client, "HOLD on")
    wait_for(lambda: backend.held == 1, "1 held request")
    backend.stop()
    assert backend.held == 0
    with pytest.raises(openai.APIConnectionError):
        pending.result(WAIT)


# ------------------------------------------------------------- load signals

def _get(backend: StandinBackend, path: str) -> tuple[int, str, str]:
    """GET a root path (llama.cpp's /slots, /metrics): (status, Content-Type, body)."""
    async def go() -> tuple[int, str, str]:
        async with aiohttp.ClientSession() as session:
            async with session.get(backend.url.removesuffix("/v1") + path) as response:
                return response.status, response.headers.get("Content-Type", ""), await response.text()
    return run(go())


def _gauges(text: str) -> dict[str, float]:
    from prometheus_client.parser import text_string_to_metric_families

    return {s.name: s.value for family in text_string_to_metric_families(text) for s in family.samples}


def test_slots_and_metrics_follow_the_requests_in_flight(backend, client, pool):
    status, kind, body = _get(backend, "/slots")
    slots = json.loads(body)
    assert status == 200 and kind.startswith("application/json")
    assert len(slots) == standin.SLOTS and not any(s["is_processing"] for s in slots)
    assert [s["id"] for s in slots] == list(range(standin.SLOTS))
    assert all(s["n_ctx"] == standin.N_CTX and s["id_task"] == -1 for s in slots)
    status, kind, body = _get(backend, "/metrics")
    assert status == 200 and kind.startswith("text/plain")
    assert _gauges(body) == {"llamacpp:requests_processing": 0, "llamacpp:requests_deferred": 0}

    # Six requests held: four slots busy, two deferred.
    backend.hold()
    pending = [pool.submit(chat, client, f"HOLD {i}") for i in range(6)]
    wait_for(lambda: backend.held == 6, "6 held requests")
    assert backend.inflight == 6
    assert [s["is_processing"] for s in json.loads(_get(backend, "/slots")[2])] == [True] * 4
    assert _gauges(_get(backend, "/metrics")[2]) == {"llamacpp:requests_processing": 4,
                                                    "llamacpp:requests_deferred": 2}
    assert backend.load() == {"slots": 4, "busy": 4, "processing": 4, "deferred": 2}
    backend.set_slots(8)
    assert sum(s["is_processing"] for s in json.loads(_get(backend, "/slots")[2])) == 6
    assert _gauges(_get(backend, "/metrics")[2])["llamacpp:requests_deferred"] == 0
    backend.release()
    assert all(f.result(WAIT).choices[0].message.content.startswith("local: HOLD") for f in pending)
    wait_for(lambda: backend.inflight == 0, "nothing in flight")
    assert not any(s["is_processing"] for s in json.loads(_get(backend, "/slots")[2]))


def test_slots_and_metrics_can_be_set(backend):
    backend.set_slots(2, busy=2)
    assert [s["is_processing"] for s in json.loads(_get(backend, "/slots")[2])] == [True, True]
    assert _gauges(_get(backend, "/metrics")[2]) == {"llamacpp:requests_processing": 2,
                                                    "llamacpp:requests_deferred": 0}
    backend.set_metrics(deferred=3)
    assert _gauges(_get(backend, "/metrics")[2])["llamacpp:requests_deferred"] == 3
    backend.set_metrics(processing=7, deferred=0)
    assert _gauges(_get(backend, "/metrics")[2]) == {"llamacpp:requests_processing": 7,
                                                    "llamacpp:requests_deferred": 0}
    backend.set_slots(3, busy=1)
    assert [s["is_processing"] for s in json.loads(_get(backend, "/slots")[2])] == [True, False, False]
    backend.set_slots(0)
    assert json.loads(_get(backend, "/slots")[2]) == []
    for bad in (lambda: backend.set_slots(-1), lambda: backend.set_slots(2, busy=3),
                lambda: backend.set_slots(2, busy=-1), lambda: backend.set_metrics(deferred=-1)):
        with pytest.raises(ValueError):
            bad()
    # A mode applies to the load pages as to /v1/models: a poll sees what traffic sees.
    backend.set_mode("error", status=503)
    assert _get(backend, "/slots")[0] == 503 and _get(backend, "/metrics")[0] == 503
    backend.set_mode("ratelimit")
    assert _get(backend, "/slots")[0] == 429
    backend.set_mode("ok")
    assert _get(backend, "/slots")[0] == 200
    assert [r["path"] for r in backend.requests].count("/slots") == 6
    assert _get(backend, "/slots/0")[0] == 404


# ------------------------------------------------------------- concurrency

def test_concurrent_requests_are_all_recorded(backend, client, pool):
    results = list(pool.map(lambda i: chat(client, f"n{i}").choices[0].message.content,
                            range(40), timeout=WAIT))
    assert results == [f"local: n{i}" for i in range(40)]
    assert sorted(r["json"]["messages"][0]["content"] for r in backend.requests) == \
        sorted(f"n{i}" for i in range(40))


def test_instant_path_rate_on_one_connection(backend):
    """Measures (prints) the instant path's rate on one keep-alive connection;
    asserts only that every answer was right."""
    n = 500
    body = json.dumps({"model": "m", "messages": [{"role": "user", "content": "ping"}]}).encode()

    async def go() -> float:
        connector = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=connector) as session:
            started = time.perf_counter()
            for _ in range(n):
                async with session.post(f"{backend.url}/chat/completions", data=body,
                                        headers={"Content-Type": "application/json"}) as r:
                    assert r.status == 200
                    assert (await r.json())["choices"][0]["message"]["content"] == "local: ping"
            return n / (time.perf_counter() - started)

    rate = run(go(), timeout=60)
    print(f"\nstandin instant path, one connection, aiohttp client: {rate:.0f} req/s")
    assert len(backend.requests) == n


# ------------------------------------------------------------- process mode

def _start_process(*args: str) -> tuple[subprocess.Popen[str], str]:
    """Start standin.py as a process; return it and its base URL from the
    "listening" line (bounded wait). The caller kills it in a finally."""
    process = subprocess.Popen(
        [sys.executable, str(HERE / "standin.py"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue[str] = queue.Queue()
    # Only the first line: the process prints nothing else, and the thread ends.
    reader = threading.Thread(target=lambda: lines.put(process.stdout.readline()), daemon=True)
    reader.start()
    try:
        first = lines.get(timeout=20)
    except queue.Empty:
        process.kill()
        raise AssertionError("standin.py did not print its listening line in 20 s") from None
    assert first.startswith("listening http://"), first
    return process, first.split()[1]


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_process_mode(stop_signal):
    process, url = _start_process("--name", "cloud", "--port", "0", "--host", "127.0.0.1")
    try:
        assert url.startswith("http://127.0.0.1:") and url.endswith("/v1")
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=WAIT)
        try:
            raw = c.chat.completions.with_raw_response.create(
                model="m", messages=[{"role": "user", "content": "from afar"}])
            assert raw.headers["x-standin-backend"] == "cloud"
            assert raw.parse().choices[0].message.content == "cloud: from afar"
        finally:
            c.close()
        process.send_signal(stop_signal)
        assert process.wait(timeout=WAIT) == 0
        assert process.stderr.read() == ""  # nothing logged, no traceback
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=WAIT)
        process.stdout.close()
        process.stderr.close()


def test_process_mode_delay():
    process, url = _start_process("--name", "local", "--port", "0", "--delay", "0.2")
    try:
        c = openai.OpenAI(base_url=url, api_key=KEY, max_retries=0, timeout=WAIT)
        try:
            started = time.monotonic()
            assert chat(c, "slowly").choices[0].message.content == "local: slowly"
            assert time.monotonic() - started >= 0.2
        finally:
            c.close()
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)
        process.stdout.close()
        process.stderr.close()


def test_process_mode_mode_and_slots():
    process, url = _start_process("--name", "pc2", "--port", "0", "--mode", "error", "--slots", "2")
    try:
        async def go() -> tuple[int, int, str]:
            async with aiohttp.ClientSession() as session:
                async with session.post(f"{url}/chat/completions", json={
                        "model": "m", "messages": [{"role": "user", "content": "x"}]}) as r:
                    status = r.status
                async with session.get(url.removesuffix("/v1") + "/slots") as r:
                    return status, r.status, await r.text()
        status, slots_status, _ = run(go())
        assert (status, slots_status) == (500, 500)
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)
        process.stdout.close()
        process.stderr.close()
    process, url = _start_process("--name", "pc2", "--port", "0", "--slots", "2")
    try:
        async def slots() -> list:
            async with aiohttp.ClientSession() as session:
                async with session.get(url.removesuffix("/v1") + "/slots") as r:
                    return await r.json()
        assert [s["is_processing"] for s in run(slots())] == [False, False]
    finally:
        process.terminate()
        try:
            process.wait(timeout=WAIT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=WAIT)
        process.stdout.close()
        process.stderr.close()


def test_module_constants():
    assert set(standin.MODES) == {"ok", "error", "ratelimit", "hang", "drop-midstream"}
