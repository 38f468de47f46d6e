"""The routing decision: which backend, which model, how complex, and why.

Pure and in-process: `decide()` reads a task's metadata and a `View` of the
world (each backend's health, load and free GPU memory), all plain values the
router keeps up to date on its own (the GPU sampler's thread, the circuit
breakers, the in-flight counters, the peers' load probes). It never waits on
I/O and takes no lock: bench/router_decision.py holds it to p99 < 20 us.

The backends: one or more local ones (the router's own, `local`, then the
manifest's peers, each an OpenAI-compatible server on a GPU host) and the
cloud. Each serves one or more models, its tiers: a tier is chosen from
complexity `above` its figure (the highest one the task reaches).

The rules, in the order they apply (README, "The router"):

1. context: the prompt plus the answer must fit some local model's window,
   else the cloud (`context_window`);
2. the user's preference, `local` or `cloud` (`preference_local`,
   `preference_cloud`);
3. the rule table (the manifest's `rules`, first match wins, task types
   matched case-insensitively): a fixed backend (`rule`), or a complexity
   score; a type no rule matches, or none, is scored as `unknown` says (by
   default from the rest of the metadata); at or over the threshold the cloud
   (`heavy_task`), else local (`light_task`);
4. capacity, for work headed local: among the local backends that are up,
   the least loaded one that has room: in-flight requests under its limit
   and its own load signal not full, and free GPU memory for the request's
   KV cache plus the reserve. None: overflow to the cloud (`local_busy`,
   `gpu_memory`, or `local_down` when none is up);
5. health: a backend whose circuit is open is down. Cloud down: a local
   backend (`cloud_down`), with a smaller tier when the chosen one's memory
   is short (`cloud_down_small_model`). Everything down: the backend the
   rules chose, with `all_down` (the router answers 503 unless it recovers
   within the request's deadline).

Free GPU memory comes from NVML where the backend runs on the router's host
and a fresh snapshot exists; otherwise it is the backend's configured capacity
less what the router's own in-flight requests to it reserved.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import NamedTuple

from .config import CLOUD, ESTIMATE, LOCAL, Model, Rule
from .settings import default

PREFERENCES = ("auto", LOCAL, CLOUD)

# Every reason decide() can give, for metrics and documentation.
REASONS = ("context_window", "preference_local", "preference_cloud", "rule", "heavy_task", "light_task",
           "local_busy", "gpu_memory", "cloud_down", "cloud_down_small_model", "local_down", "all_down")

THRESHOLD: float = default("threshold")
DEFAULT_MAX_TOKENS = 512  # the answer's length when a request does not say
RULE_CACHE = 4096  # task types whose rule lookup is remembered (clients choose the names: bounded)
_NO_RULE = (None, None)


@dataclass(frozen=True, slots=True)
class Backend:
    """A backend as the decision sees it: its name, its tiers (highest `above` first) and its limits."""

    name: str
    models: tuple[Model, ...]
    max_inflight: int = 1_000_000
    capacity: int = 0  # free GPU bytes assumed when nothing tells (local backends)

    @property
    def window(self) -> int:
        return max((m.context_window or 0) for m in self.models)


def backend(name: str, models, **limits) -> Backend:
    """A Backend with its tiers in decision order: highest `above` first, the written order among equals."""
    return Backend(name, tuple(sorted(models, key=lambda m: -m.above)), **limits)


@dataclass(frozen=True)
class PolicyConfig:
    locals: tuple[Backend, ...]  # the router's own first, then the peers
    cloud: Backend
    rules: tuple[Rule, ...] = field(default_factory=lambda: default("rules"))
    unknown: str | float = ESTIMATE
    threshold: float = THRESHOLD
    gpu_reserve: int = default("gpu.reserve")  # bytes kept free on each local backend's GPU
    # Derived, for the hot path:
    window: int = field(init=False)  # the largest local window
    index: dict[str, int] = field(init=False)  # backend name -> its position in the View
    _exact: dict[str, tuple] = field(init=False, repr=False)
    _patterns: tuple = field(init=False, repr=False)
    _cache: dict[str, tuple] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.locals:
            raise ValueError("at least one local backend")
        names = [b.name for b in self.locals] + [CLOUD]
        if len(set(names)) != len(names) or self.cloud.name != CLOUD:
            raise ValueError(f"backend names must differ and the cloud's be {CLOUD!r}: {names}")
        for b in self.locals:
            if any(m.context_window is None or m.kv_bytes_per_token is None for m in b.models):
                raise ValueError(f"backend {b.name}: every local model needs its context window and KV cache size")
        for b in self.locals + (self.cloud,):
            seen = [m.name for m in b.models]
            if len(set(seen)) != len(seen):
                raise ValueError(f"backend {b.name}: a model is listed twice ({', '.join(seen)})")
        targets = set(names) | {LOCAL}
        for r in self.rules:
            if r.backend is not None and r.backend not in targets:
                raise ValueError(f"rule {r.pattern}: no backend {r.backend!r} (backends: {', '.join(names)})")
        if isinstance(self.unknown, str) and self.unknown != ESTIMATE and self.unknown not in targets:
            raise ValueError(f"unknown: no backend {self.unknown!r} (backends: {', '.join(names)})")
        put = object.__setattr__
        put(self, "window", max(b.window for b in self.locals))
        put(self, "index", {name: i for i, name in enumerate(names)})
        exact: dict[str, tuple] = {}
        patterns = []
        for position, r in enumerate(self.rules):
            target = (r.score, r.backend)
            if re.escape(r.pattern) == r.pattern:  # a plain name: a dict lookup, not a regex
                exact.setdefault(r.pattern.lower(), (position, target))
            else:
                patterns.append((position, re.compile(r.pattern, re.IGNORECASE), target))
        put(self, "_exact", exact)
        put(self, "_patterns", tuple(patterns))
        put(self, "_cache", {})

    def rule_for(self, task_type: str) -> tuple[float | None, str | None]:
        """(score, backend) of the first rule matching `task_type` (case-insensitively), or (None, None)."""
        key = task_type.lower()
        hit = self._cache.get(key)
        if hit is not None:
            return hit
        found = self._exact.get(key)
        for position, pattern, target in self._patterns:
            if found is not None and found[0] < position:
                break
            if pattern.fullmatch(task_type):
                found = (position, target)
                break
        hit = _NO_RULE if found is None else found[1]
        if len(self._cache) < RULE_CACHE:
            self._cache[key] = hit
        return hit


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
    """What the decision reads of the world, one entry per backend (config.index: the locals, then the cloud);
    the router updates it in place."""

    up: list[bool]
    inflight: list[int]
    reserved: list[int]  # bytes the in-flight requests reserved (used without NVML)
    gpu_free: list[int | None]  # bytes free on the backend's GPU; None: unknown
    full: list[bool]  # the backend's own load signal says it takes no more

    @classmethod
    def of(cls, config: PolicyConfig) -> "View":
        n = len(config.index)
        return cls([True] * n, [0] * n, [0] * n, [None] * n, [False] * n)

    def copy(self) -> "View":
        return View(list(self.up), self.inflight, self.reserved, self.gpu_free, self.full)


class Decision(NamedTuple):
    backend: str  # a local backend's name or "cloud"
    model: str
    score: float
    reason: str


def score(config: PolicyConfig, task: Task) -> float:
    """Complexity in [0, 1]: the rule table's, else as `unknown` says."""
    return _classify(config, task)[0]


def _classify(config: PolicyConfig, task: Task) -> tuple[float, str | None]:
    """(score, fixed backend or None)."""
    if task.task_type is not None:
        value, fixed = config.rule_for(task.task_type)
        if value is not None:
            return value, None
        if fixed is not None:
            return _estimate(config, task), fixed
    if task.complexity is not None:
        return task.complexity, None
    unknown = config.unknown
    if unknown == ESTIMATE:
        return _estimate(config, task), None
    if isinstance(unknown, float):
        return unknown, None
    return _estimate(config, task), unknown


def _estimate(config: PolicyConfig, task: Task) -> float:
    # Start below the threshold, and let a long context, a long answer and
    # tool use push it over (a full window alone reaches 0.8).
    if task.complexity is not None:
        return task.complexity
    value = 0.35 + 0.45 * min(1.0, task.context_tokens / config.window)
    if task.max_tokens:
        value += 0.2 * min(1.0, task.max_tokens / 2048)
    if task.tools:
        value += 0.1
    return min(1.0, value)


def _tier(models: tuple[Model, ...], value: float, tokens: int) -> Model | None:
    """The highest tier `value` reaches among those whose window holds `tokens`; else the lowest that holds them."""
    fallback = None
    for m in models:
        window = m.context_window
        if window is not None and window < tokens:
            continue
        if m.above <= value:
            return m
        fallback = m
    return fallback


def decide(config: PolicyConfig, task: Task, view: View) -> Decision:
    """The backend and model for `task` now; see the module's docstring for the rules."""
    tokens = task.context_tokens + (task.max_tokens or DEFAULT_MAX_TOKENS)
    value, fixed = _classify(config, task)
    cloud = config.cloud

    if tokens > config.window:
        return Decision(CLOUD, _tier(cloud.models, value, 0).name, value, "context_window")

    preference = task.preference
    if preference == CLOUD:
        want, reason = CLOUD, "preference_cloud"
    elif preference == LOCAL:
        want, reason = LOCAL, "preference_local"
    elif fixed is not None:
        want, reason = fixed, "rule"
    elif value >= config.threshold:
        want, reason = CLOUD, "heavy_task"
    else:
        want, reason = LOCAL, "light_task"

    up = view.up
    cloud_up = up[-1]
    if want == CLOUD:
        if cloud_up:
            return Decision(CLOUD, _tier(cloud.models, value, 0).name, value, reason)
        return _without_cloud(config, view, tokens, value, want)

    # Headed local: the rule's backend if it has room, else the least loaded one with room.
    prefer = -1 if want == LOCAL else config.index[want]
    best = None
    best_load = 2.0
    why = None
    for i, b in enumerate(config.locals):
        if not up[i]:
            continue
        model = _tier(b.models, value, tokens)
        if model is None:
            continue
        inflight = view.inflight[i]
        if inflight >= b.max_inflight or view.full[i]:
            why = why or "local_busy"
            continue
        if _free(config, view, i) < model.kv_bytes_per_token * tokens:
            why = why or "gpu_memory"
            continue
        if i == prefer:
            return Decision(b.name, model.name, value, reason)
        load = inflight / b.max_inflight
        if load < best_load:
            best, best_load = (b, model), load
    if best is not None:
        return Decision(best[0].name, best[1].name, value, reason)
    if cloud_up:
        return Decision(CLOUD, _tier(cloud.models, value, 0).name, value, why or "local_down")
    return _without_cloud(config, view, tokens, value, want)


def _free(config: PolicyConfig, view: View, i: int) -> int:
    """Free GPU bytes of local backend `i` for a request: NVML's figure, else its capacity less the
    router's own reservations there; less the reserve either way."""
    free = view.gpu_free[i]
    if free is None:
        free = config.locals[i].capacity - view.reserved[i]
    return free - config.gpu_reserve


def _without_cloud(config: PolicyConfig, view: View, tokens: int, value: float, want: str) -> Decision:
    """The cloud is down: a local backend up (one with room first, then a busy one) whose chosen tier fits,
    else a smaller tier that fits; none up: `want`, the backend the rules chose, with all_down."""
    up = [i for i in range(len(config.locals)) if view.up[i]]
    # Those with room first (in order), then the busy ones: the cloud is no way out for either.
    up.sort(key=lambda i: view.inflight[i] >= config.locals[i].max_inflight or view.full[i])
    first = None
    for i in up:
        b = config.locals[i]
        model = _tier(b.models, value, tokens)
        if model is None:
            continue
        if _free(config, view, i) >= model.kv_bytes_per_token * tokens:
            return Decision(b.name, model.name, value, "cloud_down")
        if first is None:
            first = Decision(b.name, model.name, value, "cloud_down")
    if first is None:
        if want == CLOUD:
            return Decision(CLOUD, _tier(config.cloud.models, value, 0).name, value, "all_down")
        b = config.locals[0 if want == LOCAL else config.index[want]]
        return Decision(b.name, (_tier(b.models, value, tokens) or b.models[-1]).name, value, "all_down")
    for i in up:
        b = config.locals[i]
        free = _free(config, view, i)
        for m in b.models:
            if m.above <= value and m.context_window >= tokens and free >= m.kv_bytes_per_token * tokens:
                return Decision(b.name, m.name, value, "cloud_down_small_model")
    return first


def reservation(config: PolicyConfig, decision: Decision, task: Task) -> int:
    """The GPU bytes a local request holds while in flight (its KV cache); 0 for the cloud."""
    i = config.index[decision.backend]
    if i >= len(config.locals):
        return 0
    for m in config.locals[i].models:
        if m.name == decision.model:
            return m.kv_bytes_per_token * (task.context_tokens + (task.max_tokens or DEFAULT_MAX_TOKENS))
    return 0
