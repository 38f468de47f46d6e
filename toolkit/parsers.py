"""Value parsers for the manifest's settings: each returns the parsed value or raises
ValueError(message); the loader adds the file, line and key.

Several problems inside one value (list items, variables) are raised together as
Many, each at its own sub-path.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Callable

from . import env as contract, values
from .model import Liveness, Readiness

AGENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
SLICE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A host name: dot-separated labels of letters, digits, '-' and '_' (as manifest host names allow).
_HOST_LABELS = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}"
                          r"[A-Za-z0-9_])?)*\.?$")


def is_address(text: str) -> bool:
    """A host name, an IPv4 address, or an IPv6 address (bare or in brackets, with a zone or not)."""
    if _HOST_LABELS.match(text) and len(text) <= 253:
        return True
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(inner)
    except ValueError:
        return False
    return True




class Many(ValueError):
    """Several problems inside one value, each at its own sub-path (an item, a variable)."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        super().__init__(problems[0][1])
        self.problems = problems


def each(items, parse_item) -> list:
    """Parse every item; report all bad ones at their own index or key."""
    out, problems = [], []
    for key, item in items:
        try:
            out.append(parse_item(key, item))
        except Many as exc:
            problems += [((key,) + sub, message) for sub, message in exc.problems]
        except ValueError as exc:
            problems.append(((key,), str(exc)))
    if problems:
        raise Many(problems)
    return out

# A unit file's line is at most 1 MiB (systemd 252 refuses to load the whole unit
# otherwise), and exec() takes one word of at most 128 KiB. One text value, a command
# and an environment stay well within both, whatever aliases repeat.
MAX_TEXT = 65_536
MAX_WORDS = 262_144  # a command's words together; an environment's names and values together


def text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {show(value)}")
    return _unit_text(value)


def _unit_text(value: str) -> str:
    """Text that a unit file can hold: one line, of at most MAX_TEXT characters."""
    if CONTROL.search(value):
        raise ValueError("contains a control character (such as a newline), which a unit file cannot hold")
    if value.endswith("\\"):
        raise ValueError("ends with a backslash, which in a unit file joins the next line to this one")
    if len(value) > MAX_TEXT:
        raise ValueError(f"{len(value):,} characters long: at most {MAX_TEXT:,}")
    return value


def _total(what: str, parts) -> None:
    size = sum(len(part) for part in parts)
    if size > MAX_WORDS:
        raise ValueError(f"{what} is {size:,} characters long: at most {MAX_WORDS:,} in all")


def boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {show(value)}")
    return value


def port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {show(value)}")
    return value


def optional(parser: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        return None if value is None else parser(value)
    return parse


def choice(*choices: str, newer: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if newer and value in newer:
            raise ValueError(f"{value!r} needs systemd {newer[value]}; agentkit targets systemd 252 (Debian 12)")
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {show(value)}")
        return value
    return parse


def span(value: Any) -> int:
    usec = values.parse_span(value)
    if usec <= 0:
        raise ValueError(f"a time span must be above zero, got {show(value)}")
    return usec


def memory(value: Any) -> int | str:
    return values.parse_size(value, percent=True)


def gpu_memory(value: Any) -> int:
    return values.parse_size(value)  # type: ignore[return-value]


def gpu_index(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 63:
        raise ValueError(f"expected an NVML GPU index from 0 to 63, got {show(value)}")
    return value


def gpus(value: Any) -> dict[int, int | None]:
    """hosts.H.gpus: NVML index -> bytes, or None for `auto` (NVML tells at run time)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of GPU index to memory, e.g. {{0: 24G}}, got {show(value)}")
    out: dict[int, int | None] = {}
    for index, memory in value.items():
        index = gpu_index(int(index) if isinstance(index, str) and index.isdigit() else index)  # YAML keys are text
        if memory == "auto":
            out[index] = None
            continue
        try:
            size = values.parse_size(memory)
        except ValueError as exc:
            raise ValueError(f"GPU {index}: {exc} (or auto)") from None
        if not size:
            raise ValueError(f"GPU {index}: memory must be above zero")
        out[index] = size
    return out


def cpu_weight(value: Any) -> int:
    if value == "idle":
        raise ValueError("CPUWeight=idle needs systemd 253; agentkit targets systemd 252 (Debian 12)")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10000:
        raise ValueError(f"expected a CPU weight from 1 to 10000 (100 is the default share), got {show(value)}")
    return value


def burst(value: Any) -> int:
    # StartLimitBurst= is an unsigned 32-bit number in systemd.
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 0xFFFFFFFF:
        raise ValueError(f"expected a whole number of starts from 1 to 4294967295, got {show(value)}")
    return value


def names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of agent names, got {show(value)}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a list of agent names, got {show(item)} in it")
    return tuple(value)


def _word(_: int, item: Any) -> str:
    if isinstance(item, bool) or not isinstance(item, (str, int, float)):
        raise ValueError(f"every word of a command must be text, got {show(item)}")
    return _unit_text(str(item))


def argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected the command as a list of words (argv), got {show(value)}")
    if not value:
        raise ValueError("the command is empty: give at least the program")
    words = each(enumerate(value), _word)
    _total("the command", words)
    program = words[0]
    if "/" in program and not program.startswith(("/", "./", "../")):
        raise ValueError(f"the program must be an absolute path, a path relative to the manifest directory "
                         f"(./prog), or a bare name found in --bin-dir or on PATH, got {program!r}")
    if not program or program[0] in "@-:+!|":
        raise ValueError(f"the program {program!r} starts with a character systemd reads as a prefix")
    if "\\" in program:
        raise ValueError(f"the program {program!r} has a backslash, which systemd refuses in an executable's name")
    return tuple(words)


READY_WORDS = ("notify", "started", "port")
_READY_FORMS = "notify, started, port, {http: /path} or {command: [argv]}"


def readiness(value: Any) -> Readiness:
    """notify | started | port | http | {http: /path} | {command: [argv]}."""
    if value in READY_WORDS:
        return Readiness(value)
    if value == "http":
        return Readiness("http", "/")
    if isinstance(value, dict) and len(value) == 1:
        ((key, item),) = value.items()
        if key == "http":
            if (not isinstance(item, str) or not item.startswith("/") or CONTROL.search(item) or " " in item
                    or not item.isascii()):
                raise ValueError(f"http: expected a path that starts with '/', in ASCII without spaces "
                                 f"(percent-encode the rest), got {show(item)}")
            return Readiness("http", item)
        if key == "command":
            return Readiness("command", command=argv(item))
    raise ValueError(f"expected {_READY_FORMS}, got {show(value)}")


LIVENESS_KEYS = ("http", "tcp", "interval", "failures")


def liveness(value: Any) -> Liveness:
    """{http: /path} or {tcp: true}, with interval (default 10s) and failures (default 3)."""
    if not isinstance(value, dict):
        raise ValueError(f"expected {{http: /path}} or {{tcp: true}}, with interval and failures, got {show(value)}")
    unknown = [k for k in value if k not in LIVENESS_KEYS]
    if unknown:
        raise ValueError(f"unknown key {unknown[0]!r} (known: {', '.join(LIVENESS_KEYS)})")
    kinds = [k for k in ("http", "tcp") if k in value]
    if len(kinds) != 1:
        raise ValueError("say one probe: http: /path (answers 2xx) or tcp: true (the port accepts)")
    path = None
    if kinds[0] == "http":
        path = readiness({"http": value["http"]}).path
    elif value["tcp"] is not True:
        raise ValueError(f"tcp: expected true, got {show(value['tcp'])}")
    interval = span(value.get("interval", "10s"))
    if interval < 100_000:
        raise ValueError(f"interval: at least 100ms, got {show(value.get('interval'))}")
    failures = value.get("failures", 3)
    if isinstance(failures, bool) or not isinstance(failures, int) or not 1 <= failures <= 100:
        raise ValueError(f"failures: expected a whole number from 1 to 100, got {show(failures)}")
    return Liveness(kinds[0], path, interval, failures)


def abs_path(value: Any) -> str:
    written = text(value)
    # systemd reads quotes and backslashes in a path setting, and ReadWritePaths= splits at spaces.
    if not written.startswith("/") or any(c.isspace() or c in "\"'\\" for c in written):
        raise ValueError(f"expected an absolute path without spaces, quotes or backslashes, got {show(value)}")
    return written


def abs_paths(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of absolute paths, got {show(value)}")
    return tuple(each(enumerate(value), lambda _, item: abs_path(item)))


def user(value: Any) -> str:
    if not isinstance(value, str) or not _USER_NAME.match(value):
        raise ValueError(f"expected a user name (lower-case letters, digits, '_' and '-'), got {show(value)}")
    return value


@dataclass(frozen=True)
class AddressOf:
    """`{address_of: HOST}` as read, before the hosts are known."""

    host: str


def _variable(name: str, item: Any) -> tuple[str, str | AddressOf]:
    if not _ENV_NAME.match(name):
        raise ValueError("not a valid environment variable name (letters, digits and '_', not first a digit)")
    if name.startswith(contract.PREFIX):
        raise ValueError("names starting with AGENTKIT_ are set by agentkit itself")
    if isinstance(item, dict):
        if list(item) != ["address_of"] or not isinstance(item["address_of"], str):
            raise ValueError("expected text, a number, or {address_of: HOST} (another host's address)")
        return name, AddressOf(item["address_of"])
    if isinstance(item, bool):
        item = "true" if item else "false"
    if item is None or not isinstance(item, (str, int, float)):
        raise ValueError(f"expected text or a number, got {show(item)} (write '' for empty)")
    return name, _unit_text(str(item))


def environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {show(value)}")
    out = dict(each(((name, (name, item)) for name, item in value.items()),
                     lambda _, pair: _variable(*pair)))
    _total("the environment", [name for name in out] + [v for v in out.values() if isinstance(v, str)])
    return out


def show(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"a date ({value}; quote it to keep it as text)"
    if isinstance(value, int) and value.bit_length() > 256:  # repr() refuses past 4,300 digits
        return f"a number of about {int(value.bit_length() * 0.30103) + 1:,} digits"
    shown = repr(value)
    if len(shown) > 80:  # the problem stays one readable line
        return f"{shown[:60]}... ({len(value) if isinstance(value, str) else len(shown):,} characters)"
    return shown



def url(value: Any) -> str:
    written = text(value)
    scheme, sep, rest = written.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or rest.startswith("/") or _spaced(written):
        raise ValueError(f"expected an http:// or https:// URL such as http://127.0.0.1:8080/v1, got {show(value)}")
    return written.rstrip("/")


def _spaced(written: str) -> bool:
    """Whitespace of any kind, or ';': an option's text of the router separates words and models with them."""
    return ";" in written or any(c.isspace() for c in written)


def model_name(value: Any) -> str:
    written = text(value)
    if not written or written.startswith("-") or _spaced(written):
        raise ValueError(f"expected a model name (no spaces or ';', not starting with '-'), got {show(value)}")
    return written


def whole(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {show(value)}")
        return value
    return parse


def fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {show(value)}")
    return float(value)


def size(value: Any) -> int:
    return values.parse_size(value)  # type: ignore[return-value]


def status_bind(value: Any) -> str:
    """The status service's bind: an IP address, or `address` (loopback and the host's own address)."""
    if value == "address":
        return "address"
    try:
        return bind(value)
    except ValueError:
        raise ValueError(f"expected an IP address to listen on, or `address` (loopback and the host's own "
                         f"address), got {show(value)}") from None


def bind(value: Any) -> str:
    written = text(value)
    try:
        ipaddress.ip_address(written)
    except ValueError:
        raise ValueError(f"expected an IP address to listen on, such as 0.0.0.0 or 127.0.0.1, got {show(value)}") from None
    if "%" in written:  # systemd 252's ListenStream= takes no scope
        raise ValueError(f"a scoped address ({written}) cannot be listened on by a systemd socket: use the "
                         "address without its scope, or ::")
    return written
