"""The manifest as frozen dataclasses: what the user asked for, resolved and checked.

Everything here is plain data. Field names are the manifest's setting names
(settings.py); spans are microseconds, sizes bytes. Loading and validation live
in manifest.py, dependency reasoning in graph.py, rendering in the backends.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Location:
    file: str
    line: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}"


@dataclass(frozen=True)
class Restart:
    policy: str  # systemd Restart=: no, on-failure, always, ...
    delay: int  # RestartSec=, microseconds
    burst: int  # StartLimitBurst=
    interval: int  # StartLimitIntervalSec=, microseconds


@dataclass(frozen=True)
class Liveness:
    """Whether a running agent still answers (the manifest's `liveness`): its port accepts (tcp)
    or `path` answers 2xx (http), probed every `interval` microseconds; `failures` misses in a
    row and it is killed, so that its restart policy brings it back. A dormant agent is never probed."""

    kind: str  # tcp or http
    path: str | None
    interval: int
    failures: int


@dataclass(frozen=True)
class Readiness:
    """When an agent is ready (the manifest's `ready`): notify (it sends READY=1), started
    (its process runs), port (its listening port accepts), http (`path` answers 2xx on it),
    command (`command` exits 0)."""

    kind: str
    path: str | None = None
    command: tuple[str, ...] = ()


@dataclass(frozen=True)
class Agent:
    name: str
    host: str
    group: str
    essential: bool
    description: str
    command: tuple[str, ...]
    port: int
    health_port: int | None
    depends_on: tuple[str, ...]
    activation: str  # "none" for essential agents, else "native" or "proxy"
    private_port: int | None  # where the agent listens behind the proxy (proxy mode)
    idle_stop: int  # microseconds, as every time span of the model
    service_type: str  # simple, exec or notify (notify exactly when ready.kind is notify)
    ready: Readiness
    start_timeout: int
    cold_start_slo: int  # microseconds, like start_timeout: the alert rules' threshold
    liveness: Liveness | None
    watchdog: int | None
    restart: Restart
    memory_max: int | str | None
    cpu_weight: int | None
    gpu_memory: int | None
    gpu: int  # NVML index of the GPU gpu_memory is on
    gpu_evict: str  # settings.EVICT_ORDER; "never" for essential agents
    slice: str
    environment: tuple[tuple[str, str], ...]
    user: str | None
    working_directory: str | None
    writable_paths: tuple[str, ...]
    sandbox: bool
    where: Location = field(compare=False)

    @property
    def optional(self) -> bool:
        return not self.essential


class HostAddress(str):
    """An environment value that is another host's address (`{address_of: HOST}` in the
    manifest): the text is that host's address, and it follows `--address` overrides."""

    host: str

    def __new__(cls, host: str, address: str) -> "HostAddress":
        value = super().__new__(cls, address)
        value.host = host
        return value

    def __reduce__(self):  # copy, deepcopy (dataclasses.asdict) and pickle keep the host
        return HostAddress, (self.host, str(self))


@dataclass(frozen=True)
class Host:
    name: str
    address: str
    environment: tuple[tuple[str, str], ...]
    ports: tuple[tuple[str, int], ...]  # fleet services' ports on this host (not agents)
    where: Location = field(compare=False)
    status_port: int = 8202  # the status service (agentkit-status): settings.STATUS_SETTINGS
    status_bind: str = "127.0.0.1"
    gpus: tuple[tuple[int, int | None], ...] = ()  # NVML index -> bytes (None: NVML tells at run time)


@dataclass(frozen=True)
class RouterSpec:
    """The manifest's router section: where agentkit-router runs, and its settings."""

    host: str
    port: int
    bind: str
    api_key_file: str | None  # LoadCredential= source of the cloud key
    memory_max: int | str
    settings: tuple[tuple[str, object], ...]  # dotted manifest key -> value, for the router's flags
    where: Location = field(compare=False)


@dataclass(frozen=True)
class Slice:
    name: str
    description: str
    memory_max: int | str | None
    cpu_weight: int | None


@dataclass(frozen=True)
class Profile:
    name: str
    all: bool
    agents: frozenset[str]  # the optional agents it names, directly or by group


@dataclass(frozen=True)
class Manifest:
    """Read-only by convention: the dicts keep manifest order."""

    root: str
    name: str
    hosts: dict[str, Host]
    agents: dict[str, Agent]
    slices: dict[str, Slice]
    profiles: dict[str, Profile]
    default_profile: str
    private_port_offset: int  # proxy mode (and supervisord): an agent's private port is port + this
    router: RouterSpec | None = None

    def on_host(self, host: str) -> list[Agent]:
        return [a for a in self.agents.values() if a.host == host]
