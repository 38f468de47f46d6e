"""Reading a client's request: OpenAI-compatible JSON in, a routing Task and a clean payload out.

Task metadata travels in the request's `metadata` object, which the official
`openai` client sends as a documented parameter of chat completions
(`metadata={"task_type": "code_generation"}`) and as `extra_body` elsewhere;
or in `X-Agentkit-*` headers (`extra_headers=`). The router's own keys are
taken out of `metadata` before the request goes on to a backend.

Every problem becomes a RequestError naming the field, which the server turns
into a 400 in OpenAI's error format; nothing a client sends raises anything else.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

from .policy import PREFERENCES, Task

# metadata key -> header carrying the same
KEYS = {
    "task_type": "X-Agentkit-Task-Type",
    "preference": "X-Agentkit-Preference",
    "context_tokens": "X-Agentkit-Context-Tokens",
    "complexity": "X-Agentkit-Complexity",
}
CHARS_PER_TOKEN = 4  # the estimate when a request does not say its context size
MAX_TOKENS_LIMIT = 10_000_000


class RequestError(ValueError):
    def __init__(self, message: str, param: str | None = None, status: int = 400):
        super().__init__(message)
        self.param = param
        self.status = status


def parse_body(raw: bytes) -> dict:
    if not raw:
        raise RequestError("the request has no body: send a JSON object")
    long_numbers: list[_LongNumber] = []

    def whole(text: str) -> int | _LongNumber:
        # Python refuses to convert more than 4,300 digits (ValueError from inside json.loads,
        # which used to escape as a 500); no field of the API needs more than MAX_NUMBER_DIGITS.
        if len(text) > MAX_NUMBER_DIGITS:
            number = _LongNumber(len(text.lstrip("-")))
            long_numbers.append(number)
            return number
        return int(text)

    try:
        body = json.loads(raw.decode("utf-8"), parse_int=whole)
    except UnicodeDecodeError:
        raise RequestError("the request body is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise RequestError(f"the request body is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise RequestError("the request body is nested too deeply") from None
    except ValueError as exc:  # nothing else json.loads raises escapes as a 500 either
        raise RequestError(f"the request body cannot be read: {str(exc):.200}") from None
    if not isinstance(body, dict):
        raise RequestError(f"the request body must be a JSON object, got {json_kind(body)}")
    if long_numbers:
        where = _where(body, long_numbers[0])  # None: a key given twice, the long number overridden
        raise RequestError(f"{where or 'a value of the request body'} is a number of {long_numbers[0].digits} "
                           f"digits; the router reads numbers of at most {MAX_NUMBER_DIGITS} digits", where)
    return body


MAX_NUMBER_DIGITS = 100  # a 256-bit number has 78


class _LongNumber:
    """Where json.loads met a whole number of too many digits (parse_body says which field)."""

    __slots__ = ("digits",)

    def __init__(self, digits: int) -> None:
        self.digits = digits


def _where(body: dict, target: _LongNumber) -> str | None:
    """The field holding `target` as the errors name fields (messages[0].content), without recursion."""
    stack: list[tuple[str, Any]] = [(_key("", k), v) for k, v in reversed(body.items())]
    while stack:  # each value once
        where, value = stack.pop()
        if value is target:
            return where
        if isinstance(value, dict):
            stack.extend((_key(where, k), v) for k, v in reversed(value.items()))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def _key(where: str, key: str) -> str:
    key = key if len(key) <= 60 else key[:59] + "…"
    path = f"{where}.{key}" if where else key
    return path if len(path) <= 200 else "…" + path[-199:]


def json_kind(value: Any) -> str:
    """What a parsed JSON value is, in words: 'an object', 'an array', 'a number', ..."""
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean", type(None): "null",
            int: "a number", float: "a number", _LongNumber: "a number"}.get(type(value), type(value).__name__)


def task_of(body: dict, kind: str, headers: Mapping[str, str]) -> Task:
    """The routing metadata of a chat ("chat") or text ("text") completion request; also checks its shape."""
    if kind == "chat":
        context_chars = _messages_chars(body.get("messages"))
    else:
        context_chars = _prompt_chars(body.get("prompt"))
    stream = body.get("stream", False)
    if not isinstance(stream, bool) and stream is not None:
        raise RequestError(f"stream must be true or false, got {json_kind(stream)}", "stream")
    max_tokens = None
    for key in ("max_completion_tokens", "max_tokens"):
        value = body.get(key)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_TOKENS_LIMIT:
            raise RequestError(f"{key} must be a whole number from 1 to {MAX_TOKENS_LIMIT}, got {value!r:.40}", key)
        max_tokens = value
        break
    tools = bool(body.get("tools") or body.get("functions"))

    metadata = body.get("metadata")
    if metadata is None:
        metadata = {}
    elif not isinstance(metadata, dict):
        raise RequestError(f"metadata must be an object, got {json_kind(metadata)}", "metadata")

    def value_of(key: str) -> Any:
        if key in metadata:
            return metadata[key], f"metadata.{key}"
        header = headers.get(KEYS[key])
        return header, KEYS[key]

    task = Task(max_tokens=max_tokens, tools=tools)
    task_type, where = value_of("task_type")
    if task_type is not None:
        if not isinstance(task_type, str) or not task_type or len(task_type) > 200:
            raise RequestError(f"{where} must be a task type name (text, 1-200 characters), got {task_type!r:.60}", where)
        task.task_type = task_type
    preference, where = value_of("preference")
    if preference is not None:
        if preference not in PREFERENCES:
            raise RequestError(f"{where} must be one of {', '.join(PREFERENCES)}, got {preference!r:.60}", where)
        task.preference = preference
    tokens, where = value_of("context_tokens")
    if tokens is not None:
        task.context_tokens = _whole(tokens, where)
    else:
        task.context_tokens = context_chars // CHARS_PER_TOKEN
    complexity, where = value_of("complexity")
    if complexity is not None:
        task.complexity = _fraction(complexity, where)
    return task


def _whole(value: Any, where: str) -> int:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKENS_LIMIT:
        raise RequestError(f"{where} must be a whole number of tokens (0-{MAX_TOKENS_LIMIT}), got {value!r:.60}", where)
    return value


def _fraction(value: Any, where: str) -> float:
    try:
        number = float(value) if isinstance(value, (str, int, float)) and not isinstance(value, bool) else None
    except ValueError:
        number = None
    if number is None or not math.isfinite(number) or not 0.0 <= number <= 1.0:
        raise RequestError(f"{where} must be a number from 0 to 1, got {value!r:.60}", where)
    return number


def _messages_chars(messages: Any) -> int:
    if not isinstance(messages, list) or not messages:
        raise RequestError("messages must be a non-empty array of {role, content} objects", "messages")
    total = 0
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            raise RequestError(f"messages[{index}] must be an object, got {json_kind(message)}", f"messages[{index}]")
        role = message.get("role")
        if not isinstance(role, str) or not role:
            raise RequestError(f"messages[{index}].role must be text such as \"user\"", f"messages[{index}].role")
        content = message.get("content")
        if isinstance(content, str):
            total += len(content)
        elif isinstance(content, list):
            for number, part in enumerate(content):
                where = f"messages[{index}].content[{number}]"
                if not isinstance(part, dict) or not isinstance(part.get("type"), str):
                    raise RequestError(f"{where} must be an object with a type, such as "
                                       "{\"type\": \"text\", \"text\": \"...\"}", where)
                text = part.get("text")
                if isinstance(text, str):
                    total += len(text)
                elif part["type"] == "text":
                    raise RequestError(f"{where}.text must be text, got {json_kind(text)}", f"{where}.text")
        elif content is not None:
            raise RequestError(f"messages[{index}].content must be text, an array of parts or null, got {json_kind(content)}",
                               f"messages[{index}].content")
    return total


def _prompt_chars(prompt: Any) -> int:
    if isinstance(prompt, str):
        return len(prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, str) for p in prompt):
        return sum(len(p) for p in prompt)
    if isinstance(prompt, list) and prompt and all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
        return len(prompt) * CHARS_PER_TOKEN  # already tokens
    raise RequestError("prompt must be text or a non-empty array of texts", "prompt")


def forwarded(body: dict, model: str) -> bytes:
    """The body a backend gets: the chosen model, and metadata without the router's own keys."""
    out = dict(body)
    out["model"] = model
    metadata = out.get("metadata")
    if metadata:
        rest = {k: v for k, v in metadata.items() if k not in KEYS}
        if rest:
            out["metadata"] = rest
        else:
            del out["metadata"]
    elif "metadata" in out:
        del out["metadata"]
    return json.dumps(out, separators=(",", ":")).encode()
