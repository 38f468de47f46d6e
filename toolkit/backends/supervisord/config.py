"""activator.json: the activator's configuration, one schema for its writer and its reader.

The supervisord renderer builds a Config and writes it with Config.dumps(); the
activator reads it back with Config.load(). The file holds::

    {"fleet": "lab", "host": "lab", "supervisor": "unix:///abs/state/supervisor.sock",
     "control": "/abs/state/activator.sock",
     "agents": [{"name": "X", "program": "X", "listen": ["0.0.0.0", 7101],
                 "target": ["127.0.0.1", 27101], "depends_on": ["Y", "Z"],
                 "idle_stop": 120.0, "start_timeout": 30.0, "ready": ["port"]}]}

``depends_on`` is transitive and in start order (dependencies first). ``ready`` is
how the activator knows the target is ready: ``["port"]`` (it accepts a connection),
``["http", "/path"]`` (the path answers 2xx) or ``["command", "/bin/prog", ...]``
(it exits 0).

The reader is driven by the dataclasses below: every field names the function
that reads its JSON value (each raises Bad(message)); keys that are missing or
unknown (a file from another agentkit version) are refused the same way. The
first problem stops it, as one ConfigError naming the file and the field:
``/path/activator.json: agents[0] (X).idle_stop: expected seconds above zero, got 0``.
"""

from __future__ import annotations

import ipaddress
import json
import math
from dataclasses import asdict, dataclass, field, fields

from agentkit.errors import AgentkitError, did_you_mean


class ConfigError(AgentkitError):
    """activator.json is unusable: `path: field: message`."""

    def __init__(self, path, message, where=""):
        self.path, self.where, self.message = str(path), where, message
        super().__init__(f"{self.path}: {where}: {message}" if where else f"{self.path}: {message}")


class Bad(ValueError):
    """One JSON value does not fit the schema; `at` is where, inside the value being read."""

    def __init__(self, message, at=""):
        super().__init__(message)
        self.message, self.at = message, at

    def within(self, part):
        """The same problem, seen from the value that holds `part` (a key, or '[i] (name)')."""
        inner = "" if not self.at else self.at if self.at.startswith("[") else "." + self.at
        return Bad(self.message, part + inner)


# --- the readers of JSON values ----------------------------------------------------

def _kind(value):
    return "null" if value is None else {dict: "object", list: "array", str: "string",
                                         bool: "boolean"}.get(type(value), type(value).__name__)


def _text(value):
    if isinstance(value, str) and value.strip() and value == value.strip():
        return value
    raise Bad(f"expected a non-empty string, got {json.dumps(value)}")


def _word(value):
    if isinstance(value, str) and value and not any(c.isspace() for c in value):
        return value
    raise Bad(f"expected a non-empty string without spaces, got {json.dumps(value)}")


def _url(value):
    if isinstance(value, str) and ((value.startswith("unix:///") and len(value) > len("unix:///"))
                                   or (value.startswith("http://") and len(value) > len("http://"))):
        return value
    raise Bad("expected supervisord's server URL, unix:///absolute/path.sock or http://host:port, "
              f"got {json.dumps(value)}")


def _path(value):
    if isinstance(value, str) and value.startswith("/") and len(value) > 1 and "\0" not in value:
        return value
    raise Bad(f"expected an absolute path, got {json.dumps(value)}")


def _address(value):
    """[host, port], host an IP address -> (host, port)."""
    if not (isinstance(value, list) and len(value) == 2):
        raise Bad(f"expected [host, port], got {json.dumps(value)}")
    host, port = value
    try:
        ipaddress.ip_address(host if isinstance(host, str) else None)
    except ValueError:
        raise Bad(f"host: expected an IP address (e.g. 127.0.0.1 or ::1), got {json.dumps(host)}") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 1 <= port <= 65535:
        raise Bad(f"port: expected a TCP port from 1 to 65535, got {json.dumps(port)}")
    return host, port


def _names(value):
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    raise Bad(f"expected an array of agent names, got {json.dumps(value)}")


def _ready(value):
    if value == ["port"]:
        return ("port",)
    if (isinstance(value, list) and len(value) == 2 and value[0] == "http" and isinstance(value[1], str)
            and value[1].startswith("/")):
        return tuple(value)
    if (isinstance(value, list) and len(value) >= 2 and value[0] == "command"
            and all(isinstance(word, str) for word in value) and value[1].startswith("/")):
        return tuple(value)
    raise Bad('expected ["port"], ["http", "/path"] or ["command", "/absolute/program", ...], '
              f"got {json.dumps(value)}")


def _gpu(value):
    """The host's GPU table as agentkit.gpu.table's words ([] without GPU agents)."""
    if not (isinstance(value, list) and all(isinstance(word, str) for word in value)):
        raise Bad(f"expected an array of words, got {json.dumps(value)}")
    from agentkit.gpu import table
    gpus, reserve, tenants = [], [], []
    lists = {"--gpu": gpus, "--gpu-reserve": reserve, "--tenant": tenants}
    if len(value) % 2 or any(option not in lists for option in value[::2]):
        raise Bad(f"expected --gpu, --gpu-reserve and --tenant, each with its value, got {json.dumps(value)}")
    for option, word in zip(value[::2], value[1::2]):
        lists[option].append(word)
    try:
        return table.parse_args(gpus, reserve, tenants) if value else None
    except ValueError as exc:
        raise Bad(str(exc)) from None


def _seconds(value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
        raise Bad(f"expected seconds above zero, got {json.dumps(value)}")
    return float(value)


def _read(read, *absent):
    """A dataclass field whose JSON value `read` turns into the field's value; `absent`, if
    given, is the value of a key the file leaves out (one older than the key)."""
    if absent:
        return field(default=absent[0], metadata={"read": read, "absent": absent})
    return field(metadata={"read": read, "absent": absent})


def _object(cls, value):
    """A JSON object -> cls(...), key by key, as cls's fields say."""
    if not isinstance(value, dict):
        raise Bad(f"expected an object, got {_kind(value)}")
    known = [f.name for f in fields(cls)]
    for key in value:
        if key not in known:
            raise Bad(f"unknown key{did_you_mean(key, known)}; expected {', '.join(known)}", key)
    values = {}
    for f in fields(cls):
        if f.name not in value:
            if f.metadata["absent"]:
                values[f.name] = f.metadata["absent"][0]
                continue
            raise Bad("missing", f.name)
        try:
            values[f.name] = f.metadata["read"](value[f.name])
        except Bad as bad:
            raise bad.within(f.name) from None
    return cls(**values)


def _objects(cls):
    """A JSON array of objects -> a tuple of cls; a problem names the item by index and name."""
    def read(value):
        if not isinstance(value, list):
            raise Bad(f"expected an array, got {_kind(value)}")
        items = []
        for i, item in enumerate(value):
            try:
                items.append(_object(cls, item))
            except Bad as bad:
                name = item.get("name") if isinstance(item, dict) else None
                raise bad.within(f"[{i}] ({name})" if isinstance(name, str) and name.strip() else f"[{i}]") from None
        return tuple(items)
    return read


# --- the schema --------------------------------------------------------------------

@dataclass(frozen=True)
class AgentSpec:
    """One optional agent: the activator holds `listen`, starts `program`, forwards to `target`."""

    name: str = _read(_word)
    program: str = _read(_word)                 # supervisord's program name
    listen: tuple[str, int] = _read(_address)   # its public address
    target: tuple[str, int] = _read(_address)   # its private address
    depends_on: tuple[str, ...] = _read(_names)  # transitive, dependencies first
    idle_stop: float = _read(_seconds)
    start_timeout: float = _read(_seconds)
    ready: tuple[str, ...] = _read(_ready)       # the readiness probe of its target


@dataclass(frozen=True)
class Config:
    """activator.json of one host."""

    fleet: str = _read(_text)
    host: str = _read(_text)
    supervisor: str = _read(_url)               # supervisord's XML-RPC server URL
    control: str = _read(_path)                 # the activator's own socket: wake, state, events (control.py)
    agents: tuple[AgentSpec, ...] = _read(_objects(AgentSpec))
    gpu: object = _read(_gpu, None)             # agentkit.gpu.table.Table, or None: no GPU agents

    def __post_init__(self):
        # What the activator could not run with: an agent it could not tell apart, or a start
        # that waits on itself or on nothing.
        seen = {}
        for i, agent in enumerate(self.agents):
            if agent.name in seen:
                raise Bad(f"duplicate agent name, also agents[{seen[agent.name]}]",
                          f"agents[{i}] ({agent.name}).name")
            seen[agent.name] = i
        for i, agent in enumerate(self.agents):
            for k, dep in enumerate(agent.depends_on):
                if dep == agent.name or dep not in seen:
                    why = "an agent cannot depend on itself" if dep == agent.name else (
                        f"unknown agent {dep!r}{did_you_mean(dep, seen)}: dependencies must be agents of this file")
                    raise Bad(why, f"agents[{i}] ({agent.name}).depends_on[{k}]")

    # -- writing

    def to_json(self):
        data = asdict(self)  # tuples stay tuples: JSON arrays
        data["gpu"] = self.gpu.args() if self.gpu is not None else []
        return data

    def dumps(self):
        """The text of activator.json (stable: sorted keys, two-space indent, a final newline)."""
        return json.dumps(self.to_json(), sort_keys=True, indent=2) + "\n"

    # -- reading

    @classmethod
    def from_json(cls, data, path="<config>"):
        """The parsed JSON document -> Config, or ConfigError naming `path` and the field."""
        try:
            return _object(cls, data)
        except Bad as bad:
            raise ConfigError(path, bad.message, bad.at) from None

    @classmethod
    def loads(cls, text, path="<config>"):
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}:{exc.colno}", f"not valid JSON: {exc.msg}") from None
        return cls.from_json(data, path)

    @classmethod
    def load(cls, path):
        try:
            with open(path, encoding="utf-8") as f:
                text = f.read()
        except OSError as exc:
            raise ConfigError(path, f"cannot read the activator's configuration: {exc.strerror}") from None
        except UnicodeDecodeError as exc:
            raise ConfigError(path, f"not UTF-8 text: {exc.reason}") from None
        return cls.loads(text, path)
