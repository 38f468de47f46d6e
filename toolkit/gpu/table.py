"""A host's GPU table, from the manifest: its GPUs, the GPU agents on them, the router's reserve.

Both backends hand it on as command-line words (`args()`, read back by `parse_args()`): to
agentkit-admit and agentkit-status under systemd, to the activator (in its JSON) and
agentkit-status under supervisord. Sizes are bytes, so nothing is rounded on the way.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..router.command import router_on
from ..settings import EVICT_ORDER

ESSENTIAL = "essential"  # a tenant's evict class for an essential agent: never stopped for room
CLASSES = EVICT_ORDER + (ESSENTIAL,)


@dataclass(frozen=True)
class Tenant:
    """A GPU agent: `need` bytes on GPU `gpu`; `evict` one of CLASSES."""

    name: str
    gpu: int
    need: int
    evict: str

    @property
    def evictable(self) -> bool:
        return self.evict not in ("never", ESSENTIAL)

    def word(self) -> str:
        return f"{self.name}={self.gpu}:{self.need}:{self.evict}"

    @classmethod
    def parse(cls, word: str) -> "Tenant":
        name, sep, rest = word.partition("=")
        parts = rest.split(":")
        if not (name and sep and len(parts) == 3 and parts[0].isdigit() and parts[1].isdigit()
                and parts[2] in CLASSES):
            raise ValueError(f"--tenant {word!r}: expected NAME=GPU:BYTES:CLASS, CLASS one of {', '.join(CLASSES)}")
        return cls(name, int(parts[0]), int(parts[1]), parts[2])


@dataclass(frozen=True)
class Table:
    gpus: tuple[tuple[int, int | None], ...]  # NVML index -> bytes, None: NVML tells
    reserve: tuple[tuple[int, int], ...]      # NVML index -> bytes the router keeps free there
    tenants: tuple[Tenant, ...]

    def total(self, index: int) -> int | None:
        return dict(self.gpus).get(index)

    def reserved(self, index: int) -> int:
        return dict(self.reserve).get(index, 0)

    def tenant(self, name: str) -> Tenant | None:
        return next((t for t in self.tenants if t.name == name), None)

    def args(self) -> list[str]:
        words: list[str] = []
        for index, total in self.gpus:
            words += ["--gpu", f"{index}={'auto' if total is None else total}"]
        for index, amount in self.reserve:
            words += ["--gpu-reserve", f"{index}={amount}"]
        for tenant in self.tenants:
            words += ["--tenant", tenant.word()]
        return words


def parse_args(gpus: list[str], reserve: list[str], tenants: list[str]) -> Table:
    """The Table from the words of args(): each option's values, in order."""
    def pair(option: str, word: str, auto: bool) -> tuple[int, int | None]:
        index, sep, amount = word.partition("=")
        if sep and index.isdigit() and (amount.isdigit() or (auto and amount == "auto")):
            return int(index), None if amount == "auto" else int(amount)
        raise ValueError(f"{option} {word!r}: expected INDEX=BYTES{' or INDEX=auto' if auto else ''}")
    return Table(tuple(pair("--gpu", w, True) for w in gpus),
                 tuple(pair("--gpu-reserve", w, False) for w in reserve),  # type: ignore[misc]
                 tuple(Tenant.parse(w) for w in tenants))


def for_host(manifest, host: str, agents=None) -> Table | None:
    """The table of `host` for `agents` (default: all of the host's), or None when none of them
    needs GPU memory. GPUs the host does not declare, but an agent names, are NVML's to tell."""
    agents = manifest.on_host(host) if agents is None else agents
    tenants = tuple(Tenant(a.name, a.gpu, a.gpu_memory, ESSENTIAL if a.essential else a.gpu_evict)
                    for a in agents if a.gpu_memory is not None)
    if not tenants:
        return None
    gpus = dict(manifest.hosts[host].gpus)
    for tenant in tenants:
        gpus.setdefault(tenant.gpu, None)
    return Table(tuple(sorted(gpus.items())), router_reserve(manifest, host), tenants)


def router_reserve(manifest, host: str) -> tuple[tuple[int, int], ...]:
    """What the router keeps free for its local models on `host` (router.gpu.reserve on
    router.gpu.device and on each peer's GPU there), when the router runs there."""
    router = router_on(manifest, host)
    if router is None:
        return ()
    settings = dict(router.settings)
    reserve = settings.get("gpu.reserve", 0)
    # Its own backend's GPU, and those of the peers on this host (a peer elsewhere has no GPU here).
    devices = {settings.get("gpu.device", 0)} | {p.gpu for p in settings.get("peers") or () if p.gpu is not None}
    return tuple((device, reserve) for device in sorted(devices))
