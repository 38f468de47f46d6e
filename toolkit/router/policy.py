"""The routing decision: local or cloud, which model, how complex, and why.

Pure and in-process: `decide()` reads a task's metadata and a `View` of the
world (backend health, local load, free GPU memory), all plain values the
router keeps up to date on its own (the GPU sampler's thread, the circuit
breakers, the in-flight counter). It never waits on I/O, takes no lock and
allocates one small tuple: bench/router_decision.py holds it to p99 < 20 us.

The rules, in the order they apply (README, "The router"):

1. context: the prompt plus the answer must fit the local model's window,
   else the cloud (`context_window`);
2. the user's preference, `local` or `cloud` (`preference_local`,
   `preference_cloud`);
3. complexity: the task type's score from the rule table (the reference's:
   code_generation 0.9, large_context_reasoning 0.95, training and fine_tuning
   1.0 are heavy; simple_chat and greeting 0.2, command_parsing 0.3,
   emotion_detection 0.4 are light); a type not in the table, or none, is
   scored from the rest of the metadata; at or over the threshold (0.7) the
   cloud (`heavy_task`), else local (`light_task`);
4. capacity, for work headed local: in-flight requests at the limit
   (`local_busy`), or less free GPU memory than the request's KV cache needs
   plus the reserve (`gpu_memory`), overflow to the cloud;
5. health: a backend whose circuit is open is down. Cloud down: local
   (`cloud_down`), with the smaller local model when the large one's memory is
   short (`cloud_down_small_model`). Local down: cloud (`local_down`). Both
   down: the backend the rules chose, with `all_down` (the router answers 503
   unless it recovers within the request's deadline).

Free GPU memory comes from NVML when a fresh snapshot exists; otherwise (no
NVML library, or a stale snapshot) it is the configured capacity less what
the router's own in-flight local requests reserved.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from .settings import default

LOCAL = "local"
CLOUD = "cloud"
BACKENDS = (LOCAL, CLOUD)
PREFERENCES = ("auto", LOCAL, CLOUD)

# Every reason decide() can give, for metrics and documentation.
REASONS = ("context_window", "preference_local", "preference_cloud", "heavy_task", "light_task",
           "local_busy", "gpu_memory", "cloud_down", "cloud_down_small_model", "local_down", "all_down")

# The reference's rule table: task type -> complexity score.
TASK_SCORES: dict[str, float] = {
    "code_generation": 0.9,
    "large_context_reasoning": 0.95,
    "training": 1.0,
    "fine_tuning": 1.0,
    "simple_chat": 0.2,
    "greeting": 0.2,
    "command_parsing": 0.3,
    "emotion_detection": 0.4,
}
THRESHOLD: float = default("threshold")
DEFAULT_MAX_TOKENS = 512  # the answer's length when a request does not say


@dataclass(frozen=True, slots=True)
class LocalModel:
    name: str
    context_window: int  # tokens, prompt and answer together
    kv_bytes_per_token: int  # the KV cache one token takes on the GPU


@dataclass(frozen=True, slots=True)
class PolicyConfig:
    local: LocalModel
    cloud_model: str
    small: LocalModel | None = None  # a smaller local model for when the cloud is down and memory short
    threshold: float = THRESHOLD
    max_inflight: int = default("local.max_inflight")  # local requests in flight before new ones overflow to the cloud
    gpu_reserve: int = default("gpu.reserve")  # bytes kept free on the GPU
    gpu_capacity: int = default("gpu.capacity")  # free bytes assumed when NVML tells nothing
    task_scores: dict[str, float] = field(default_factory=lambda: dict(TASK_SCORES))


@dataclass(slots=True)
class Task:
    """A request's routing metadata."""

    task_type: str | None = None
    context_tokens: int = 0
    max_tokens: int | None = None
    preference: str = "auto"  # auto, local or cloud
    tools: bool = False  # the request offers tools (function calling)
    complexity: float | None = None  # the caller's own estimate, 0..1, used for unknown types


@dataclass(slots=True)
class View:
    """What the decision reads of the world; the router updates it in place."""

    local_up: bool = True
    cloud_up: bool = True
    local_inflight: int = 0
    local_reserved: int = 0  # bytes the in-flight local requests reserved (used without NVML)
    gpu_free: int | None = None  # bytes free on the local model's GPU; None: unknown


class Decision(NamedTuple):
    backend: str  # local or cloud
    model: str
    score: float
    reason: str


def score(config: PolicyConfig, task: Task) -> float:
    """Complexity in [0, 1]: the rule table's, else from the rest of the metadata."""
    known = config.task_scores.get(task.task_type) if task.task_type is not None else None
    if known is not None:
        return known
    if task.complexity is not None:
        return task.complexity
    # Unknown type: start below the threshold, and let a long context, a long
    # answer and tool use push it over (a full window alone reaches 0.8).
    window = config.local.context_window
    value = 0.35 + 0.45 * min(1.0, task.context_tokens / window)
    if task.max_tokens:
        value += 0.2 * min(1.0, task.max_tokens / 2048)
    if task.tools:
        value += 0.1
    return min(1.0, value)


def decide(config: PolicyConfig, task: Task, view: View) -> Decision:
    """Local or cloud for `task` now; see the module's docstring for the rules."""
    local = config.local
    answer = task.max_tokens or DEFAULT_MAX_TOKENS
    tokens = task.context_tokens + answer
    value = score(config, task)

    if tokens > local.context_window:
        return Decision(CLOUD, config.cloud_model, value, "context_window")

    preference = task.preference
    if preference == CLOUD:
        want, reason = CLOUD, "preference_cloud"
    elif preference == LOCAL:
        want, reason = LOCAL, "preference_local"
    elif value >= config.threshold:
        want, reason = CLOUD, "heavy_task"
    else:
        want, reason = LOCAL, "light_task"

    local_up = view.local_up
    cloud_up = view.cloud_up
    if not local_up and not cloud_up:
        return Decision(want, local.name if want == LOCAL else config.cloud_model, value, "all_down")

    if want == CLOUD:
        if cloud_up:
            return Decision(CLOUD, config.cloud_model, value, reason)
        return _local_without_cloud(config, view, tokens, value)

    # Headed local.
    if not local_up:
        return Decision(CLOUD, config.cloud_model, value, "local_down")
    fits = _free(config, view) >= local.kv_bytes_per_token * tokens + config.gpu_reserve
    if view.local_inflight >= config.max_inflight:
        if cloud_up:
            return Decision(CLOUD, config.cloud_model, value, "local_busy")
        return _local_without_cloud(config, view, tokens, value)
    if not fits:
        if cloud_up:
            return Decision(CLOUD, config.cloud_model, value, "gpu_memory")
        return _local_without_cloud(config, view, tokens, value)
    return Decision(LOCAL, local.name, value, reason)


def _free(config: PolicyConfig, view: View) -> int:
    free = view.gpu_free
    if free is None:
        return config.gpu_capacity - view.local_reserved
    return free


def _local_without_cloud(config: PolicyConfig, view: View, tokens: int, value: float) -> Decision:
    """The cloud is down: the large local model if its memory fits, else the small one if that fits."""
    local = config.local
    if not view.local_up:
        return Decision(CLOUD, config.cloud_model, value, "all_down")
    free = _free(config, view) - config.gpu_reserve
    if free < local.kv_bytes_per_token * tokens:
        small = config.small
        if small is not None and tokens <= small.context_window and free >= small.kv_bytes_per_token * tokens:
            return Decision(LOCAL, small.name, value, "cloud_down_small_model")
    return Decision(LOCAL, local.name, value, "cloud_down")


def reservation(config: PolicyConfig, decision: Decision, task: Task) -> int:
    """The GPU bytes a local request holds while in flight (its KV cache); 0 for the cloud."""
    if decision.backend != LOCAL:
        return 0
    model = config.small if config.small is not None and decision.model == config.small.name else config.local
    return model.kv_bytes_per_token * (task.context_tokens + (task.max_tokens or DEFAULT_MAX_TOKENS))
