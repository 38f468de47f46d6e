"""plan(): the manifest -> the files of one host, pure and deterministic.

No I/O but reading templates: the same manifest, host, profile, bin dir and
templates always give the same bytes, sorted by path, so golden files and
`agentkit diff` are exact. Writing is write_tree()'s job, and install's.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import jinja2

from . import escape, graph, values
from .errors import AgentkitError
from .manifest import ROUTER_SETTINGS, UNIT_PREFIX, router_flag_value
from .model import Agent, Manifest

SOCKET_PROXYD = "/usr/lib/systemd/systemd-socket-proxyd"
TARGET = "agentkit.target"
REARM = "agentkit-rearm@"
ROUTER_UNIT = "agentkit-router.service"
ROUTER_PROGRAM = "agentkit-router"  # template units that make a failed socket listen again
PACKAGED_TEMPLATES = Path(__file__).resolve().parent / "templates"


@dataclass(frozen=True)
class RenderedFile:
    path: str  # relative to the unit directory (or the host's output directory)
    text: str
    mode: int = 0o644


def template_dirs(override: str | None = None) -> list[str]:
    """A user's directory first (its files replace ours by name), then the packaged ones."""
    dirs = [override] if override else []
    packaged = PACKAGED_TEMPLATES
    if not packaged.is_dir():  # running from a source checkout without an install
        packaged = Path(__file__).resolve().parent.parent / "templates"
    return dirs + [str(packaged)]


@lru_cache(maxsize=8)
def _environment(dirs: tuple[str, ...]) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(list(dirs)),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        auto_reload=False,  # one plan() renders thousands of files: don't stat the templates for each
    )
    env.filters.update(sd_text=escape.systemd_text, sd_exec=escape.systemd_exec, span=values.format_span,
                       size=values.format_size)
    return env


def unit(agent: Agent) -> str:
    return f"{UNIT_PREFIX}{agent.name}.service"


def socket_unit(agent: Agent) -> str:
    suffix = "-proxy" if agent.activation == "proxy" else ""
    return f"{UNIT_PREFIX}{agent.name}{suffix}.socket"


def proxy_unit(agent: Agent) -> str:
    return f"{UNIT_PREFIX}{agent.name}-proxy.service"


def slice_unit(name: str) -> str:
    return f"{UNIT_PREFIX}{name}.slice"


def resolve_command(command: tuple[str, ...], bin_dir: str) -> tuple[str, ...]:
    """A bare program name is one of the programs installed beside agentkit (--bin-dir)."""
    program = command[0]
    if program.startswith("/"):
        return command
    return (os.path.join(bin_dir, program),) + command[1:]


def router_command(router, bin_dir: str) -> list[tuple[str, ...]]:
    """agentkit-router's argv, in groups: the program and --listen, then one option per router setting."""
    groups = [(os.path.join(bin_dir, ROUTER_PROGRAM), "--listen", f"{router.bind}:{router.port}")]
    for key, value in router.settings:
        flag = ROUTER_SETTINGS[key].flag
        if flag is not None:
            groups.append((flag, router_flag_value(key, value)))
    return groups


def agent_environment(manifest: Manifest, agent: Agent) -> list[tuple[str, str]]:
    """What agentkit tells every agent about itself, then the manifest's own variables."""
    env = [("AGENTKIT_AGENT", agent.name), ("AGENTKIT_HOST", agent.host), ("AGENTKIT_PORT", str(agent.port))]
    if agent.health_port is not None:
        env.append(("AGENTKIT_HEALTH_PORT", str(agent.health_port)))
    env.append(("AGENTKIT_ACTIVATION", agent.activation))
    if agent.activation == "proxy":
        env.append(("AGENTKIT_BIND", f"127.0.0.1:{agent.private_port}"))
    if agent.activation == "native":
        env.append(("AGENTKIT_IDLE_STOP", f"{agent.idle_stop_us / 1_000_000:g}"))
    if agent.depends_on:
        addresses = []
        for dep_name in agent.depends_on:
            dep = manifest.agents[dep_name]
            address = "127.0.0.1" if dep.host == agent.host else manifest.hosts[dep.host].address
            addresses.append(f"{dep.name}={address}:{dep.port}")
        env.append(("AGENTKIT_DEPENDS", ",".join(addresses)))
    if agent.gpu_memory is not None:
        env.append(("AGENTKIT_GPU_MEMORY", str(agent.gpu_memory)))
    return env + list(agent.environment)


def plan(manifest: Manifest, host: str, profile: str | None = None, *,
         bin_dir: str, templates: str | None = None) -> list[RenderedFile]:
    """Every unit file of `host` for `profile`, sorted by path."""
    if host not in manifest.hosts:
        raise AgentkitError(f"unknown host {host!r} (hosts in {manifest.root}: {', '.join(manifest.hosts)})")
    if profile is not None and profile not in manifest.profiles:
        raise AgentkitError(f"unknown profile {profile!r} (profiles: {', '.join(manifest.profiles)})")
    env = _environment(tuple(template_dirs(templates)))
    try:
        service_t = env.get_template("agent.service.j2")
        socket_t = env.get_template("agent.socket.j2")
        proxy_t = env.get_template("proxy.service.j2")
        target_t = env.get_template("agentkit.target.j2")
        slice_t = env.get_template("agentkit.slice.j2")
        rearm_timer_t = env.get_template("agentkit-rearm@.timer.j2")
        rearm_service_t = env.get_template("agentkit-rearm@.service.j2")
        router_t = env.get_template("router.service.j2")
    except jinja2.TemplateError as exc:
        raise AgentkitError(f"template: {exc}") from exc

    profile_name = profile or manifest.default_profile
    agents = [a for a in graph.selected(manifest, profile_name) if a.host == host]
    on_host = {a.name for a in agents}
    files: list[RenderedFile] = []
    try:
        for agent in agents:
            local_deps = [unit(manifest.agents[d]) for d in agent.depends_on if d in on_host]
            common = {"agent": agent, "unit": unit(agent), "source": os.path.basename(agent.where.file)}
            files.append(RenderedFile(unit(agent), service_t.render(
                common,
                requires=local_deps,
                command=escape.systemd_exec(resolve_command(agent.command, bin_dir)),
                environment=[escape.systemd_env(k, v) for k, v in agent_environment(manifest, agent)],
                slice=slice_unit(agent.slice),
                target=TARGET,
            )))
            if agent.optional:
                files.append(RenderedFile(socket_unit(agent), socket_t.render(
                    common, target=TARGET, proxy=proxy_unit(agent) if agent.activation == "proxy" else None)))
            if agent.activation == "proxy":
                files.append(RenderedFile(proxy_unit(agent), proxy_t.render(
                    common, socket=socket_unit(agent), target=TARGET,
                    command=escape.systemd_exec((SOCKET_PROXYD, f"--exit-idle-time={values.format_span(agent.idle_stop_us)}",
                                                 f"127.0.0.1:{agent.private_port}")),
                )))
        optional = [a for a in agents if a.optional]
        if optional:
            delay = max(a.restart.interval_us for a in optional)
            files.append(RenderedFile(REARM + ".timer", rearm_timer_t.render(delay=delay)))
            files.append(RenderedFile(REARM + ".service", rearm_service_t.render()))
        used_slices = sorted({a.slice for a in agents})
        files.append(RenderedFile("agentkit.slice", slice_t.render(
            slice=None, name=manifest.name, host=host)))
        for name in used_slices:
            files.append(RenderedFile(slice_unit(name), slice_t.render(
                slice=manifest.slices[name], name=manifest.name, host=host)))
        router = manifest.router if manifest.router is not None and manifest.router.host == host else None
        if router is not None:
            settings = dict(router.settings)
            files.append(RenderedFile(ROUTER_UNIT, router_t.render(
                router=router, agent={"user": None}, source=os.path.basename(router.where.file), target=TARGET,
                slice="agentkit.slice", command=" \\\n    ".join(escape.systemd_exec(g) for g in router_command(router, bin_dir)),
                local_model=settings["local.model"], cloud_model=settings["cloud.model"],
            )))
        files.append(RenderedFile(TARGET, target_t.render(
            name=manifest.name, host=host, profile=profile_name,
            services=[unit(a) for a in agents if a.essential] + ([ROUTER_UNIT] if router is not None else []),
            sockets=[socket_unit(a) for a in agents if a.optional],
        )))
    except jinja2.TemplateError as exc:
        raise AgentkitError(f"template {getattr(exc, 'name', '') or ''}: {exc}") from exc
    return sorted(files, key=lambda f: f.path)
