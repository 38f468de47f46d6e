"""The backends: one interface, a name -> backend table, and detection.

A backend turns the manifest into the files of one host (plan), puts them in place
and brings the host's agents up (apply), stops them (stop), removes what it put
there (remove) and reports every agent's state in one shape (status). Each lives
in a package of its own (backends/systemd/, backends/supervisord/) with its
templates in templates/<name>/; the CLI looks a backend up here and never names one.

A third backend is one more package and one more line in BACKENDS.
"""

from __future__ import annotations

import importlib
import os
import re
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

from ..checks import Issue
from ..errors import AgentkitError
from ..files import RenderedFile
from ..model import Manifest

# name -> "module:Class", imported on first use (sdbus only where systemd is used).
BACKENDS: dict[str, str] = {
    "systemd": "agentkit.backends.systemd:SystemdBackend",
    "supervisord": "agentkit.backends.supervisord:SupervisordBackend",
}

Progress = Callable[[str], None]


@dataclass(frozen=True)
class Options:
    """How to run a backend on this machine: what the command line said."""

    bin_dir: str  # where bare program names (agentkit-agent) live on the host
    templates: str | None = None  # a user's templates, replacing ours by name
    root: str = "/"  # systemd: install under this root ("/" is the running system)
    state_dir: str | None = None  # supervisord: its config, socket and logs (default per fleet and host)
    several: bool = False  # several hosts on this machine: each gets a directory of its own under state_dir
    timeout: float = 120.0  # for the essential agents to start, and for stops
    force: bool = False  # overwrite agentkit's files even if edited by hand since
    restart_all: bool = False  # restart every running agent, changed or not


@dataclass
class Changes:
    """What applying a plan changes among the files agentkit owns on a host."""

    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)

    @property
    def any(self) -> bool:
        return bool(self.added or self.changed or self.removed)


@dataclass
class Outcome:
    """What apply() did on one host."""

    changes: Changes
    jobs: dict[str, str] = field(default_factory=dict)  # unit -> start job result
    restarted: list[str] = field(default_factory=list)  # agents' units restarted (changed, or all) that were running
    started: list[str] = field(default_factory=list)  # units that were not running before and now run
    failed: dict[str, list[str]] = field(default_factory=dict)  # unit -> why: a first line, then more (a journal)


@dataclass(frozen=True)
class AgentStatus:
    """One agent's state, the same on every backend.

    state: dormant (optional, its port held, not running), starting, active,
    stopping, failed, inactive (stopped), not-installed."""

    name: str
    essential: bool
    unit: str  # the unit (systemd) or program (supervisord) that decides the state
    state: str
    detail: str  # the backend's own words for it
    since: float | None  # seconds since the epoch
    restarts: int | None
    memory: int | None  # bytes
    last_start_s: float | None  # inactive -> active, the last time it started
    result: str | None

    def as_json(self) -> dict:
        return asdict(self)


class Backend(ABC):
    """One way of running the fleet on a host."""

    name: str  # its key in BACKENDS, and its templates folder
    several_hosts: bool  # one machine can run several hosts' agents side by side
    # What a host directory of this backend's may hold; anything else there is the user's.
    ours: re.Pattern[str]
    keeps_files: bool = False  # apply() leaves files that `agentkit uninstall` removes
    sandboxed: bool = False  # agents run in systemd's sandbox: hidden paths, DynamicUser= (programs.check)

    @classmethod
    @abstractmethod
    def here(cls) -> bool:
        """Whether this machine runs this backend's manager (for --backend auto)."""

    def check(self, manifest: Manifest) -> Iterable[Issue]:
        """What this backend's plan or apply would refuse, as manifest Issues (the loader
        reports them with FILE:LINE). Options of the run (bin dir, state dir) are not
        the manifest's, and are checked by plan."""
        return ()

    def activation(self, agent) -> str:
        """How this backend holds an agent's port, for `agentkit show`: none, native or proxy."""
        return agent.activation

    def check_programs(self, manifest: Manifest, agents: Iterable, options: Options) -> None:
        """Every program of `agents` can run here as this backend runs it, or a ManifestError
        says where and why (FILE:LINE of the command)."""
        from .. import manifest as loader, programs  # the loader imports this package for its checks
        error = loader.problems(manifest, programs.check(agents, options.bin_dir, sandboxed=self.sandboxed))
        if error is not None:
            raise error

    @abstractmethod
    def plan(self, manifest: Manifest, host: str, profile: str | None, options: Options) -> list[RenderedFile]:
        """Every file of `host`, sorted by path; pure."""

    @abstractmethod
    def place(self, manifest: Manifest, host: str, options: Options) -> str:
        """The directory the plan of `host` goes to on this machine."""

    def installed(self, options: Options) -> set[str] | None:
        """The files agentkit put in place() before (its own record), if the backend keeps one."""
        return None

    def pending(self, manifest: Manifest, host: str, planned: list[RenderedFile], options: Options) -> Changes:
        """What apply() would change among the files in place()."""
        place = self.place(manifest, host, options)
        changes = Changes()
        for item in planned:
            try:
                with open(os.path.join(place, item.path), encoding="utf-8") as handle:
                    same = handle.read() == item.text
            except FileNotFoundError:
                changes.added.append(item.path)
                continue
            (changes.unchanged if same else changes.changed).append(item.path)
        return changes

    @abstractmethod
    def apply(self, manifest: Manifest, host: str, profile: str, options: Options, progress: Progress) -> Outcome:
        """Put the plan in place and bring the host's agents up: essential ones running,
        optional ones dormant. Failures are in the Outcome, not raised."""

    @abstractmethod
    def stop(self, manifest: Manifest, host: str, options: Options, progress: Progress) -> bool:
        """Stop every agent of `host`; False when nothing was running."""

    def remove(self, options: Options, progress: Progress) -> list[str]:
        """Stop and delete everything apply() put in place; what was removed."""
        raise AgentkitError(f"the {self.name} backend has nothing to uninstall: agentkit down stops it")

    @abstractmethod
    def status(self, manifest: Manifest, host: str, profile: str | None, options: Options) -> list[AgentStatus]:
        """Every agent of `host` in `profile`, manifest order."""

    @abstractmethod
    def wake(self, manifest: Manifest, host: str, agents: list, options: Options, wait: bool,
             progress: Progress) -> dict[str, str | None]:
        """Start `agents` of `host` (and their dependencies) ahead of their first request, as a first
        connection would, so that they stop again when idle. {agent: None when started (and ready, if
        `wait`), else why not}; with `wait`, return once each is ready."""

    def recorded_profile(self, options: Options) -> str | None:
        """The profile apply() last used here, when the backend records it."""
        return None


def _backend_class(name: str) -> type[Backend]:
    try:
        module, _, cls = BACKENDS[name].partition(":")
    except KeyError:
        raise AgentkitError(f"unknown backend {name!r} (backends: {', '.join(BACKENDS)})") from None
    return getattr(importlib.import_module(module), cls)


def get(name: str) -> Backend:
    return _backend_class(name)()


def detect() -> str:
    """The first backend of the table whose manager runs here."""
    for name in BACKENDS:
        if _backend_class(name).here():
            return name
    raise AgentkitError(f"no backend runs here (backends: {', '.join(BACKENDS)})")


def choose(name: str) -> Backend:
    """`auto` (detect()) or a name of the table."""
    return get(detect() if name == "auto" else name)


def check(manifest: Manifest) -> list[Issue]:
    """Every backend's own checks of a manifest, so validate reports what any of them would refuse."""
    return [issue for name in BACKENDS for issue in get(name).check(manifest)]


def any_ours() -> re.Pattern[str]:
    """The file names any backend of the table writes into a host directory."""
    return re.compile("|".join(f"(?:{get(name).ours.pattern})" for name in BACKENDS))


def rss(pid: int) -> int | None:
    """A process's resident memory in bytes, from /proc; None when it is gone."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/status", encoding="ascii", errors="replace") as handle:
            for line in handle:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_cpu(pid: int) -> float | None:
    """User and system CPU seconds of one process, from /proc/PID/stat; None when it is gone."""
    if pid <= 0:
        return None
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None
