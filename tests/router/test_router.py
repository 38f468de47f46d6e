"""agentkit-router as a real process on loopback: the official openai client, stand-in backends, stand-in NVML.

The router runs as `agentkit-router` (a subprocess, so pynvml loads the
stand-in libnvidia-ml.so.1 through LD_LIBRARY_PATH); the backends are
tests/router/standin.py servers on their own threads, made slow, failing or
down by the tests. Nothing is mocked inside the router.
"""

import concurrent.futures
import json
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from .conftest import fail_or_skip
from .standin import StandinBackend
from .test_policy import CASES, flat_state, router_args
from helpers import wait_for

ROUTER = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "agentkit-router"
KEY = "sk-test-3f9a7c1e-never-print-me"
MIB = 1 << 20
GPU_TOTAL_MIB = 24576


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class RouterProcess:
    def __init__(self, args: list[str], env: dict[str, str], tmp: Path):
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.log = tmp / f"router-{self.port}.log"
        program = str(ROUTER) if ROUTER.exists() else "agentkit-router"
        self._log = open(self.log, "w")
        self.process = subprocess.Popen([program, "--listen", f"127.0.0.1:{self.port}"] + args,
                                        env=dict(os.environ, **env), stdout=self._log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        wait_for(self._up, "the router to answer /health")

    def _up(self):
        if self.process.poll() is not None:
            pytest.fail(f"the router exited ({self.process.returncode}):\n{self.log.read_text()}")
        try:
            return self.get("/health")
        except OSError:
            return None

    def get(self, path: str):
        try:
            with urllib.request.urlopen(self.base + path, timeout=5) as resp:
                data = resp.read()
        except urllib.error.HTTPError as exc:
            data = exc.read()
        return json.loads(data) if path != "/metrics" else data.decode()

    def post(self, path: str, data: bytes, headers: dict | None = None):
        request = urllib.request.Request(self.base + path, data=data, method="POST",
                                         headers=headers or {"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=10) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read()

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.base + "/v1", api_key="not-the-cloud-key", max_retries=0, timeout=15)

    def metrics(self) -> dict:
        out = {}
        for family in text_string_to_metric_families(self.get("/metrics")):
            for sample in family.samples:
                out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
        return out

    def close(self) -> str:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self._log.close()
        return self.log.read_text()


@pytest.fixture
def backends():
    local = StandinBackend("local").start()
    cloud = StandinBackend("cloud").start()
    try:
        yield local, cloud
    finally:
        local.close()
        cloud.close()


@pytest.fixture
def start_router(tmp_path, backends, fake_gpu):
    """Start agentkit-router against the stand-ins; every router is stopped and its log checked for the key."""
    local, cloud = backends
    key_file = tmp_path / "cloud.key"
    key_file.write_text(KEY + "\n")
    key_file.chmod(0o600)  # the router refuses a key file its group or others may read
    routers = []

    def start(*extra: str, nvml: bool = True, **overrides) -> RouterProcess:
        # The basic labelled set's router (tests/data/routing/basic), pointed at the stand-ins (a later
        # option wins) and made quick.
        args = router_args() + [
            "--local-url", local.url, "--cloud-url", cloud.url, "--cloud-api-key-file", str(key_file),
            "--probe-interval", "50ms", "--breaker-open", "1s", "--gpu-interval", "50ms",
            "--gpu-stale-after", "400ms", "--timeout", "2s", "--attempt-timeout", "500ms"] + list(extra)
        env = fake_gpu.environ() if nvml else {"LD_LIBRARY_PATH": str(tmp_path / "no-nvml")}
        router = RouterProcess(args, env, tmp_path)
        routers.append(router)
        return router

    fake_gpu.set(("FakeGPU-24G", GPU_TOTAL_MIB, 20000))
    yield start
    for router in routers:
        log = router.close()
        assert KEY not in log, "the cloud key appeared in the router's log"


def ask(client: openai.OpenAI, task: dict, content: str = "hello"):
    """One chat completion with the labelled task's metadata; returns (backend, model, reason, reply)."""
    metadata = {k: str(task[k]) for k in ("task_type", "preference", "context_tokens", "complexity") if k in task}
    extra = {}
    if task.get("max_tokens"):
        extra["max_tokens"] = task["max_tokens"]
    if task.get("tools"):
        extra["tools"] = [{"type": "function", "function": {"name": "lookup", "parameters": {"type": "object"}}}]
    raw = client.chat.completions.with_raw_response.create(
        model="auto", messages=[{"role": "user", "content": content}], metadata=metadata, **extra)
    reply = raw.parse()
    return (raw.headers["x-agentkit-backend"], reply.model, raw.headers["x-agentkit-reason"],
            reply.choices[0].message.content)


# --- the labelled set, through the official client --------------------------------------------

def set_state(router: RouterProcess, backends, fake_gpu, state: dict):
    """Make the world match a labelled state, and wait until the router sees it."""
    local, cloud = backends
    for backend, wanted in ((local, state["local"]), (cloud, state["cloud"])):
        if wanted == "down":
            backend.stop()
        else:
            backend.start()
    gpu = state["gpu"]
    if gpu == "stale":
        fake_gpu.fail(15)
    else:
        fake_gpu.set(("FakeGPU-24G", GPU_TOTAL_MIB, gpu))

    def seen():
        health = router.get("/health")
        for name in ("local", "cloud"):
            if health["backends"][name]["up"] != (state[name] == "up"):
                return False
        if gpu == "stale":
            return health["gpu"]["stale"]
        devices = health["gpu"]["devices"]
        return not health["gpu"]["stale"] and devices and devices[0]["free_bytes"] == gpu * MIB

    wait_for(seen, f"the router to see {state}")


def hold_local(router: RouterProcess, local: StandinBackend, count: int, pool):
    """Keep `count` light requests in flight on the local backend (the stand-in holds them)."""
    local.hold()
    client = router.client()
    futures = [pool.submit(ask, client, {"task_type": "simple_chat"}, "HOLD") for _ in range(count)]
    wait_for(lambda: local.held == count, f"{count} requests held on the local backend")
    return futures


def test_the_official_client_gets_each_labelled_task_from_the_right_backend(start_router, backends, fake_gpu):
    router = start_router()
    client = router.client()
    local, cloud = backends
    groups: dict[str, list] = {}
    for case in CASES:
        groups.setdefault(json.dumps(flat_state(case.get("state", {})), sort_keys=True), []).append(case)
    checked = 0
    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        for state_text, cases in groups.items():
            state = json.loads(state_text)
            set_state(router, backends, fake_gpu, state)
            held = hold_local(router, local, state["local_inflight"], pool) if state["local_inflight"] else []
            for case in cases:
                expect = case["expect"]
                if expect["reason"] == "all_down" or (expect["backend"] == "cloud" and state["cloud"] == "down"):
                    # Nobody can serve it: a 503 within the deadline, naming the decision.
                    with pytest.raises(openai.InternalServerError) as info:
                        ask(client, case["task"])
                    assert info.value.status_code == 503, case["id"]
                    assert f"decision: {expect['backend']}, {expect['reason']}" in info.value.message, case["id"]
                else:
                    backend, model, reason, reply = ask(client, case["task"], case["id"])
                    assert (backend, model, reason) == (expect["backend"], expect["model"], expect["reason"]), case["id"]
                    assert reply.startswith(f"{expect['backend']}: {case['id']}"), case["id"]  # who really answered
                checked += 1
            if held:
                local.release()
                for future in held:
                    assert future.result(timeout=10)[0] == "local"
    assert checked == len(CASES)
    # The cloud got the key; the local backend never did, and neither saw the router's own metadata.
    cloud_requests = [r for r in cloud.requests if r["path"] == "/v1/chat/completions"]
    assert cloud_requests and all(r["headers"].get("authorization") == f"Bearer {KEY}" for r in cloud_requests)
    assert not any("authorization" in r["headers"] and KEY in r["headers"]["authorization"] for r in local.requests)
    assert not any("task_type" in json.dumps(r["json"].get("metadata", {})) for r in cloud_requests)


def test_streaming_through_the_official_client(start_router):
    router = start_router()
    client = router.client()
    stream = client.chat.completions.create(model="auto", messages=[{"role": "user", "content": "one two three"}],
                                            metadata={"task_type": "code_generation"}, stream=True)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "cloud: one two three"
    completion = client.completions.create(model="auto", prompt="say this", stream=True,
                                           extra_body={"metadata": {"task_type": "greeting"}})
    assert "".join(c.choices[0].text for c in completion) == "local: say this"
    plain = client.completions.create(model="auto", prompt="plain", extra_body={"metadata": {"task_type": "training"}})
    assert plain.choices[0].text == "cloud: plain" and plain.model == "cloud-large"


def test_free_gpu_memory_read_through_nvml_moves_work(start_router, fake_gpu):
    """Memory filling up sends new large work to the cloud; freeing it brings it back."""
    router = start_router()
    client = router.client()
    big = {"task_type": "simple_chat", "context_tokens": 6000}  # 6512 tokens x 128 KiB = 814 MiB + 512 MiB reserve

    def route():
        return ask(client, big)[:3]

    assert route() == ("local", "local-8b", "light_task")
    fake_gpu.set(("FakeGPU-24G", GPU_TOTAL_MIB, 1000))
    wait_for(lambda: router.get("/health")["gpu"]["devices"][0]["free_bytes"] == 1000 * MIB, "the new snapshot")
    assert route() == ("cloud", "cloud-large", "gpu_memory")
    assert ask(client, {"task_type": "simple_chat", "context_tokens": 100})[0] == "local"  # small work still fits
    fake_gpu.set(("FakeGPU-24G", GPU_TOTAL_MIB, 1400))
    wait_for(lambda: router.get("/health")["gpu"]["devices"][0]["free_bytes"] == 1400 * MIB, "the freed snapshot")
    assert route() == ("local", "local-8b", "light_task")
    metrics = router.metrics()
    assert metrics[("agentkit_router_gpu_free_bytes", (("gpu", "0"), ("name", "FakeGPU-24G")))] == 1400 * MIB
    assert metrics[("agentkit_router_nvml_available", ())] == 1.0
    assert 0 <= metrics[("agentkit_router_gpu_snapshot_age_seconds", ())] < 0.4


def test_without_nvml_the_router_says_so_and_uses_its_configured_capacity(start_router):
    router = start_router(nvml=False)
    health = router.get("/health")
    assert health["gpu"]["nvml"] is False
    assert health["gpu"]["reason"] == "NVML library libnvidia-ml.so.1 not found (no NVIDIA driver on this host)"
    assert health["backends"]["local"]["capacity_bytes"] == 1 << 30 and health["backends"]["local"]["gpu"] == "capacity"
    client = router.client()
    assert ask(client, {"task_type": "simple_chat", "context_tokens": 1000})[:3] == ("local", "local-8b", "light_task")
    assert ask(client, {"task_type": "simple_chat", "context_tokens": 4000})[:3] == ("cloud", "cloud-large", "gpu_memory")
    log = router.close()
    assert "NVML library libnvidia-ml.so.1 not found" in log and "configured local capacity of 1024 MiB" in log


# --- failover ---------------------------------------------------------------------------------

def steady(client, tasks, count, answers, errors, stop):
    for i in range(count):
        if stop.is_set():
            return
        task = tasks[i % len(tasks)]
        try:
            answers.append(ask(client, task, f"request {i}")[0])
        except Exception as exc:  # noqa: BLE001 - every failure is a lost request, reported below
            errors.append(f"request {i}: {type(exc).__name__}: {exc}")


def test_a_burst_of_requests_keeps_to_the_in_flight_limit(start_router, backends):
    """Requests that arrive together (one event loop's worth) see each other's in-flight claims: the local
    backend gets its max_inflight (2 in the basic set), the rest overflow to the cloud."""
    import asyncio

    import aiohttp

    router = start_router()
    local, cloud = backends
    local.set_mode("ok", delay=0.3)  # the burst is all in before the first local answer (attempt timeout: 0.5 s)
    local.clear_requests()
    cloud.clear_requests()
    body = {"model": "auto", "messages": [{"role": "user", "content": "burst"}], "metadata": {"task_type": "greeting"}}

    async def burst() -> list[tuple[int, str]]:
        async with aiohttp.ClientSession() as session:
            async def one():
                async with session.post(router.base + "/v1/chat/completions", json=body) as resp:
                    await resp.read()
                    return resp.status, resp.headers.get("X-Agentkit-Backend")
            return await asyncio.gather(*(one() for _ in range(20)))

    answers = asyncio.run(burst())
    assert sorted(answers) == [(200, "cloud")] * 18 + [(200, "local")] * 2, (answers, router.get("/health"))
    assert len([r for r in local.requests if r["path"] == "/v1/chat/completions"]) == 2
    health = router.get("/health")
    assert [health["backends"][n]["inflight"] for n in ("local", "cloud")] == [0, 0]
    assert health["local_reserved_bytes"] == 0


@pytest.mark.parametrize("failure", ["down", "error", "ratelimit", "hang"])
@pytest.mark.parametrize("failing", ["cloud", "local"])
def test_clients_keep_getting_answers_while_a_backend_fails(start_router, backends, failing, failure):
    router = start_router()
    client = router.client()
    local, cloud = backends
    backend = cloud if failing == "cloud" else local
    tasks = [{"task_type": "code_generation"}, {"task_type": "simple_chat"}]
    answers, errors, stop = [], [], threading.Event()
    thread = threading.Thread(target=steady, args=(client, tasks, 60, answers, errors, stop))
    thread.start()
    try:
        wait_for(lambda: len(answers) >= 10, "10 answers before the failure")
        if failure == "down":
            backend.stop()
        elif failure == "ratelimit":
            backend.set_mode("ratelimit", retry_after=30)
        else:
            backend.set_mode(failure, status=503)
        at_failure = len(answers)
        wait_for(lambda: len(answers) >= at_failure + 30 or errors, "30 answers after the failure", timeout=60)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert errors == []
    other = "local" if failing == "cloud" else "cloud"
    assert answers[-20:] == [other] * 20  # everything flows to the other backend
    health = router.get("/health")
    assert health["backends"][failing]["up"] is False and health["status"] == "degraded"
    metrics = router.metrics()
    assert metrics[("agentkit_router_failovers_total", (("from_backend", failing), ("to_backend", other)))] >= 1
    assert metrics[("agentkit_router_backend_up", (("backend", failing),))] == 0.0
    # It comes back: the probes close the circuit once the backend answers again.
    backend.set_mode("ok")
    backend.start()
    wait_for(lambda: router.get("/health")["backends"][failing]["state"] == "closed", "the circuit to close", timeout=10)
    assert ask(client, tasks[0 if failing == "cloud" else 1])[0] == failing


def test_a_request_waits_out_a_short_outage_of_both_backends_within_its_deadline(start_router, backends):
    router = start_router("--timeout", "5s", "--breaker-failures", "100")
    local, cloud = backends
    local.set_mode("error", status=502)
    cloud.set_mode("error", status=502)
    timer = threading.Timer(0.5, lambda: (local.set_mode("ok"), cloud.set_mode("ok")))
    timer.start()
    try:
        started = time.monotonic()
        backend, _, _, reply = ask(router.client(), {"task_type": "greeting"}, "patience")
    finally:
        timer.cancel()
    assert backend in ("local", "cloud") and reply.endswith("patience")
    assert 0.4 < time.monotonic() - started < 5
    assert router.metrics()[("agentkit_router_retries_total", ())] >= 1


def test_a_broken_stream_is_cut_not_retried(start_router, backends):
    """The local stand-in sends one chunk, then resets the connection.

    If the router got that chunk, it went to the client and the stream is cut
    (the client sees an error, nothing is retried). The reset may also discard
    the chunk unread on the router's side (a TCP RST drops what is buffered):
    then no byte went out, and the request fails over to the cloud whole.
    Never both: no answer mixes two backends.
    """
    router = start_router()
    local, _ = backends
    local.set_mode("drop-midstream")
    local.clear_requests()
    stream = router.client().chat.completions.create(
        model="auto", messages=[{"role": "user", "content": "a b c d"}], metadata={"task_type": "greeting"}, stream=True)
    text = []
    try:
        for chunk in stream:
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
        cut = False
    except openai.APIError:
        cut = True
    if not cut:
        assert "".join(text) == "cloud: a b c d"
    else:
        assert "cloud" not in "".join(text)
    assert len([r for r in local.requests if r["path"] == "/v1/chat/completions"]) == 1  # never sent again
    assert router.get("/health")["status"] in ("ok", "degraded")  # the router itself is fine


# --- what clients send ---------------------------------------------------------------------------

@pytest.mark.parametrize("body, status, message", [
    (b"{not json", 400, "the request body is not valid JSON: Expecting property name enclosed in double quotes "
                        "at line 1 column 2"),
    (b'{"messages": "hi"}', 400, "messages must be a non-empty array of {role, content} objects"),
    (b'{"messages": [{"role": "user", "content": "x"}], "metadata": {"preference": "gpu"}}', 400,
     "metadata.preference must be one of auto, local, cloud, got 'gpu'"),
    (b'{"model": "x", "messages": [{"role": "user", "content": "' + b"x" * (2 << 20) + b'"}]}', 413,
     "the request body is larger than the router's limit of 1048576 bytes"),
])
def test_malformed_and_oversized_requests_get_a_clear_4xx(start_router, body, status, message):
    router = start_router()
    code, data = router.post("/v1/chat/completions", body)
    assert code == status
    assert json.loads(data)["error"]["message"] == message


def test_the_openai_client_sees_the_error_message(start_router):
    router = start_router()
    with pytest.raises(openai.BadRequestError) as info:
        router.client().chat.completions.create(model="auto", messages=[{"role": "user", "content": "x"}],
                                                metadata={"context_tokens": "lots"})
    assert "metadata.context_tokens must be a whole number of tokens" in info.value.message


def test_nothing_a_client_sends_crashes_the_router(start_router):
    router = start_router()
    import random
    rng = random.Random(7)
    samples = [b"", b"null", b"[]", b'"x"', b"1e999", b'{"messages": [null]}', b'{"messages": [{"role": 1}]}',
               b'{"messages": [{"role": "u", "content": [1, {"text": 2}]}]}', b'{"prompt": []}',
               b'{"messages": [{"role": "u", "content": "x"}], "max_tokens": 1e308}',
               b'{"messages": [{"role": "u", "content": "x"}], "metadata": {"complexity": [1]}}',
               b"[" * 50000, "{\"messages\": \"\udcff\"}".encode("utf-8", "surrogatepass")]
    samples += [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 300))) for _ in range(200)]
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/route"):
        for body in samples:
            code, data = router.post(path, body)
            assert 400 <= code < 500, (path, body[:60], code, data[:200])
            assert json.loads(data)["error"]["message"]
    for method, path, code in (("GET", "/v1/chat/completions", 405), ("POST", "/nowhere", 404)):
        request = urllib.request.Request(router.base + path, method=method, data=b"{}" if method == "POST" else None)
        with pytest.raises(urllib.error.HTTPError) as info:
            urllib.request.urlopen(request, timeout=5)
        assert info.value.code == code
    assert router.process.poll() is None
    assert router.get("/health")["status"] == "ok"
    rejected = router.metrics()
    assert rejected[("agentkit_router_rejected_requests_total", (("code", "400"),))] >= len(samples)


# --- decision only, health, metrics ---------------------------------------------------------------

def test_route_answers_the_decision_only(start_router, backends):
    router = start_router()
    local, cloud = backends
    local.clear_requests()
    cloud.clear_requests()
    code, data = router.post("/v1/route", json.dumps({"metadata": {"task_type": "code_generation"}}).encode())
    assert code == 200
    decision = json.loads(data)
    assert decision == {"backend": "cloud", "model": "cloud-large", "score": 0.9, "reason": "heavy_task",
                        "base_url": cloud.url, "context_tokens": 0}
    code, data = router.post("/v1/route", json.dumps({"messages": [{"role": "user", "content": "hi"}],
                                                      "metadata": {"task_type": "greeting"}}).encode())
    assert json.loads(data)["backend"] == "local"
    assert not [r for r in local.requests + cloud.requests if r["path"] != "/v1/models"]  # no backend was called


def test_metrics_are_prometheus_text_with_every_family(start_router):
    router = start_router()
    client = router.client()
    for task in ({"task_type": "greeting"}, {"task_type": "code_generation"}, {"task_type": "greeting"}):
        ask(client, task)
    metrics = router.metrics()
    assert metrics[("agentkit_router_decisions_total", (("backend", "local"), ("reason", "light_task")))] == 2
    assert metrics[("agentkit_router_decisions_total", (("backend", "cloud"), ("reason", "heavy_task")))] == 1
    assert metrics[("agentkit_router_decision_seconds_count", ())] == 3
    assert ("agentkit_router_decision_seconds_bucket", (("le", "1e-06"),)) in metrics  # microsecond buckets
    assert metrics[("agentkit_router_decision_seconds_bucket", (("le", "0.001"),))] == 3
    assert metrics[("agentkit_router_request_seconds_count", (("backend", "local"), ("endpoint", "chat")))] == 2
    assert ("agentkit_router_request_seconds_bucket", (("backend", "local"), ("endpoint", "chat"), ("le", "60.0"))) in metrics
    assert metrics[("agentkit_router_backend_state", (("backend", "cloud"), ("state", "closed")))] == 1.0
    assert metrics[("agentkit_router_failovers_total", (("from_backend", "cloud"), ("to_backend", "local")))] == 0
    text = router.get("/metrics")
    assert KEY not in text


def test_health_reports_backends_and_gpu_without_the_key(start_router):
    router = start_router()
    health = router.get("/health")
    assert health["status"] == "ok"
    assert health["backends"]["cloud"]["api_key"] == "set"
    assert health["gpu"]["nvml"] is True and health["gpu"]["devices"][0]["name"] == "FakeGPU-24G"
    assert KEY not in json.dumps(health)


def test_the_key_comes_from_the_systemd_credential_directory(tmp_path, backends, fake_gpu):
    local, cloud = backends
    (tmp_path / "creds").mkdir()
    (tmp_path / "creds" / "cloud-api-key").write_text(KEY)
    (tmp_path / "creds" / "cloud-api-key").chmod(0o400)  # as systemd writes it
    router = RouterProcess(["--local-url", local.url, "--local-model", "l", "--cloud-url", cloud.url,
                            "--cloud-model", "c"], dict(fake_gpu.environ(), CREDENTIALS_DIRECTORY=str(tmp_path / "creds")),
                           tmp_path)
    try:
        ask(router.client(), {"task_type": "training"})
    finally:
        log = router.close()
    assert cloud.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"
    assert KEY not in log


def test_bad_options_are_named(tmp_path):
    program = str(ROUTER) if ROUTER.exists() else "agentkit-router"
    result = subprocess.run([program, "--local-url", "http://x/v1", "--local-model", "l", "--cloud-url", "http://y/v1",
                             "--cloud-model", "c", "--gpu-reserve", "lots"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 2
    assert "Invalid value for '--gpu-reserve': 'lots' is not a size systemd understands" in result.stderr
    key = tmp_path / "keys"
    key.mkdir()  # a directory where the key file should be
    result = subprocess.run([program, "--local-url", "http://x/v1", "--local-model", "l", "--cloud-url", "http://y/v1",
                             "--cloud-model", "c", "--cloud-api-key-file", str(key)],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 2 and f"{str(key)!r} is a directory, not a file" in result.stderr


def test_a_busy_port_is_reported(tmp_path, backends):
    local, cloud = backends
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        program = str(ROUTER) if ROUTER.exists() else "agentkit-router"
        result = subprocess.run([program, "--listen", f"127.0.0.1:{port}", "--local-url", local.url, "--local-model", "l",
                                 "--cloud-url", cloud.url, "--cloud-model", "c"], capture_output=True, text=True,
                                timeout=30, env=dict(os.environ, LD_LIBRARY_PATH=str(tmp_path)))
    assert result.returncode == 1
    assert f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr


if not ROUTER.exists() and not os.environ.get("VIRTUAL_ENV"):
    fail_or_skip("agentkit-router is not installed: run ./dev test")
