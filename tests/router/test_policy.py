"""The decision as a library: the labelled routing set, scoring, and what clients may send."""

import json
from pathlib import Path

import pytest

from agentkit import values
from agentkit.router import inbound, policy
from agentkit.router.policy import LocalModel, PolicyConfig, Task, View

DATA = Path(__file__).resolve().parents[1] / "data" / "routing"
CASES = [json.loads(line) for line in (DATA / "tasks.jsonl").read_text().splitlines() if line.strip()]


def load_config() -> PolicyConfig:
    raw = json.loads((DATA / "policy.json").read_text())
    return PolicyConfig(
        local=LocalModel(raw["local_model"], raw["local_context_window"], values.parse_size(raw["local_kv_per_token"])),
        small=LocalModel(raw["small_model"], raw["local_context_window"], values.parse_size(raw["small_kv_per_token"])),
        cloud_model=raw["cloud_model"], threshold=raw["threshold"], max_inflight=raw["local_max_inflight"],
        gpu_reserve=values.parse_size(raw["gpu_reserve"]), gpu_capacity=values.parse_size(raw["gpu_capacity"]),
    )


def view_of(state: dict) -> View:
    gpu = state["gpu"]
    return View(local_up=state["local"] == "up", cloud_up=state["cloud"] == "up",
                local_inflight=state["local_inflight"],
                gpu_free=gpu << 20 if isinstance(gpu, int) else None)


def task_of(raw: dict) -> Task:
    return Task(task_type=raw.get("task_type"), context_tokens=raw.get("context_tokens", 0),
                max_tokens=raw.get("max_tokens"), preference=raw.get("preference", "auto"),
                tools=raw.get("tools", False), complexity=raw.get("complexity"))


def test_the_labelled_set_covers_every_reason_and_both_backends():
    reasons = {case["expect"]["reason"] for case in CASES}
    assert reasons == set(policy.REASONS)
    assert {case["expect"]["model"] for case in CASES} == {"local-8b", "local-3b", "cloud-large"}
    types = {case["task"].get("task_type") for case in CASES}
    assert set(policy.TASK_SCORES) <= types


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_labelled_routing_set(case):
    config = load_config()
    decision = policy.decide(config, task_of(case["task"]), view_of(case["state"]))
    expect = case["expect"]
    assert (decision.backend, decision.model, decision.reason) == (expect["backend"], expect["model"], expect["reason"])


def test_rule_table_scores_are_the_reference_ones():
    config = load_config()
    assert {t: policy.score(config, Task(task_type=t)) for t in policy.TASK_SCORES} == {
        "code_generation": 0.9, "large_context_reasoning": 0.95, "training": 1.0, "fine_tuning": 1.0,
        "simple_chat": 0.2, "greeting": 0.2, "command_parsing": 0.3, "emotion_detection": 0.4}


def test_unknown_types_score_from_the_metadata_and_stay_in_range():
    config = load_config()
    short = policy.score(config, Task(task_type="whatever", context_tokens=10))
    longer = policy.score(config, Task(task_type="whatever", context_tokens=7000))
    huge = policy.score(config, Task(task_type="whatever", context_tokens=10**7, max_tokens=10**6, tools=True))
    assert short < config.threshold <= longer < huge == 1.0


def test_reservation_follows_the_model_chosen():
    config = load_config()
    task = Task(context_tokens=1000, max_tokens=24)
    big = policy.reservation(config, policy.Decision("local", "local-8b", 0.2, "light_task"), task)
    small = policy.reservation(config, policy.Decision("local", "local-3b", 0.2, "cloud_down_small_model"), task)
    cloud = policy.reservation(config, policy.Decision("cloud", "cloud-large", 0.9, "heavy_task"), task)
    assert (big, small, cloud) == (1024 * 128 * 1024, 1024 * 64 * 1024, 0)


def test_in_flight_reservations_count_when_nvml_tells_nothing():
    config = load_config()
    task = Task(task_type="simple_chat", context_tokens=1000)  # needs 701 MiB of the 1 GiB capacity
    assert policy.decide(config, task, View()).backend == "local"
    assert policy.decide(config, task, View(local_reserved=400 << 20)).reason == "gpu_memory"


# --- what a client sends ---------------------------------------------------------------

def chat(**extra):
    return dict({"model": "auto", "messages": [{"role": "user", "content": "x" * 400}]}, **extra)


def test_metadata_and_headers_become_the_task():
    task = inbound.task_of(chat(metadata={"task_type": "code_generation", "context_tokens": "1200",
                                          "preference": "cloud", "complexity": "0.3"}, max_tokens=64), "chat", {})
    assert task == Task("code_generation", 1200, 64, "cloud", False, 0.3)
    task = inbound.task_of(chat(), "chat", {"X-Agentkit-Task-Type": "greeting", "X-Agentkit-Preference": "local"})
    assert (task.task_type, task.preference, task.context_tokens) == ("greeting", "local", 100)


def test_forwarded_body_drops_only_the_routers_keys():
    body = chat(metadata={"task_type": "x", "trace": "abc"}, temperature=0.5)
    out = json.loads(inbound.forwarded(body, "m"))
    assert out == {"model": "m", "messages": body["messages"], "metadata": {"trace": "abc"}, "temperature": 0.5}
    assert "metadata" not in json.loads(inbound.forwarded(chat(metadata={"task_type": "x"}), "m"))
    assert body["metadata"] == {"task_type": "x", "trace": "abc"}  # the client's dict is left alone


@pytest.mark.parametrize("raw, message", [
    (b"", "the request has no body: send a JSON object"),
    (b"{", "the request body is not valid JSON: Expecting property name enclosed in double quotes at line 1 column 2"),
    (b"[1]", "the request body must be a JSON object, got an array"),
    (b"\xff\xfe", "the request body is not UTF-8 text"),
    (b"[" * 100000 + b"]" * 100000, "the request body is nested too deeply"),
])
def test_bodies_that_are_not_json_objects(raw, message):
    with pytest.raises(inbound.RequestError) as info:
        inbound.parse_body(raw)
    assert str(info.value) == message


@pytest.mark.parametrize("body, param, message", [
    ({"model": "a"}, "messages", "messages must be a non-empty array of {role, content} objects"),
    ({"messages": []}, "messages", "messages must be a non-empty array of {role, content} objects"),
    ({"messages": ["hi"]}, "messages[0]", "messages[0] must be an object, got a string"),
    ({"messages": [{"content": "hi"}]}, "messages[0].role", 'messages[0].role must be text such as "user"'),
    ({"messages": [{"role": "user", "content": 5}]}, "messages[0].content",
     "messages[0].content must be text, an array of parts or null, got a number"),
    (chat(stream="yes"), "stream", "stream must be true or false, got a string"),
    (chat(max_tokens=0), "max_tokens", "max_tokens must be a whole number from 1 to 10000000, got 0"),
    (chat(max_tokens="9"), "max_tokens", "max_tokens must be a whole number from 1 to 10000000, got '9'"),
    (chat(metadata=[1]), "metadata", "metadata must be an object, got an array"),
    (chat(metadata={"preference": "gpu"}), "metadata.preference",
     "metadata.preference must be one of auto, local, cloud, got 'gpu'"),
    (chat(metadata={"context_tokens": "-3"}), "metadata.context_tokens",
     "metadata.context_tokens must be a whole number of tokens (0-10000000), got '-3'"),
    (chat(metadata={"complexity": "high"}), "metadata.complexity",
     "metadata.complexity must be a number from 0 to 1, got 'high'"),
    (chat(metadata={"complexity": float("nan")}), "metadata.complexity",
     "metadata.complexity must be a number from 0 to 1, got nan"),
    (chat(metadata={"task_type": ""}), "metadata.task_type",
     "metadata.task_type must be a task type name (text, 1-200 characters), got ''"),
])
def test_malformed_requests_name_the_field(body, param, message):
    with pytest.raises(inbound.RequestError) as info:
        inbound.task_of(body, "chat", {})
    assert (info.value.param, str(info.value)) == (param, message)


def test_completion_prompts():
    assert inbound.task_of({"prompt": "abcd" * 10}, "text", {}).context_tokens == 10
    assert inbound.task_of({"prompt": ["ab" * 4, "cd" * 4]}, "text", {}).context_tokens == 4
    assert inbound.task_of({"prompt": [1, 2, 3]}, "text", {}).context_tokens == 3
    with pytest.raises(inbound.RequestError, match="prompt must be text"):
        inbound.task_of({"prompt": {"a": 1}}, "text", {})
