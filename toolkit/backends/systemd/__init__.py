"""The systemd backend: units rendered from templates/systemd/, installed under
/etc/systemd/system, driven over D-Bus.

render.py plans the units (pure), install.py puts them in place and starts them,
dbus.py is the one module that speaks to systemd, status.py reads every agent's
state from it.
"""

from __future__ import annotations

import asyncio
import os
from typing import Iterable

from ... import files, units
from ...checks import Issue
from ...files import RenderedFile
from ...model import Manifest
from .. import AgentStatus, Backend, Changes, Options, Outcome, Progress
from . import install, render


class SystemdBackend(Backend):
    name = "systemd"
    several_hosts = False  # one systemd, one host of the manifest
    ours = files.OURS
    keeps_files = True
    sandboxed = True  # hardening.j2: ProtectHome=, PrivateTmp=, DynamicUser=

    @classmethod
    def here(cls) -> bool:
        return os.path.isdir("/run/systemd/system")  # sd_booted(3)

    def check(self, manifest: Manifest) -> Iterable[Issue]:
        # Unit names are case-insensitive on the file systems a host may use for
        # /etc: unique once the proxy units are added.
        owners: dict[str, str] = {}
        for agent in manifest.agents.values():
            names = [units.service(agent.name)]
            if agent.activation == "proxy":
                names.append(units.proxy(agent.name))
            if agent.liveness is not None:
                names.append(units.live(agent.name))
            for unit in names:
                stem = unit.rsplit(".", 1)[0]
                other = owners.setdefault(stem.lower(), agent.name)
                if other != agent.name:
                    yield Issue(agent.name, (), f"its unit name {stem} clashes with a unit of agent {other}")

    def plan(self, manifest: Manifest, host: str, profile: str | None, options: Options) -> list[RenderedFile]:
        return render.plan(manifest, host, profile, bin_dir=options.bin_dir, templates=options.templates)

    def place(self, manifest: Manifest, host: str, options: Options) -> str:
        return os.path.join(options.root, install.UNIT_DIR)

    def installed(self, options: Options) -> set[str] | None:
        return set(install.Record.read(options.root).files) or None

    def pending(self, manifest: Manifest, host: str, planned: list[RenderedFile], options: Options) -> Changes:
        return install.compare(options.root, planned, install.Record.read(options.root), options.force)

    def apply(self, manifest: Manifest, host: str, profile: str, options: Options, progress: Progress) -> Outcome:
        planned = self.plan(manifest, host, profile, options)
        progress(f"installing {len(planned)} unit files for {host} (profile {profile}) under {options.root}")
        outcome = asyncio.run(install.apply(options.root, host, profile, planned, force=options.force,
                                            timeout=options.timeout, restart_all=options.restart_all,
                                            progress=progress))
        if not outcome.changes.any:
            progress("unit files unchanged")
        if not outcome.failed and os.path.realpath(options.root) == "/":
            progress(f"{host}: {units.TARGET} is up; see `agentkit status`")
        return outcome

    def stop(self, manifest: Manifest, host: str, options: Options, progress: Progress) -> bool:
        stopped = asyncio.run(install.stop(timeout=options.timeout))
        progress(f"stopped {units.TARGET} and its units")
        return bool(stopped)

    def remove(self, options: Options, progress: Progress) -> list[str]:
        return asyncio.run(install.remove(options.root, timeout=options.timeout, progress=progress))

    def status(self, manifest: Manifest, host: str, profile: str | None, options: Options) -> list[AgentStatus]:
        from . import status  # D-Bus only where it is used
        from .dbus import Systemd

        async def gather():
            manager = Systemd()
            try:
                return await status.collect(manifest, host, profile, manager)
            finally:
                manager.close()

        return asyncio.run(gather())

    def wake(self, manifest: Manifest, host: str, agents: list, options: Options, wait: bool,
             progress: Progress) -> dict[str, str | None]:
        return asyncio.run(install.wake(agents, wait=wait, timeout=options.timeout, progress=progress))

    def recorded_profile(self, options: Options) -> str | None:
        return install.Record.read(options.root).profile
