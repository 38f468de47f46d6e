"""Load the manifest (agents/*.yaml) into a Manifest, reporting every problem at once.

Layout of the manifest directory:
  fleet.yaml      name, hosts, defaults (agent settings), slices, profiles
  <group>.yaml    group, host, defaults, agents: {Name: {settings}}

An agent's setting comes from the agent itself, else its file's defaults:,
else fleet.yaml's defaults:, else agentkit's built-in default. Each setting is
declared once in AGENT_SETTINGS; the same table drives parsing, the unknown-key
check and `agentkit show`.
"""

from __future__ import annotations

import contextlib
import datetime
import difflib
import gc
import ipaddress
import os
import re
from dataclasses import dataclass, replace
from typing import Any, Callable

from . import values
from .errors import AgentkitError, ManifestError, Problem
from .graph import find_cycles
from .model import Agent, Host, HostAddress, Location, Manifest, Profile, Restart, RouterSpec, Slice
from .yamlsrc import INVALID, Document, dotted, load as load_yaml

FLEET_FILE = "fleet.yaml"
FLEET_FILES = (FLEET_FILE, "fleet.yml")
UNIT_PREFIX = "agentkit-"

_AGENT_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}$")
_HOST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
_SLICE_NAME = re.compile(r"^[A-Za-z0-9_]{1,64}$")
_LABEL = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,99}$")
_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_USER_NAME = re.compile(r"^[a-z_][a-z0-9_-]{0,30}$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A host name: dot-separated labels of letters, digits, '-' and '_' (as manifest host names allow).
_HOST_LABELS = re.compile(r"^[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?(?:\.[A-Za-z0-9_](?:[A-Za-z0-9_-]{0,61}"
                          r"[A-Za-z0-9_])?)*\.?$")


def _is_address(text: str) -> bool:
    """A host name, an IPv4 address, or an IPv6 address (bare or in brackets, with a zone or not)."""
    if _HOST_LABELS.match(text) and len(text) <= 253:
        return True
    inner = text[1:-1] if text.startswith("[") and text.endswith("]") else text
    try:
        ipaddress.ip_address(inner)
    except ValueError:
        return False
    return True


# --- value parsers: each returns the parsed value or raises ValueError(message) ---

class _Many(ValueError):
    """Several problems inside one value, each at its own sub-path (an item, a variable)."""

    def __init__(self, problems: list[tuple[tuple, str]]):
        super().__init__(problems[0][1])
        self.problems = problems


def _each(items, parse_item) -> list:
    """Parse every item; report all bad ones at their own index or key."""
    out, problems = [], []
    for key, item in items:
        try:
            out.append(parse_item(key, item))
        except ValueError as exc:
            problems.append(((key,), str(exc)))
    if problems:
        raise _Many(problems)
    return out

def _text(value: Any) -> str:
    if not isinstance(value, str):
        raise ValueError(f"expected text, got {_show(value)}")
    if _CONTROL.search(value):
        raise ValueError("contains a control character (such as a newline), which a unit file cannot hold")
    return value


def _bool(value: Any) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"expected true or false, got {_show(value)}")
    return value


def _port(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 65535:
        raise ValueError(f"expected a port number from 1 to 65535, got {_show(value)}")
    return value


def _optional(parser: Callable[[Any], Any]) -> Callable[[Any], Any]:
    def parse(value: Any) -> Any:
        return None if value is None else parser(value)
    return parse


def _choice(*choices: str, newer: dict[str, str] | None = None) -> Callable[[Any], str]:
    def parse(value: Any) -> str:
        if newer and value in newer:
            raise ValueError(f"{value!r} needs systemd {newer[value]}; agentkit targets systemd 252 (Debian 12)")
        if value not in choices:
            raise ValueError(f"expected one of {', '.join(choices)}, got {_show(value)}")
        return value
    return parse


def _span(value: Any) -> int:
    usec = values.parse_span(value)
    if usec <= 0:
        raise ValueError(f"a time span must be above zero, got {_show(value)}")
    return usec


def _memory(value: Any) -> int | str:
    return values.parse_size(value, percent=True)


def _gpu_memory(value: Any) -> int:
    return values.parse_size(value)  # type: ignore[return-value]


def _cpu_weight(value: Any) -> int:
    if value == "idle":
        raise ValueError("CPUWeight=idle needs systemd 253; agentkit targets systemd 252 (Debian 12)")
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 10000:
        raise ValueError(f"expected a CPU weight from 1 to 10000 (100 is the default share), got {_show(value)}")
    return value


def _burst(value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"expected a whole number of starts, at least 1, got {_show(value)}")
    return value


def _names(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of agent names, got {_show(value)}")
    for item in value:
        if not isinstance(item, str):
            raise ValueError(f"expected a list of agent names, got {_show(item)} in it")
    return tuple(value)


def _word(_: int, item: Any) -> str:
    if isinstance(item, bool) or not isinstance(item, (str, int, float)):
        raise ValueError(f"every word of a command must be text, got {_show(item)}")
    if _CONTROL.search(str(item)):
        raise ValueError("contains a control character (such as a newline), which a unit file cannot hold")
    return str(item)


def _argv(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected the command as a list of words (argv), got {_show(value)}")
    if not value:
        raise ValueError("the command is empty: give at least the program")
    words = _each(enumerate(value), _word)
    program = words[0]
    if "/" in program and not program.startswith("/"):
        raise ValueError(f"the program must be an absolute path or a bare name found in --bin-dir, got {program!r}")
    if not program or program[0] in "@-:+!|":
        raise ValueError(f"the program {program!r} starts with a character systemd reads as a prefix")
    return tuple(words)


def _abs_path(value: Any) -> str:
    text = _text(value)
    if not text.startswith("/") or " " in text:
        raise ValueError(f"expected an absolute path without spaces, got {_show(value)}")
    return text


def _abs_paths(value: Any) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise ValueError(f"expected a list of absolute paths, got {_show(value)}")
    return tuple(_each(enumerate(value), lambda _, item: _abs_path(item)))


def _user(value: Any) -> str:
    if not isinstance(value, str) or not _USER_NAME.match(value):
        raise ValueError(f"expected a user name (lower-case letters, digits, '_' and '-'), got {_show(value)}")
    return value


@dataclass(frozen=True)
class _AddressOf:
    """`{address_of: HOST}` as read, before the hosts are known."""

    host: str


def _variable(name: str, item: Any) -> tuple[str, str | _AddressOf]:
    if not _ENV_NAME.match(name):
        raise ValueError("not a valid environment variable name (letters, digits and '_', not first a digit)")
    if name.startswith("AGENTKIT_"):
        raise ValueError("names starting with AGENTKIT_ are set by agentkit itself")
    if isinstance(item, dict):
        if list(item) != ["address_of"] or not isinstance(item["address_of"], str):
            raise ValueError("expected text, a number, or {address_of: HOST} (another host's address)")
        return name, _AddressOf(item["address_of"])
    if isinstance(item, bool):
        item = "true" if item else "false"
    if item is None or not isinstance(item, (str, int, float)):
        raise ValueError(f"expected text or a number, got {_show(item)} (write '' for empty)")
    item = str(item)
    if _CONTROL.search(item):
        raise ValueError("contains a control character (such as a newline), which a unit file cannot hold")
    return name, item


def _environment(value: Any) -> dict[str, str]:
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping of NAME: value, got {_show(value)}")
    return dict(_each(((name, (name, item)) for name, item in value.items()),
                      lambda _, pair: _variable(*pair)))


def _resolve_environment(check: "_Checker", doc: Document, path: tuple, env: dict,
                         hosts: dict[str, Host]) -> dict[str, str]:
    """Replace each {address_of: HOST} of `env` (read at doc/path) by that host's address."""
    resolved = {}
    for name, item in env.items():
        if isinstance(item, _AddressOf):
            if item.host not in hosts:
                check.add(doc, path + (name, "address_of"),
                          f"unknown host {item.host!r} (hosts: {', '.join(hosts) or 'none'})")
                continue
            item = HostAddress(item.host, hosts[item.host].address)
        resolved[name] = item
    return resolved


def with_addresses(m: Manifest, addresses: dict[str, str], origin: str = "--address") -> Manifest:
    """The manifest with some hosts reached at other addresses (an inventory's, say).

    Every place an address is used follows: dependencies on other hosts
    (AGENTKIT_DEPENDS) and `{address_of: HOST}` environment values.
    """
    if not addresses:
        return m
    for host, address in addresses.items():
        if host not in m.hosts:
            raise AgentkitError(f"{origin} {host}={address}: unknown host {host!r} "
                                f"(hosts in {m.root}: {', '.join(m.hosts)})")
        if not _is_address(address):
            raise AgentkitError(f"{origin} {host}={address}: expected a host name or an IP address")

    def env(pairs):
        return tuple((name, HostAddress(value.host, addresses.get(value.host, value))
                      if isinstance(value, HostAddress) else value) for name, value in pairs)

    hosts = {name: replace(h, address=addresses.get(name, h.address), environment=env(h.environment))
             for name, h in m.hosts.items()}
    agents = {name: replace(a, environment=env(a.environment)) for name, a in m.agents.items()}
    return replace(m, hosts=hosts, agents=agents)


def _show(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, (datetime.date, datetime.datetime)):
        return f"a date ({value}; quote it to keep it as text)"
    return repr(value)


# --- the settings, each declared once ---

@dataclass(frozen=True)
class Setting:
    parse: Callable[[Any], Any]
    default: Any
    help: str


RESTART_SETTINGS: dict[str, Setting] = {
    "policy": Setting(_choice("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"),
                      "on-failure", "systemd Restart=: when a stopped agent is started again"),
    "delay": Setting(_span, 1_000_000, "RestartSec=: pause before a restart"),
    "burst": Setting(_burst, 5, "StartLimitBurst=: starts allowed within the interval"),
    "interval": Setting(_span, 30_000_000, "StartLimitIntervalSec=: the window the burst is counted in"),
}

AGENT_SETTINGS: dict[str, Setting] = {
    "host": Setting(_text, None, "the host the agent runs on (a key of hosts:)"),
    "essential": Setting(_bool, False, "true: started at boot; false: started on first connection"),
    "group": Setting(_text, None, "a label for profiles and graphs (default: the file's group)"),
    "description": Setting(_text, None, "one line for the unit's Description="),
    "command": Setting(_argv, None, "argv; a bare program name is looked up in --bin-dir"),
    "port": Setting(_port, None, "the agent port (ZeroMQ/TCP); optional agents' socket listens here"),
    "health_port": Setting(_optional(_port), None, "HTTP health port; never socket-activated"),
    "depends_on": Setting(_names, (), "agents that must be running first (Requires= and After=)"),
    "activation": Setting(_choice("native", "proxy"), "native",
                          "optional agents: native adopts the socket fd; proxy uses systemd-socket-proxyd"),
    "private_port": Setting(_port, None, "proxy mode: where the agent listens on 127.0.0.1 (default port + private_port_offset)"),
    "idle_stop": Setting(_span, 300_000_000, "optional agents: stop after this long without traffic"),
    "service_type": Setting(_choice("simple", "exec", "notify", newer={"notify-reload": "253"}), "exec",
                            "systemd Type=; notify when the agent sends READY=1"),
    "start_timeout": Setting(_span, 30_000_000, "TimeoutStartSec=: how long a start may take"),
    "watchdog": Setting(_optional(_span), None, "WatchdogSec=: the agent sends WATCHDOG=1 within this"),
    "restart": Setting(dict, None, "restart policy and start limits: " + ", ".join(RESTART_SETTINGS)),
    "memory_max": Setting(_memory, None, "MemoryMax=: e.g. 4G, 80%"),
    "cpu_weight": Setting(_cpu_weight, None, "CPUWeight=: 1-10000"),
    "gpu_memory": Setting(_gpu_memory, None, "GPU memory the agent needs, e.g. 6G (for the router and placement)"),
    "slice": Setting(_text, None, "a key of slices: (default: essential or optional)"),
    "environment": Setting(_environment, {}, "extra environment; merged over the host's and the defaults'"),
    "user": Setting(_optional(_user), None, "run as this existing user instead of a DynamicUser="),
    "working_directory": Setting(_optional(_abs_path), None, "WorkingDirectory="),
    "writable_paths": Setting(_abs_paths, (), "ReadWritePaths=: paths the sandboxed agent may write"),
    "sandbox": Setting(_bool, True, "the hardening directives (ProtectSystem=strict, ...); false turns them off"),
}
# Settings that only mean something for an on-demand agent.
OPTIONAL_ONLY = ("activation", "private_port", "idle_stop")

# --- the router section: every setting once, with the agentkit-router flag it becomes ---

def _url(value: Any) -> str:
    text = _text(value)
    scheme, sep, rest = text.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or rest.startswith("/") or " " in text:
        raise ValueError(f"expected an http:// or https:// URL such as http://127.0.0.1:8080/v1, got {_show(value)}")
    return text.rstrip("/")


def _model_name(value: Any) -> str:
    text = _text(value)
    if not text or text.startswith("-") or " " in text:
        raise ValueError(f"expected a model name (no spaces, not starting with '-'), got {_show(value)}")
    return text


def _whole(low: int, high: int) -> Callable[[Any], int]:
    def parse(value: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ValueError(f"expected a whole number from {low} to {high}, got {_show(value)}")
        return value
    return parse


def _fraction(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value <= 1:
        raise ValueError(f"expected a number from 0 to 1, got {_show(value)}")
    return float(value)


def _size(value: Any) -> int:
    return values.parse_size(value)  # type: ignore[return-value]


def _bind(value: Any) -> str:
    text = _text(value)
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"expected an IP address to listen on, such as 0.0.0.0 or 127.0.0.1, got {_show(value)}") from None
    return text


@dataclass(frozen=True)
class RouterSetting:
    parse: Callable[[Any], Any]
    default: Any  # None: not passed (the router's own default), REQUIRED: must be given
    flag: str | None  # the agentkit-router option it becomes; None: used by the unit itself
    help: str


REQUIRED = object()


def router_flag_value(key: str, value: Any) -> str:
    """A router setting as its agentkit-router option's text."""
    parse = ROUTER_SETTINGS[key].parse
    if parse is _size:
        return values.format_size(value)
    if parse is _span:
        return values.format_span(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


ROUTER_SETTINGS: dict[str, RouterSetting] = {
    "host": RouterSetting(_text, REQUIRED, None, "the host the router runs on (a key of hosts:)"),
    "port": RouterSetting(_port, 8090, None, "the HTTP port: OpenAI API, /v1/route, /health, /metrics"),
    "bind": RouterSetting(_bind, "0.0.0.0", None, "the address to listen on"),
    "local.url": RouterSetting(_url, REQUIRED, "--local-url", "the local backend's OpenAI base URL"),
    "local.model": RouterSetting(_model_name, REQUIRED, "--local-model", "the local model"),
    "local.context_window": RouterSetting(_whole(1, 10_000_000), 8192, "--local-context-window",
                                          "tokens the local model takes, prompt and answer"),
    "local.kv_cache_per_token": RouterSetting(_size, 128 << 10, "--local-kv-per-token",
                                              "GPU memory one token of KV cache takes (fp16 13B: about 800K)"),
    "local.max_inflight": RouterSetting(_whole(1, 100_000), 4, "--local-max-inflight",
                                        "local requests in flight before new ones overflow to the cloud"),
    "small.model": RouterSetting(_model_name, None, "--small-model",
                                 "a smaller local model for when the cloud is down and memory is short"),
    "small.context_window": RouterSetting(_whole(1, 10_000_000), None, "--small-context-window", "its window"),
    "small.kv_cache_per_token": RouterSetting(_size, None, "--small-kv-per-token", "its KV cache per token"),
    "cloud.url": RouterSetting(_url, REQUIRED, "--cloud-url", "the cloud backend's OpenAI base URL"),
    "cloud.model": RouterSetting(_model_name, REQUIRED, "--cloud-model", "the cloud model"),
    "cloud.api_key_file": RouterSetting(_abs_path, None, None,
                                        "the file holding the cloud key, passed with LoadCredential="),
    "threshold": RouterSetting(_fraction, 0.7, "--threshold", "complexity from which work goes to the cloud"),
    "gpu.device": RouterSetting(_whole(0, 63), 0, "--gpu-device", "NVML index of the local model's GPU"),
    "gpu.reserve": RouterSetting(_size, 512 << 20, "--gpu-reserve", "GPU memory kept free"),
    "gpu.capacity": RouterSetting(_size, 8 << 30, "--gpu-capacity", "free GPU memory assumed without NVML"),
    "gpu.interval": RouterSetting(_span, 250_000, "--gpu-interval", "NVML sampling period"),
    "gpu.stale_after": RouterSetting(_span, 2_000_000, "--gpu-stale-after", "an older GPU snapshot counts as unknown"),
    "timeout": RouterSetting(_span, 60_000_000, "--timeout", "a request's deadline to its first byte, retries included"),
    "max_request_size": RouterSetting(_size, 1 << 20, "--max-request-size", "larger request bodies get a 413"),
    "memory_max": RouterSetting(_memory, 1 << 30, None, "MemoryMax= of the router's unit"),
}


FLEET_KEYS = ("name", "hosts", "defaults", "slices", "profiles", "default_profile", "private_port_offset",
              "router")
HOST_KEYS = ("address", "environment", "ports")
GROUP_KEYS = ("group", "host", "defaults", "agents")
SLICE_KEYS = ("description", "memory_max", "cpu_weight")
PROFILE_KEYS = ("all", "agents", "groups")
BUILTIN_SLICES = ("essential", "optional")

_INVALID = INVALID


class _Checker:
    """Collects problems while reading; never raises until the end."""

    def __init__(self) -> None:
        self.problems: list[Problem] = []

    def add(self, doc: Document, path: tuple, message: str) -> None:
        self.problems.append(doc.problem(path, message))

    def mapping(self, doc: Document, path: tuple, value: Any, what: str) -> dict:
        if value is None or value is INVALID:
            return {}
        if not isinstance(value, dict):
            self.add(doc, path, f"expected {what} (a mapping), got {_show(value)}")
            return {}
        return value

    def known_keys(self, doc: Document, path: tuple, data: dict, known) -> None:
        for key in data:
            if key not in known:
                hint = difflib.get_close_matches(key, list(known), n=1, cutoff=0.6)
                suffix = f" (did you mean {hint[0]!r}?)" if hint else f" (known: {', '.join(known)})"
                self.add(doc, path + (key,), f"unknown key{suffix}")

    def parse(self, doc: Document, path: tuple, value: Any, parser: Callable[[Any], Any]) -> Any:
        if value is INVALID:  # the YAML layer reported it already
            return INVALID
        try:
            return parser(value)
        except _Many as exc:
            for sub, message in exc.problems:
                self.add(doc, path + sub, message)
        except ValueError as exc:
            self.add(doc, path, str(exc))
        return INVALID

    def settings(self, doc: Document, path: tuple, data: dict) -> dict[str, tuple[Any, Document, tuple]]:
        """Parse one layer of agent settings: {name: (value, doc, path)}; bad ones are reported and left out."""
        self.known_keys(doc, path, data, AGENT_SETTINGS)
        out: dict[str, tuple[Any, Document, tuple]] = {}
        for key, raw in data.items():
            setting = AGENT_SETTINGS.get(key)
            if setting is None:
                continue
            where = path + (key,)
            if key == "restart":
                sub = self.mapping(doc, where, raw, "the restart settings")
                self.known_keys(doc, where, sub, RESTART_SETTINGS)
                for subkey, subraw in sub.items():
                    if subkey in RESTART_SETTINGS:
                        value = self.parse(doc, where + (subkey,), subraw, RESTART_SETTINGS[subkey].parse)
                        if value is not _INVALID:
                            out["restart." + subkey] = (value, doc, where + (subkey,))
                continue
            value = self.parse(doc, where, raw, setting.parse)
            out[key] = (value, doc, where)
        return out


def _manifest_files(root: str) -> list[str]:
    try:
        names = sorted(n for n in os.listdir(root) if n.endswith((".yaml", ".yml")) and not n.startswith("."))
    except FileNotFoundError:
        raise ManifestError([Problem(root, 0, "", "no such manifest directory")]) from None
    except NotADirectoryError:
        raise ManifestError([Problem(root, 0, "", "not a directory (the manifest is a directory of YAML files)")]) from None
    return names


def load(root: str = "agents") -> Manifest:
    """Read and check the manifest under `root`; raise ManifestError listing every problem."""
    # Loading allocates many long-lived, acyclic objects (a line number per YAML
    # node, the settings, the agents): the cyclic collector's full passes over them
    # made a 10k-agent load grow worse than linearly (bench/render.py).
    with _collector_paused():
        return _load(root)


@contextlib.contextmanager
def _collector_paused():
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _load(root: str) -> Manifest:
    check = _Checker()
    docs: dict[str, Document] = {}
    for name in _manifest_files(root):
        path = os.path.join(root, name)
        try:
            with open(path, encoding="utf-8") as handle:
                text = handle.read()
        except (OSError, UnicodeDecodeError) as exc:
            check.problems.append(Problem(path, 0, "", f"cannot read: {exc}"))
            continue
        doc, problems = load_yaml(text, path)
        check.problems.extend(problems)
        docs[name] = doc
    fleet_docs = [docs.pop(name) for name in FLEET_FILES if name in docs]
    if len(fleet_docs) > 1:
        check.problems.append(Problem(fleet_docs[1].file, 0, "", f"two fleet files: keep {FLEET_FILE} only"))
    fleet_doc = fleet_docs[0] if fleet_docs else None
    if fleet_doc is None:
        check.problems.append(Problem(os.path.join(root, FLEET_FILE), 0, "",
                                      "missing: the fleet file declares the hosts, defaults and profiles"))
        raise ManifestError(check.problems)

    fleet = check.mapping(fleet_doc, (), fleet_doc.data, "the fleet settings")
    check.known_keys(fleet_doc, (), fleet, FLEET_KEYS)
    name = fleet.get("name", "agentkit")
    if check.parse(fleet_doc, ("name",), name, _text) is _INVALID:
        name = "agentkit"
    offset = fleet.get("private_port_offset", 20000)
    if isinstance(offset, bool) or not isinstance(offset, int) or not 1 <= offset <= 65535:
        check.add(fleet_doc, ("private_port_offset",), f"expected a whole number from 1 to 65535, got {_show(offset)}")
        offset = 20000

    hosts = _read_hosts(check, fleet_doc, fleet)
    slices = _read_slices(check, fleet_doc, fleet)
    fleet_defaults = check.settings(fleet_doc, ("defaults",),
                                    check.mapping(fleet_doc, ("defaults",), fleet.get("defaults"), "agent defaults"))
    agents, declared = _read_agents(check, docs, fleet_defaults, hosts, slices, offset)
    profiles = _read_profiles(check, fleet_doc, fleet, agents, declared)
    if not profiles:
        profiles["full"] = Profile("full", True, frozenset())
    default_profile = check.parse(fleet_doc, ("default_profile",),
                                  fleet.get("default_profile", "full" if "full" in profiles else next(iter(profiles))),
                                  _text)
    if default_profile is not INVALID and default_profile not in profiles:
        check.add(fleet_doc, ("default_profile",), f"unknown profile {default_profile!r} (profiles: {', '.join(profiles)})")

    router = _read_router(check, fleet_doc, fleet, hosts)
    _check_fleet(check, agents, declared, hosts, docs, router)
    if check.problems:
        raise ManifestError(check.problems)
    return Manifest(root=root, name=name, hosts=hosts, agents=agents, slices=slices,
                    profiles=profiles, default_profile=default_profile, router=router)


def _read_router(check: _Checker, doc: Document, fleet: dict, hosts: dict[str, Host]) -> RouterSpec | None:
    if fleet.get("router") is None:
        return None
    raw = check.mapping(doc, ("router",), fleet.get("router"), "the router's settings")
    if not isinstance(fleet.get("router"), dict):
        return None  # reported by mapping()
    sections = {key.split(".")[0] for key in ROUTER_SETTINGS if "." in key}
    check.known_keys(doc, ("router",), raw, [k for k in ROUTER_SETTINGS if "." not in k] + sorted(sections))
    flat: dict[str, tuple[Any, tuple]] = {}
    for key, value in raw.items():
        if key in sections:
            sub = check.mapping(doc, ("router", key), value, f"the router's {key} settings")
            known = [k.split(".", 1)[1] for k in ROUTER_SETTINGS if k.startswith(key + ".")]
            check.known_keys(doc, ("router", key), sub, known)
            for subkey, subvalue in sub.items():
                if subkey in known:
                    flat[f"{key}.{subkey}"] = (subvalue, ("router", key, subkey))
        elif key in ROUTER_SETTINGS:
            flat[key] = (value, ("router", key))
    settings: dict[str, Any] = {}
    ok = True
    for key, setting in ROUTER_SETTINGS.items():
        if key not in flat:
            if setting.default is REQUIRED:
                section, _, name = key.rpartition(".")
                check.add(doc, ("router",) + ((section,) if section else ()), f"missing {name}: {setting.help}")
                ok = False
            elif setting.default is not None:
                settings[key] = setting.default
            continue
        value, path = flat[key]
        parsed = check.parse(doc, path, value, setting.parse)
        if parsed is _INVALID:
            ok = False
            continue
        settings[key] = parsed
    if "small.model" not in settings:
        for key in ("small.context_window", "small.kv_cache_per_token"):
            if key in flat:
                check.add(doc, flat[key][1], "set small.model too, or leave the small model out")
                ok = False
    host = settings.get("host")
    if host is not None and host not in hosts:
        check.add(doc, ("router", "host"), f"unknown host {host!r} (hosts: {', '.join(hosts)})")
        ok = False
    if not ok:
        return None
    return RouterSpec(host=settings.pop("host"), port=settings.pop("port"), bind=settings.pop("bind"),
                      api_key_file=settings.pop("cloud.api_key_file", None), memory_max=settings.pop("memory_max"),
                      settings=tuple(settings.items()), where=Location(doc.file, doc.line(("router",))))


def _read_hosts(check: _Checker, doc: Document, fleet: dict) -> dict[str, Host]:
    hosts: dict[str, Host] = {}
    raw_hosts = check.mapping(doc, ("hosts",), fleet.get("hosts"), "the hosts")
    if not raw_hosts:
        check.add(doc, ("hosts",), "declare at least one host, e.g. hosts: {myhost: {address: 127.0.0.1}}")
    for host_name, raw in raw_hosts.items():
        path = ("hosts", host_name)
        if not _HOST_NAME.match(host_name):
            check.add(doc, path, "a host name is letters, digits, '.', '_' and '-' (at most 63)")
        data = check.mapping(doc, path, raw, "the host's settings")
        check.known_keys(doc, path, data, HOST_KEYS)
        address = data.get("address", host_name)
        if check.parse(doc, path + ("address",), address, _text) is _INVALID:
            address = host_name
        env = check.parse(doc, path + ("environment",), data.get("environment", {}), _environment)
        ports = check.mapping(doc, path + ("ports",), data.get("ports"), "the fleet services' ports")
        fleet_ports: dict[int, str] = {}
        for service, port in ports.items():
            if check.parse(doc, path + ("ports", service), port, _port) is INVALID:
                continue
            if port in fleet_ports:
                check.add(doc, path + ("ports", service), f"{port} is also used on {host_name} by the fleet "
                          f"service {fleet_ports[port]} (hosts.{host_name}.ports.{fleet_ports[port]})")
                continue
            fleet_ports[port] = service
        hosts[host_name] = Host(host_name, address, tuple((env if env is not _INVALID else {}).items()),
                                tuple((service, port) for port, service in fleet_ports.items()),
                                Location(doc.file, doc.line(path)))
    # {address_of: HOST} may name a host declared further down: resolve once all are known.
    return {name: replace(h, environment=tuple(_resolve_environment(
                check, doc, ("hosts", name, "environment"), dict(h.environment), hosts).items()))
            for name, h in hosts.items()}


def _read_slices(check: _Checker, doc: Document, fleet: dict) -> dict[str, Slice]:
    raw_slices = check.mapping(doc, ("slices",), fleet.get("slices"), "the slices")
    slices = {name: Slice(name, f"agentkit {name} agents", None, None) for name in BUILTIN_SLICES}
    for slice_name, raw in raw_slices.items():
        path = ("slices", slice_name)
        if not _SLICE_NAME.match(slice_name):
            check.add(doc, path, "a slice name is letters, digits and '_' ('-' would nest it in another slice)")
        data = check.mapping(doc, path, raw, "the slice's settings")
        check.known_keys(doc, path, data, SLICE_KEYS)
        description = data.get("description", f"agentkit {slice_name} agents")
        if check.parse(doc, path + ("description",), description, _text) is _INVALID:
            description = slice_name
        memory = check.parse(doc, path + ("memory_max",), data.get("memory_max"), _optional(_memory))
        weight = check.parse(doc, path + ("cpu_weight",), data.get("cpu_weight"), _optional(_cpu_weight))
        slices[slice_name] = Slice(slice_name, description,
                                   None if memory is _INVALID else memory, None if weight is _INVALID else weight)
    return slices


def _read_agents(check: _Checker, docs: dict[str, Document], fleet_defaults: dict,
                 hosts: dict[str, Host], slices: dict[str, Slice], offset: int
                 ) -> tuple[dict[str, Agent], dict[str, Location]]:
    """The agents that are fine, and where every agent was declared (fine or not)."""
    agents: dict[str, Agent] = {}
    declared: dict[str, Location] = {}
    for file_name, doc in docs.items():
        data = check.mapping(doc, (), doc.data, "a group of agents")
        check.known_keys(doc, (), data, GROUP_KEYS)
        group = data.get("group", os.path.splitext(file_name)[0])
        if "group" not in data and not _LABEL.match(group):
            check.add(doc, (), f"the file name {group!r} is not a group name (letters, digits, '.', '_' "
                      "and '-'): rename the file or set group:")
        elif check.parse(doc, ("group",), group, _text) is not INVALID and not _LABEL.match(group):
            check.add(doc, ("group",), f"a group name is letters, digits, '.', '_' and '-', got {_show(group)}")
        layer0 = dict(fleet_defaults)
        if "host" in data:
            if check.parse(doc, ("host",), data["host"], _text) is not _INVALID:
                layer0["host"] = (data["host"], doc, ("host",))
        file_defaults = check.settings(doc, ("defaults",), check.mapping(doc, ("defaults",), data.get("defaults"), "agent defaults"))
        base = {**layer0, **file_defaults}
        raw_agents = check.mapping(doc, ("agents",), data.get("agents"), "the agents, by name")
        for agent_name, raw in raw_agents.items():
            path = ("agents", agent_name)
            if agent_name in declared:
                check.add(doc, path, f"duplicate agent name, first defined at {declared[agent_name]}")
                continue
            declared[agent_name] = Location(doc.file, doc.line(path))
            own = check.settings(doc, path, check.mapping(doc, path, raw, "the agent's settings"))
            agent = _build_agent(check, doc, path, agent_name, group, base, own, hosts, slices, offset)
            if agent is not None:
                agents[agent_name] = agent
    return agents, declared


def _build_agent(check: _Checker, doc: Document, path: tuple, name: str, group: str, base: dict, own: dict,
                 hosts: dict[str, Host], slices: dict[str, Slice], offset: int) -> Agent | None:
    merged = {**base, **own}
    ok = True
    if not _AGENT_NAME.match(name):
        check.add(doc, path, "an agent name becomes a unit name: letters, digits, '_', '.' and '-', at most 200")
        ok = False

    def get(key: str) -> Any:
        entry = merged.get(key)
        if entry is None or entry[0] is INVALID:  # reported already; the default avoids follow-on problems
            return RESTART_SETTINGS[key[8:]].default if key.startswith("restart.") else AGENT_SETTINGS[key].default
        return entry[0]

    for key in ("host", "command", "port"):
        if key not in merged:
            check.add(doc, path, f"missing {key}: {AGENT_SETTINGS[key].help}")
            ok = False
        elif merged[key][0] is _INVALID:
            ok = False
    if any(entry[0] is _INVALID for entry in merged.values()):
        ok = False
    host = get("host")
    if ok and host not in hosts:
        check.add(merged["host"][1], merged["host"][2],
                  f"unknown host {host!r} (hosts: {', '.join(hosts) or 'none'})")
        ok = False
    essential = get("essential")
    if essential:
        for key in OPTIONAL_ONLY:
            if key in own:
                check.add(doc, own[key][2], f"only optional agents have {key} (this agent is essential)")
    elif "private_port" in own and get("activation") != "proxy":
        check.add(doc, own["private_port"][2], "private_port is only for activation: proxy")
    slice_name = get("slice") or ("essential" if essential else "optional")
    if get("slice") is not None and slice_name not in slices:
        check.add(merged["slice"][1], merged["slice"][2], f"unknown slice {slice_name!r} (slices: {', '.join(slices)})")
        ok = False
    if not ok:
        return None

    port = get("port")
    activation = "none" if essential else get("activation")
    private_port = None
    if activation == "proxy":
        private_port = get("private_port")
        if private_port is None:
            private_port = port + offset
            if private_port > 65535:
                check.add(doc, path + ("port",), f"proxy mode needs a private port: {port} + private_port_offset "
                          f"{offset} is above 65535; set private_port")
        if get("service_type") != "notify":
            check.add(doc, path + ("activation",), "proxy activation needs service_type: notify (the proxy would "
                      "connect before the agent listens and clients would get an empty reply)")
    restart = Restart(get("restart.policy"), get("restart.delay"), get("restart.burst"), get("restart.interval"))
    env = dict(hosts[host].environment)
    for layer in (base, own):
        if "environment" in layer:
            value, layer_doc, layer_path = layer["environment"]
            env.update(_resolve_environment(check, layer_doc, layer_path, value, hosts))
    return Agent(
        name=name, host=host, group=get("group") or group, essential=essential,
        description=get("description") or f"agentkit agent {name}",
        command=get("command"), port=port, health_port=get("health_port"),
        depends_on=get("depends_on"), activation=activation, private_port=private_port,
        idle_stop_us=get("idle_stop"), service_type=get("service_type"), start_timeout_us=get("start_timeout"),
        watchdog_us=get("watchdog"), restart=restart, memory_max=get("memory_max"), cpu_weight=get("cpu_weight"),
        gpu_memory=get("gpu_memory"), slice=slice_name, environment=tuple(env.items()), user=get("user"),
        working_directory=get("working_directory"), writable_paths=get("writable_paths"),
        sandbox=get("sandbox"), where=Location(doc.file, doc.line(path)),
    )


def _read_profiles(check: _Checker, doc: Document, fleet: dict, agents: dict[str, Agent],
                   declared: dict[str, Location]) -> dict[str, Profile]:
    profiles: dict[str, Profile] = {}
    groups: dict[str, list[str]] = {}
    for agent in agents.values():
        groups.setdefault(agent.group, []).append(agent.name)
    for profile_name, raw in check.mapping(doc, ("profiles",), fleet.get("profiles"), "the profiles").items():
        path = ("profiles", profile_name)
        if not _LABEL.match(profile_name):
            check.add(doc, path, "a profile name is letters, digits, '.', '_' and '-'")
        data = check.mapping(doc, path, raw, "the profile (all:, agents:, groups:)")
        check.known_keys(doc, path, data, PROFILE_KEYS)
        everything = check.parse(doc, path + ("all",), data.get("all", False), _bool)
        chosen: set[str] = set()
        raw_agents = check.parse(doc, path + ("agents",), data.get("agents", []), _names)
        for index, agent_name in enumerate(raw_agents if raw_agents is not _INVALID else ()):
            where = path + ("agents", index)
            if agent_name not in declared:
                check.add(doc, where, f"unknown agent {agent_name!r}{_suggest(agent_name, declared)}")
            elif agent_name not in agents:
                continue  # declared, with problems of its own
            elif agents[agent_name].essential:
                check.add(doc, where, f"{agent_name} is essential: every profile has it")
            else:
                chosen.add(agent_name)
        raw_groups = check.parse(doc, path + ("groups",), data.get("groups", []), _names)
        for index, group in enumerate(raw_groups if raw_groups is not _INVALID else ()):
            if group not in groups:
                check.add(doc, path + ("groups", index), f"unknown group {group!r}{_suggest(group, groups)}")
            else:
                chosen.update(n for n in groups[group] if agents[n].optional)
        profiles[profile_name] = Profile(profile_name, everything is True, frozenset(chosen))
    return profiles


def _suggest(name: str, known) -> str:
    hint = difflib.get_close_matches(name, list(known), n=1, cutoff=0.6)
    return f" (did you mean {hint[0]!r}?)" if hint else ""


def _check_fleet(check: _Checker, agents: dict[str, Agent], declared: dict[str, Location],
                 hosts: dict[str, Host], docs: dict[str, Document], router: RouterSpec | None = None) -> None:
    """Checks across agents: ports, dependencies, cycles, unit names, start limits."""
    by_file = {doc.file: doc for doc in docs.values()}

    def where(agent: Agent, *sub) -> tuple[Document, tuple]:
        return by_file[agent.where.file], ("agents", agent.name) + sub

    # Ports: one owner per (host, port), across agent, health, private and fleet ports.
    owners: dict[tuple[str, int], str] = {}
    for host in hosts.values():
        for service, port in host.ports:
            owners.setdefault((host.name, port), f"the fleet service {service} (hosts.{host.name}.ports.{service})")
    if router is not None:
        owners.setdefault((router.host, router.port), "the router (router.port)")
    for agent in agents.values():
        for key, port in (("port", agent.port), ("health_port", agent.health_port), ("private_port", agent.private_port)):
            if port is None:
                continue
            label = f"{agent.name}.{key}"
            other = owners.setdefault((agent.host, port), label)
            if other != label:
                doc, path = where(agent, key)
                check.add(doc, path, f"{port} is also used on {agent.host} by {other}")

    # Unit names must be unique once the proxy units are added.
    units: dict[str, str] = {}
    for agent in agents.values():
        names = [UNIT_PREFIX + agent.name]
        if agent.activation == "proxy":
            names.append(UNIT_PREFIX + agent.name + "-proxy")
        for unit in names:
            other = units.setdefault(unit.lower(), agent.name)
            if other != agent.name:
                doc, path = where(agent)
                check.add(doc, path, f"its unit name {unit} clashes with a unit of agent {other}")

    # Dependencies.
    for agent in agents.values():
        seen = set()
        for index, dep in enumerate(agent.depends_on):
            doc, path = where(agent, "depends_on", index)
            if dep in seen:
                check.add(doc, path, f"{dep} is listed twice")
            seen.add(dep)
            if dep == agent.name:
                check.add(doc, path, "an agent cannot depend on itself")
            elif dep not in declared:
                check.add(doc, path, f"unknown agent {dep!r}{_suggest(dep, declared)}")
            elif dep not in agents:
                continue  # declared, with problems of its own
            elif agent.essential and agents[dep].optional:
                check.add(doc, path, f"essential agent {agent.name} depends on optional agent {dep}: an essential "
                          "agent starts at boot and cannot wait for an on-demand one (make "
                          f"{dep} essential, or {agent.name} optional)")
    graph = {a.name: [d for d in a.depends_on if d in agents and d != a.name] for a in agents.values()}
    for cycle in find_cycles(graph):
        doc, path = where(agents[cycle[0]], "depends_on")
        check.add(doc, path, "dependency cycle: " + " -> ".join(cycle + [cycle[0]]))

    # Start limits: idle wake-ups must never hit them, a crash loop must.
    for agent in agents.values():
        restart = agent.restart
        doc, path = where(agent, "restart")
        if restart.policy != "no" and restart.burst * restart.delay_us >= restart.interval_us:
            check.add(doc, path, f"a crash loop restarting every {values.format_span(restart.delay_us)} never "
                      f"reaches burst {restart.burst} within interval {values.format_span(restart.interval_us)}: "
                      "systemd would restart it forever (lower delay or burst, or raise interval)")
        if agent.activation == "native" and restart.policy in ("always", "on-success"):
            check.add(doc, path, f"restart policy {restart.policy} would start the agent again as soon as it "
                      "exits when idle, so it would never be dormant (use on-failure)")
        if agent.optional:
            wakeups = restart.interval_us // agent.idle_stop_us + 1
            if wakeups >= restart.burst:
                check.add(doc, path, f"{wakeups} wake-ups after idle stops of "
                          f"{values.format_span(agent.idle_stop_us)} fit in interval "
                          f"{values.format_span(restart.interval_us)}, reaching burst {restart.burst}: "
                          "on-demand starts would hit the start limit (raise burst or idle_stop)")
