"""The router's structured settings: the rule table, model tiers and peer backends.

Each has two written forms that parse to the same values through the same field
parsers: the manifest's YAML (a mapping, a list of mappings) and the text of an
agentkit-router option, which `agentkit render` writes from the manifest:

    rules:     training|fine_tuning: 1.0          --rule 'training|fine_tuning=1.0'
               translation: cloud                 --rule 'translation=cloud'
    a tier:    {name: llama2-13b, above: 0.7,     --local-tier 'llama2-13b above=0.7 context_window=4096'
                context_window: 4096}
    a peer:    pc2: {url: ..., max_inflight: 2,   --peer 'pc2 url=http://... max_inflight=2; llama2-7b above=0.5'
                     models: [{name: llama2-7b, above: 0.5}]}

A rule's key is a regular expression matched against the whole task type,
case-insensitively; its value is a complexity score (0..1) or a fixed backend
(`local`: any local backend, `cloud`, or a peer's name).
"""

from __future__ import annotations

import difflib
import re
from re import _constants as re_constants, _parser as re_parser  # the pattern's parse tree, as re builds it
from dataclasses import dataclass, fields
from typing import Any, Callable

from .. import parsers, values

LOCAL = "local"
CLOUD = "cloud"
ESTIMATE = "estimate"  # unknown task types: scored from the request's size, answer length and tools
LOADS = ("none", "slots", "metrics")  # a peer's own load signal: llama.cpp's /slots, a /metrics page
BACKEND_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
MAX_PRICE = 10_000.0  # USD per million tokens


@dataclass(frozen=True, slots=True)
class Rule:
    pattern: str  # as written
    score: float | None  # a complexity score, or
    backend: str | None  # a fixed backend: local, cloud or a peer's name


@dataclass(frozen=True, slots=True)
class Model:
    """One tier: a model a backend serves, chosen for complexity from `above` up."""

    name: str
    above: float = 0.0
    context_window: int | None = None  # tokens, prompt and answer; None: the section's default (cloud: no limit)
    kv_bytes_per_token: int | None = None  # None: the section's default (the cloud: not counted)
    input_price: float = 0.0  # USD per million prompt tokens
    output_price: float = 0.0  # USD per million answer tokens


@dataclass(frozen=True, slots=True)
class Peer:
    """A local backend other than the router's own: an OpenAI-compatible server on a GPU host."""

    name: str
    url: str
    models: tuple[Model, ...]
    max_inflight: int = 4
    load: str = "none"
    gpu: int | None = None  # NVML index, where the peer runs on the router's own host
    capacity: int | None = None  # free GPU memory assumed without NVML; None: gpu.capacity


def _price(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= MAX_PRICE:
        raise ValueError(f"expected a price in USD per million tokens (0 to {MAX_PRICE:g}), got {parsers.show(value)}")
    return float(value)


NUMBER_WORDS = ("nan", "inf", "infinity")  # backend names that would read as numbers in an option's text


def _backend_name(value: Any) -> str:
    text = parsers.text(value)
    if not BACKEND_NAME.match(text) or text == CLOUD or text in NUMBER_WORDS:
        raise ValueError(f"a backend name is lower-case letters, digits, '_' and '-' (at most 32), not 'cloud' "
                         f"nor a number's word; got {parsers.show(value)}")
    return text


# field -> (parser, the dataclass attribute); the manifest's keys and the options' words alike
MODEL_FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "above": (parsers.fraction, "above"),
    "context_window": (parsers.whole(1, 10_000_000), "context_window"),
    "kv_cache_per_token": (parsers.size, "kv_bytes_per_token"),
    "input_price": (_price, "input_price"),
    "output_price": (_price, "output_price"),
}
# A cloud model's window and KV cache are the cloud's business: the decision counts neither.
CLOUD_MODEL_FIELDS = {k: v for k, v in MODEL_FIELDS.items() if k in ("above", "input_price", "output_price")}
PEER_FIELDS: dict[str, tuple[Callable[[Any], Any], str]] = {
    "url": (parsers.url, "url"),
    "max_inflight": (parsers.whole(1, 100_000), "max_inflight"),
    "load": (parsers.choice(*LOADS), "load"),
    "gpu": (parsers.whole(0, 63), "gpu"),
    "capacity": (parsers.size, "capacity"),
}
# Manifest-only keys of a peer: where it runs (NVML is read where that is the router's host) and its models.
PEER_MANIFEST_KEYS = ("host", "model", "models")


# --- the manifest's forms -------------------------------------------------------------------

def rules(value: Any) -> tuple[Rule, ...]:
    """The rule table: {PATTERN: SCORE | BACKEND}, in order (the first match wins)."""
    if value == {}:
        raise ValueError("the rule table is empty: give at least one rule, or leave rules out for the default table")
    if not isinstance(value, dict):
        raise ValueError(f"expected the rule table, a mapping of task types (or patterns such as training|fine_tuning) "
                         f"to a complexity score or a backend, got {parsers.show(value)}")
    out, problems = [], []
    for pattern, target in value.items():
        try:
            out.append(rule(pattern, target))
        except ValueError as exc:
            problems.append(((pattern,), str(exc)))
    if problems:
        raise parsers.Many(problems)
    return tuple(out)


def rule(pattern: Any, target: Any) -> Rule:
    if not isinstance(pattern, str) or not pattern:
        raise ValueError(f"a task type or pattern is text, got {parsers.show(pattern)}")
    try:
        parsed = re_parser.parse(pattern)
        re.compile(pattern)
    except re.error as exc:
        raise ValueError(f"{pattern!r} is not a regular expression: {exc}") from None
    if _nested_repeat(parsed):
        # Clients choose the task type (up to 200 characters): '(a+)+' against 'aaa...!'
        # backtracks for ever, and Python's re has no time limit.
        raise ValueError(f"{pattern!r} repeats a repetition, such as (a+)+: matching it against a task type "
                         "could take exponential time; write it without the nested repeat")
    if isinstance(target, str):
        return Rule(pattern, None, _target(target))
    try:
        return Rule(pattern, parsers.fraction(target), None)
    except ValueError:
        raise ValueError(f"expected a complexity score from 0 to 1, or a backend (local, cloud or a peer's name), "
                         f"got {parsers.show(target)}") from None


_REPEATS = (re_constants.MAX_REPEAT, re_constants.MIN_REPEAT, re_constants.POSSESSIVE_REPEAT)


def _nested_repeat(parsed, inside: bool = False) -> bool:
    """Whether a repeat (of more than one) holds another: the star height that makes a
    backtracking matcher exponential."""
    for op, av in parsed:
        if op in _REPEATS:
            low, high, body = av
            many = high > 1
            if (inside and many) or _nested_repeat(body, inside or many):
                return True
        elif op == re_constants.SUBPATTERN:
            if _nested_repeat(av[-1], inside):
                return True
        elif op == re_constants.BRANCH:
            if any(_nested_repeat(branch, inside) for branch in av[1]):
                return True
        elif op in (re_constants.ASSERT, re_constants.ASSERT_NOT):
            if _nested_repeat(av[1], inside):
                return True
    return False


def _target(text: str) -> str:
    if text in (LOCAL, CLOUD):
        return text
    return _backend_name(text)


def unknown(value: Any) -> str | float:
    """How task types no rule matches are scored: `estimate`, a fixed score, or a backend."""
    if value == ESTIMATE:
        return ESTIMATE
    if isinstance(value, str):
        try:
            return _target(value)
        except ValueError:
            pass
    try:
        return parsers.fraction(value)
    except ValueError:
        raise ValueError(f"expected `estimate` (from the request's size, answer length and tools), a complexity "
                         f"score from 0 to 1, or a backend (local, cloud or a peer's name), got {parsers.show(value)}"
                         ) from None


def tiers(cloud: bool) -> Callable[[Any], tuple[Model, ...]]:
    """A backend's models: a list of {name, above, ...} (or bare names)."""
    known = CLOUD_MODEL_FIELDS if cloud else MODEL_FIELDS

    def parse(value: Any) -> tuple[Model, ...]:
        if value == []:
            raise ValueError("the list of models is empty: give at least one, {name: ..., above: 0.5, ...}")
        if not isinstance(value, list):
            raise ValueError(f"expected a list of models, each {{name: ..., above: 0.5, ...}}, got {parsers.show(value)}")
        models = tuple(parsers.each(enumerate(value), lambda _, item: _model(item, known)))
        names = [m.name for m in models]
        twice = [(index,) for index, name in enumerate(names) if name in names[:index]]
        if twice:
            raise parsers.Many([(where, f"model {names[where[0]]!r} is listed already") for where in twice])
        return models
    return parse


def _model(item: Any, known: dict) -> Model:
    if isinstance(item, str):
        return Model(parsers.model_name(item))
    if not isinstance(item, dict) or "name" not in item:
        raise ValueError(f"expected a model, {{name: ..., above: 0.5, ...}}, got {parsers.show(item)}")
    out: dict[str, Any] = {}
    problems: list[tuple[tuple, str]] = []
    try:
        out["name"] = parsers.model_name(item["name"])
    except ValueError as exc:
        problems.append((("name",), str(exc)))
    for key, raw in item.items():
        if key == "name":
            continue
        if key not in known:
            hint = difflib.get_close_matches(str(key), list(known), n=1, cutoff=0.6)
            problems.append(((key,), f"unknown key (did you mean {hint[0]!r}?)" if hint else
                             f"unknown key (known: name, {', '.join(known)})"))
            continue
        parse, attribute = known[key]
        try:
            out[attribute] = parse(raw)
        except ValueError as exc:
            problems.append(((key,), str(exc)))
    if problems:
        raise parsers.Many(problems)
    return Model(**out)


def peers(value: Any) -> tuple[tuple[Peer, str | None], ...]:
    """{NAME: {url, host, max_inflight, load, gpu, capacity, models | model}}: each peer and the host it runs on."""
    if not isinstance(value, dict) or not value:
        raise ValueError(f"expected the peers, a mapping of names to {{url: ..., models: [...]}}, got {parsers.show(value)}")
    out, problems = [], []
    for name, raw in value.items():
        try:
            out.append(_peer(name, raw))
        except parsers.Many as exc:
            problems += [((name,) + sub, message) for sub, message in exc.problems]
        except ValueError as exc:
            problems.append(((name,), str(exc)))
    if problems:
        raise parsers.Many(problems)
    return tuple(out)


def _peer(name: Any, raw: Any) -> tuple[Peer, str | None]:
    name = _backend_name(name)
    if not isinstance(raw, dict):
        raise ValueError(f"expected the peer's settings, {{url: ..., models: [...]}}, got {parsers.show(raw)}")
    problems: list[tuple[tuple, str]] = []
    settings: dict[str, Any] = {}
    for key, item in raw.items():
        if key in PEER_FIELDS:
            parse, attribute = PEER_FIELDS[key]
            try:
                settings[attribute] = parse(item)
            except ValueError as exc:
                problems.append(((key,), str(exc)))
        elif key not in PEER_MANIFEST_KEYS:
            known = list(PEER_FIELDS) + list(PEER_MANIFEST_KEYS)
            hint = difflib.get_close_matches(str(key), known, n=1, cutoff=0.6)
            problems.append(((key,), f"unknown key (did you mean {hint[0]!r}?)" if hint else
                             f"unknown key (known: {', '.join(known)})"))
    if "url" not in raw:
        problems.append(((), "missing url: the peer's OpenAI base URL"))
    models: tuple[Model, ...] = ()
    if ("model" in raw) == ("models" in raw):
        problems.append(((), "give its model (model: NAME) or its tiers (models: [{name: ..., above: ...}]), one of the two"))
    elif "model" in raw:
        try:
            models = (Model(parsers.model_name(raw["model"])),)
        except ValueError as exc:
            problems.append((("model",), str(exc)))
    else:
        try:
            models = tiers(cloud=False)(raw["models"])
        except parsers.Many as exc:
            problems += [(("models",) + sub, message) for sub, message in exc.problems]
        except ValueError as exc:
            problems.append((("models",), str(exc)))
    host = raw.get("host")
    if host is not None and not isinstance(host, str):
        problems.append((("host",), f"expected a host of hosts:, got {parsers.show(host)}"))
    if problems:
        raise parsers.Many(problems)
    return Peer(name, models=models, **settings), host


# --- the options' text forms --------------------------------------------------------------

def _word_value(text: str) -> Any:
    """An option word's value as YAML would have given it: a number where it reads as one."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def _pairs(words: list[str], known: dict, what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for word in words:
        key, sep, raw = word.partition("=")
        if not sep or key not in known:
            raise ValueError(f"{what}: expected KEY=VALUE with KEY one of {', '.join(known)}, got {word!r}")
        parse, attribute = known[key]
        try:
            out[attribute] = parse(_word_value(raw))
        except ValueError as exc:
            raise ValueError(f"{what}: {key}: {exc}") from None
    return out


def rule_from_text(text: str) -> Rule:
    pattern, sep, target = text.rpartition("=")
    if not sep:
        raise ValueError(f"expected PATTERN=SCORE or PATTERN=BACKEND, got {text!r}")
    return rule(pattern, _word_value(target))


def unknown_from_text(text: str) -> str | float:
    return unknown(_word_value(text))


def model_from_text(text: str, cloud: bool) -> Model:
    words = text.split()
    if not words:
        raise ValueError("expected NAME [KEY=VALUE...], got nothing")
    name = parsers.model_name(words[0])
    return Model(name, **_pairs(words[1:], CLOUD_MODEL_FIELDS if cloud else MODEL_FIELDS, f"model {name}"))


def peer_from_text(text: str) -> Peer:
    head, *models = [part.strip() for part in text.split(";")]
    words = head.split()
    if not words:
        raise ValueError(f"expected NAME url=URL [KEY=VALUE...][; MODEL [KEY=VALUE...]]..., got {text!r}")
    name = _backend_name(words[0])
    settings = _pairs(words[1:], PEER_FIELDS, f"peer {name}")
    if "url" not in settings:
        raise ValueError(f"peer {name}: url=URL is missing")
    if not models or not all(models):
        raise ValueError(f"peer {name}: give its models after ';', e.g. '{name} url=...; llama2-7b above=0.5'")
    return Peer(name, models=tuple(model_from_text(m, cloud=False) for m in models), **settings)


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, float) else str(value)  # repr: every digit, so the value comes back


def rule_text(rule: Rule) -> str:
    return f"{rule.pattern}={rule.backend if rule.backend is not None else _text(rule.score)}"


def model_text(model: Model, cloud: bool) -> str:
    words = [model.name]
    defaults = {f.name: f.default for f in fields(Model)}
    for key, (_, attribute) in (CLOUD_MODEL_FIELDS if cloud else MODEL_FIELDS).items():
        value = getattr(model, attribute)
        if value is None or value == defaults[attribute]:
            continue
        words.append(f"{key}={values.format_size(value) if key == 'kv_cache_per_token' else _text(value)}")
    return " ".join(words)


def peer_text(peer: Peer) -> str:
    words = [peer.name]
    defaults = {f.name: f.default for f in fields(Peer)}
    for key, (_, attribute) in PEER_FIELDS.items():
        value = getattr(peer, attribute)
        if value is None or (attribute != "url" and value == defaults[attribute]):
            continue
        words.append(f"{key}={values.format_size(value) if key == 'capacity' else _text(value)}")
    return "; ".join([" ".join(words)] + [model_text(m, cloud=False) for m in peer.models])
