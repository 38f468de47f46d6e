"""The supervisord backend, for hosts whose PID 1 is not systemd: a per-user
supervisord runs the agents, and agentkit-activator holds the optional agents'
ports and starts them on their first connection.

render.py plans supervisord.conf and activator.json (pure), run.py starts,
updates, stops and reads a supervisord, activator/ is the activator program, and
config.py the activator's configuration, shared by the writer and the reader.
"""

from __future__ import annotations

import os
import re
from typing import Iterable

from ...checks import Issue
from ...errors import AgentkitError
from ...files import RenderedFile
from ...model import Manifest
from .. import AgentStatus, Backend, Options, Outcome, Progress
from . import render, run


class SupervisordBackend(Backend):
    name = "supervisord"
    several_hosts = True  # one supervisord per host of the manifest, side by side
    ours = re.compile(f"^({re.escape(render.CONF)}|{re.escape(render.ACTIVATOR_CONFIG)})$")

    @classmethod
    def here(cls) -> bool:
        return True  # a per-user supervisord runs anywhere

    def check(self, manifest: Manifest) -> Iterable[Issue]:
        return render.check(manifest)

    def activation(self, agent) -> str:
        # supervisord cannot hand over a socket: the activator forwards to every optional agent.
        return "none" if agent.essential else "activator"

    def state_dir(self, manifest: Manifest, host: str, options: Options, *, started: bool = False) -> str:
        """Where `host`'s supervisord lives: --state-dir (a directory per host when the manifest has
        several), else the default. `started`: for down and status, the directory the last `up`
        used (--state-dir or not), when nothing runs in the default."""
        if options.state_dir is None:
            default = run.default_state_dir(manifest, host)
            if started and not run.running(default):
                return run.recall(manifest, host) or default
            return default
        base = os.path.abspath(options.state_dir)
        return os.path.join(base, host) if options.several else base

    def plan(self, manifest: Manifest, host: str, profile: str | None, options: Options) -> list[RenderedFile]:
        return render.plan_supervisord(manifest, host, profile, bin_dir=options.bin_dir, templates=options.templates,
                                       state_dir=self.state_dir(manifest, host, options))

    def place(self, manifest: Manifest, host: str, options: Options) -> str:
        return self.state_dir(manifest, host, options)

    def apply(self, manifest: Manifest, host: str, profile: str, options: Options, progress: Progress) -> Outcome:
        unsupported = [flag for flag, given in (("--root", os.path.realpath(options.root) != "/"),
                                                ("--force", options.force), ("--restart", options.restart_all))
                       if given]
        if unsupported:
            raise AgentkitError(f"{', '.join(unsupported)}: not for the {self.name} backend (its files live in "
                                "the state directory, which is agentkit's alone)")
        directory = self.state_dir(manifest, host, options)
        planned = self.plan(manifest, host, profile, options)
        changes = self.pending(manifest, host, planned, options)
        result = run.up(manifest, host, profile, planned, changes, state_dir=directory, bin_dir=options.bin_dir,
                        timeout=options.timeout, progress=progress)
        run.remember(manifest, host, directory)
        running = len(result.essential) - len([n for n in result.failed if n in result.essential])
        progress(f"{host}: {running}/{len(result.essential)} essential agents running, {len(result.optional)} "
                 f"optional agents dormant (the activator holds their ports); state, logs and control socket "
                 f"in {directory}")
        if run.router_here(manifest, host) and render.ROUTER not in result.failed:
            router = manifest.router
            progress(f"{host}: the router (router: in {os.path.basename(router.where.file)}) listens on "
                     f"{router.bind}:{router.port}")
        return Outcome(changes, failed={name: [f"{why} (log: {directory}/logs/{name}.log)"]
                                        for name, why in result.failed.items()})

    def stop(self, manifest: Manifest, host: str, options: Options, progress: Progress) -> bool:
        directory = self.state_dir(manifest, host, options, started=True)
        if run.down(directory, timeout=options.timeout):
            progress(f"{host}: supervisord and every agent stopped ({directory})")
            return True
        progress(f"{host}: nothing running ({directory})")
        return False

    def status(self, manifest: Manifest, host: str, profile: str | None, options: Options) -> list[AgentStatus]:
        directory = self.state_dir(manifest, host, options, started=True)
        if not run.running(directory):
            raise AgentkitError(f"{host}: no supervisord answers in {directory} (start the fleet with agentkit up)")
        return run.collect(manifest, host, profile, directory)

    def wake(self, manifest: Manifest, host: str, agents: list, options: Options, wait: bool,
             progress: Progress) -> dict[str, str | None]:
        directory = self.state_dir(manifest, host, options, started=True)
        if not run.running(directory):
            raise AgentkitError(f"{host}: no supervisord answers in {directory} (start the fleet with agentkit up)")
        out: dict[str, str | None] = {}
        optional = [a.name for a in agents if a.optional]
        for agent in agents:
            if agent.essential:  # supervisord keeps it running (autostart): a wake is a start if it is not
                out[agent.name] = run.start_essential(directory, agent.name, wait=wait, timeout=options.timeout)
        if optional:
            out.update(run.control(directory, {"op": "wake", "agents": optional, "wait": wait},
                                   timeout=options.timeout + 5)["results"])
        return out

