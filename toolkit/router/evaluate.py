"""agentkit-router eval: a labelled set of tasks through the router's own decision.

    agentkit-router eval FILE [--manifest DIR] [--repeat N] [--json] [--min-accuracy X]

The decision evaluated is the one the rendered unit would run: the manifest's
`router:` section becomes agentkit-router's command line (router_command, as
`agentkit render` writes it), and that command line is parsed by the router's
own options and turned into its PolicyConfig by the router's own `policy_of`.

FILE holds one labelled task a line (JSON):

    {"id": "code-gen-cloud-down",
     "task": {"task_type": "code_generation", "context_tokens": 800},
     "state": {"cloud": {"up": false}, "local": {"gpu_free": "6G"}},
     "expect": {"backend": "local", "model": "llama2-13b", "reason": "cloud_down"},
     "note": "why a user expects that"}

`task` takes task_type, context_tokens, max_tokens, preference, tools and
complexity, all optional; `state` each backend's up, inflight, gpu_free (a size,
or null: unknown) and full, all optional (a backend not named is up, idle, its
free GPU memory unknown); `expect` the backend, and optionally the model and
the reason. A task is right when the decision's backend is the expected one,
and its model and reason where the label gives them.

Exit status: 0; 1 when overall accuracy is under --min-accuracy; 2 when the
manifest or FILE is wrong (every problem named, FILE:LINE and the field).
"""

from __future__ import annotations

import gc
import json
import math
import os
import time
from dataclasses import dataclass
from typing import Any

import click

from .. import manifest as manifest_loader
from ..errors import AgentkitError
from ..output import table
from ..values import parse_size
from . import main as router_main
from . import policy
from .inbound import MAX_TOKENS_LIMIT, json_kind  # what a live request may say, and how it is named
from .command import router_command
from .config import CLOUD
from .policy import PolicyConfig, Task, View

DECISIONS = 100_000  # the latency figures' default sample: passes over the set until about this many
TASK_KEYS = ("task_type", "context_tokens", "max_tokens", "preference", "tools", "complexity")
STATE_KEYS = ("up", "inflight", "gpu_free", "full")
EXPECT_KEYS = ("backend", "model", "reason")
CASE_KEYS = ("id", "task", "state", "expect", "note")


class EvalError(click.ClickException):
    """The manifest or the labelled file is wrong: exit 2, every problem on its own line."""

    exit_code = 2

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


@dataclass(frozen=True)
class Case:
    id: str
    line: int
    task: Task
    view: View
    backend: str
    model: str | None
    reason: str | None


# --- the router's decision, built as the rendered unit builds it ------------------------------------

def router_of(directory: str) -> tuple[PolicyConfig, tuple, str]:
    """The PolicyConfig and the backends' endpoints agentkit-router would run from the manifest under
    `directory`, and where its router section is (for the report); EvalError for a manifest's problems."""
    try:
        m = manifest_loader.load(directory)
    except AgentkitError as exc:
        raise EvalError(str(exc)) from None
    if m.router is None:
        raise EvalError(f"{os.path.join(directory, 'fleet.yaml')}: the manifest has no router section "
                        f"(router: in its fleet file), so there is no decision to evaluate")
    argv = [word for group in router_command(m.router, "/unused") for word in group][1:]
    try:
        ctx = router_main.main.make_context("agentkit-router", argv)
        config, endpoints = router_main.policy_of(router_main.options_of(ctx.params))
    except click.ClickException as exc:
        raise EvalError(f"{m.router.where}: the router's options from this section: {exc.format_message()}") from None
    return config, endpoints, str(m.router.where)


def load_policy(directory: str) -> tuple[PolicyConfig, str]:
    """The PolicyConfig agentkit-router would run from the manifest under `directory`, and where its router
    section is."""
    config, _, where = router_of(directory)
    return config, where


# --- the labelled file --------------------------------------------------------------------------

def _whole(value: Any, low: int, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_TOKENS_LIMIT:
        raise ValueError(f"expected {what} ({low}-{MAX_TOKENS_LIMIT}), got {json.dumps(value)}")
    return value


def _flag(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {json_kind(value)}")
    return value


def _task(raw: Any) -> Task:
    if not isinstance(raw, dict):
        raise _Field("task", f"expected an object of {', '.join(TASK_KEYS)}, got {json_kind(raw)}")
    task = Task()
    for key, value in raw.items():
        try:
            if key == "task_type":
                if value is not None and (not isinstance(value, str) or not 1 <= len(value) <= 200):
                    raise ValueError(f"expected a task type name (text, 1-200 characters) or null, got {json.dumps(value)}")
                task.task_type = value
            elif key == "context_tokens":
                task.context_tokens = _whole(value, 0, "a whole number of tokens")
            elif key == "max_tokens":
                task.max_tokens = None if value is None else _whole(value, 1, "a whole number of tokens, or null")
            elif key == "preference":
                if value not in policy.PREFERENCES:
                    raise ValueError(f"expected one of {', '.join(policy.PREFERENCES)}, got {json.dumps(value)}")
                task.preference = value
            elif key == "tools":
                task.tools = _flag(value)
            elif key == "complexity":
                if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))
                                          or not 0 <= value <= 1):
                    raise ValueError(f"expected a number from 0 to 1, or null, got {json.dumps(value)}")
                task.complexity = None if value is None else float(value)
            else:
                raise ValueError(f"unknown key (known: {', '.join(TASK_KEYS)})")
        except ValueError as exc:
            raise _Field(f"task.{key}", str(exc)) from None
    return task


def _view(raw: Any, config: PolicyConfig) -> View:
    view = View.of(config)
    if not isinstance(raw, dict):
        raise _Field("state", f"expected an object of backends ({', '.join(config.index)}), got {json_kind(raw)}")
    for name, entry in raw.items():
        if name not in config.index:
            raise _Field(f"state.{name}", f"no such backend (backends: {', '.join(config.index)})")
        i = config.index[name]
        if not isinstance(entry, dict):
            raise _Field(f"state.{name}", f"expected an object of {', '.join(STATE_KEYS)}, got {json_kind(entry)}")
        for key, value in entry.items():
            try:
                if key == "up":
                    view.up[i] = _flag(value)
                elif key == "inflight":
                    view.inflight[i] = _whole(value, 0, "a whole number of requests")
                elif key == "gpu_free":
                    if i >= len(config.locals):
                        raise ValueError("the cloud has no GPU memory of ours")
                    # 0 (or "0"): a full GPU, a real state; parse_size takes only positive sizes.
                    view.gpu_free[i] = None if value is None else 0 if value in (0, "0") else parse_size(value)
                elif key == "full":
                    view.full[i] = _flag(value)
                else:
                    raise ValueError(f"unknown key (known: {', '.join(STATE_KEYS)})")
            except ValueError as exc:
                raise _Field(f"state.{name}.{key}", str(exc)) from None
    return view


def _expect(raw: Any, config: PolicyConfig) -> tuple[str, str | None, str | None]:
    if not isinstance(raw, dict):
        raise _Field("expect", f"expected an object {{backend, model, reason}}, got {json_kind(raw)}")
    for key in raw:
        if key not in EXPECT_KEYS:
            raise _Field(f"expect.{key}", f"unknown key (known: {', '.join(EXPECT_KEYS)})")
    backend = raw.get("backend")
    if not isinstance(backend, str) or backend not in config.index:
        raise _Field("expect.backend", f"expected a backend ({', '.join(config.index)}), got {json.dumps(backend)}")
    model = raw.get("model")
    if model is not None:
        served = [m.name for m in _backend(config, backend).models]
        if model not in served:
            raise _Field("expect.model", f"{backend} serves no model {json.dumps(model)} (it serves {', '.join(served)})")
    reason = raw.get("reason")
    if reason is not None and reason not in policy.REASONS:
        raise _Field("expect.reason", f"expected one of {', '.join(policy.REASONS)}, got {json.dumps(reason)}")
    return backend, model, reason


class _Field(ValueError):
    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def _backend(config: PolicyConfig, name: str) -> policy.Backend:
    i = config.index[name]
    return config.locals[i] if i < len(config.locals) else config.cloud


def read_cases(path: str, config: PolicyConfig) -> list[Case]:
    """The labelled tasks of `path`; EvalError naming FILE:LINE and the field of every bad line."""
    try:
        with open(path, encoding="utf-8") as handle:
            lines = handle.read().splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise EvalError(f"{path}: cannot read: {getattr(exc, 'strerror', None) or exc}") from None
    cases, problems, seen = [], [], {}
    for number, text in enumerate(lines, 1):
        if not text.strip():
            continue
        where = f"{path}:{number}"
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            problems.append(f"{where}: not JSON: {exc.msg} at column {exc.colno}")
            continue
        try:
            if not isinstance(raw, dict):
                raise _Field("", f"expected an object {{id, task, state, expect}}, got {json_kind(raw)}")
            for key in raw:
                if key not in CASE_KEYS:
                    raise _Field(key, f"unknown key (known: {', '.join(CASE_KEYS)})")
            case_id = raw.get("id")
            if not isinstance(case_id, str) or not case_id:
                raise _Field("id", f"expected the task's id (text), got {json.dumps(case_id)}")
            if case_id in seen:
                raise _Field("id", f"{case_id!r} is the id of line {seen[case_id]} too")
            seen[case_id] = number
            if "expect" not in raw:
                raise _Field("expect", "missing: the expected backend, {\"backend\": NAME}")
            if "note" in raw and not isinstance(raw["note"], str):
                raise _Field("note", f"expected text, got {json_kind(raw['note'])}")
            task = _task(raw.get("task", {}))
            view = _view(raw.get("state", {}), config)
            backend, model, reason = _expect(raw["expect"], config)
        except _Field as exc:
            problems.append(f"{where}: {exc.field}: {exc}" if exc.field else f"{where}: {exc}")
            continue
        cases.append(Case(case_id, number, task, view, backend, model, reason))
    if problems:
        raise EvalError("\n".join(problems))
    if not cases:
        raise EvalError(f"{path}: no labelled tasks (one JSON object a line)")
    return cases


# --- the evaluation ---------------------------------------------------------------------------

def _rate(right: int, total: int) -> dict:
    return {"tasks": total, "right": right, "accuracy": right / total if total else None}


def evaluate(config: PolicyConfig, cases: list[Case], repeat: int) -> dict:
    names = list(config.index)
    decisions = [policy.decide(config, c.task, c.view) for c in cases]
    right = [d.backend == c.backend and c.model in (None, d.model) and c.reason in (None, d.reason)
             for c, d in zip(cases, decisions)]

    backends: dict[str, list[int]] = {}
    models: dict[str, dict[str, list[int]]] = {}
    for c, ok in zip(cases, right):
        groups = [backends.setdefault(c.backend, [0, 0])]
        if c.model:
            groups.append(models.setdefault(c.backend, {}).setdefault(c.model, [0, 0]))
        for counts in groups:
            counts[0] += ok
            counts[1] += 1
    confusion = {expected: {got: 0 for got in names} for expected in names}
    for c, d in zip(cases, decisions):
        confusion[c.backend][d.backend] += 1

    cost = 0.0
    for c, d in zip(cases, decisions):
        model = next(m for m in _backend(config, d.backend).models if m.name == d.model)
        answer = c.task.max_tokens or policy.DEFAULT_MAX_TOKENS
        cost += (c.task.context_tokens * model.input_price + answer * model.output_price) / 1e6

    latency = _latency(config, cases, repeat)
    n = len(cases)
    return {
        "tasks": n,
        "right": sum(right),
        "accuracy": sum(right) / n,
        "backends": {name: _rate(*backends[name]) for name in names if name in backends},
        "models": {name: {m.name: _rate(*models[name][m.name]) for m in _backend(config, name).models
                          if m.name in models[name]}
                   for name in names if name in models},  # in tier order
        "confusion": confusion,
        "cloud_share": sum(d.backend == CLOUD for d in decisions) / n,
        "cost_per_1000": cost / n * 1000,
        "latency": latency,
        "misrouted": [{"id": c.id, "line": c.line,
                       "expected": {k: v for k, v in (("backend", c.backend), ("model", c.model),
                                                      ("reason", c.reason)) if v is not None},
                       "got": {"backend": d.backend, "model": d.model, "reason": d.reason, "score": round(d.score, 4)}}
                      for c, d, ok in zip(cases, decisions, right) if not ok],
    }


def _latency(config: PolicyConfig, cases: list[Case], repeat: int) -> dict:
    """Each decide() call timed on its own (perf_counter_ns), `repeat` passes over the set after one untimed one."""
    pairs = [(c.task, c.view) for c in cases]
    decide = policy.decide
    for task, view in pairs:  # warm: the rule lookups' cache, the interpreter's specialisation
        decide(config, task, view)
    clock = time.perf_counter_ns
    samples = [0] * (len(pairs) * repeat)
    k = 0
    gc.collect()
    for _ in range(repeat):
        for task, view in pairs:
            t0 = clock()
            decide(config, task, view)
            samples[k] = clock() - t0
            k += 1
    samples.sort()

    def at(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] / 1000.0

    return {"decisions": len(samples), "passes": repeat, "p50_us": at(0.5), "p99_us": at(0.99)}


# --- the report -------------------------------------------------------------------------------

def _percent(value: float | None) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def _label(entry: dict) -> str:
    words = [entry["backend"]]
    if entry.get("model"):
        words.append(entry["model"])
    if entry.get("reason"):
        words.append(f"({entry['reason']})")
    return " ".join(words)


def report(result: dict) -> str:
    rows = [("EXPECTED", "TASKS", "RIGHT", "ACCURACY")]
    for name, rate in result["backends"].items():
        rows.append((name, str(rate["tasks"]), str(rate["right"]), _percent(rate["accuracy"])))
        for model, model_rate in result["models"].get(name, {}).items():
            rows.append((f"  {model}", str(model_rate["tasks"]), str(model_rate["right"]),
                         _percent(model_rate["accuracy"])))
    rows.append(("all", str(result["tasks"]), str(result["right"]), _percent(result["accuracy"])))
    title = (f"{result['file']}: {result['tasks']} labelled tasks through the router of {result['manifest']} "
             f"(backends {', '.join(result['confusion'])})")
    out = [title, "", _right_aligned(rows),
           "right: the backend, and the model and reason where the label gives them", ""]

    names = list(result["confusion"])
    grid = [("EXPECTED \\ DECIDED",) + tuple(names)]
    for expected in names:
        if any(result["confusion"][expected].values()):
            grid.append((expected,) + tuple(str(result["confusion"][expected][got]) for got in names))
    out += [_right_aligned(grid), ""]

    latency = result["latency"]
    out.append(table([
        ("sent to the cloud", f"{_percent(result['cloud_share'])} of requests"),
        ("estimated cost", (f"${result['cost_per_1000']:.4g} per 1,000 requests (prompt: context_tokens, answer: "
                            f"max_tokens or {policy.DEFAULT_MAX_TOKENS}; the manifest's prices)")),
        ("decision latency", (f"p50 {latency['p50_us']:.2f} us, p99 {latency['p99_us']:.2f} us "
                              f"({latency['decisions']:,} decisions, {latency['passes']:,} passes)")),
    ], last_free=True))
    out.append("")
    misrouted = result["misrouted"]
    if not misrouted:
        out.append("misrouted: none")
    else:
        out.append(f"misrouted: {len(misrouted)}")
        rows = [("ID", "LINE", "EXPECTED", "GOT", "SCORE")]
        for m in misrouted:
            rows.append((m["id"], str(m["line"]), _label(m["expected"]), _label(m["got"]), f"{m['got']['score']:.3g}"))
        out.append(table(rows, last_free=True))
    return "\n".join(out)


def _right_aligned(rows: list[tuple[str, ...]]) -> str:
    """The first column to the left, the numbers to the right."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
                     for r in rows)


# --- the command --------------------------------------------------------------------------------

@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.argument("file", metavar="FILE")
@click.option("--manifest", "manifest_dir", default="agents", metavar="DIR",
              help="the manifest whose router section makes the decision")
@click.option("--repeat", type=click.IntRange(min=1), default=None, metavar="N",
              help=f"passes over the set for the latency figures  [default: about {DECISIONS:,} decisions]")
@click.option("--json", "as_json", is_flag=True, help="the report as JSON")
@click.option("--min-accuracy", type=click.FloatRange(0, 1), default=None, metavar="X",
              help="exit 1 when overall accuracy (0-1) is under X")
def command(file: str, manifest_dir: str, repeat: int | None, as_json: bool, min_accuracy: float | None) -> None:
    """Run the labelled tasks of FILE (JSON lines) through the router's decision, as the manifest's router
    section configures it, and report accuracy, the confusion table, the cloud's share, the cost and the
    decision's latency."""
    config, where = load_policy(manifest_dir)
    cases = read_cases(file, config)
    if repeat is None:
        repeat = max(1, math.ceil(DECISIONS / len(cases)))
    result = {"file": file, "manifest": where, **evaluate(config, cases, repeat)}
    click.echo(json.dumps(result, indent=2) if as_json else report(result))
    if min_accuracy is not None and result["accuracy"] < min_accuracy:
        click.echo(f"accuracy {_percent(result['accuracy'])} is under --min-accuracy {_percent(min_accuracy)}", err=True)
        raise SystemExit(1)
