"""agentkit-router: the command. Its options are router/settings.py's table (`agentkit render` writes them
from the manifest's router section; the router's own ones keep their defaults)."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import sys
from dataclasses import replace
from typing import Any, Callable

import click
from aiohttp import web

from .. import logs, parsers, units
from ..sdnotify import Notifier, until_stopped
from . import guard
from .gpu import GpuSampler
from . import policy
from .config import CLOUD, LOCAL, Model
from .policy import PolicyConfig
from .key import read_key
from .server import Endpoint, Router, Settings, make_app
from ..values import seconds
from .settings import REQUIRED, ROUTER_OPTIONS, RouterSetting, router_flag_value

_METAVARS = {parsers.size: "SIZE", parsers.span: "SPAN", parsers.fraction: "NUMBER", parsers.url: "URL",
             parsers.model_name: "MODEL"}


class SettingType(click.ParamType):
    """A router setting's text through the table's parser (the manifest loader's); numbers as YAML gives them.
    A repeated option's text through its own text form (config.py)."""

    def __init__(self, setting: RouterSetting) -> None:
        self.parse = setting.from_text or setting.parse
        self.text = setting.from_text is not None
        kind = getattr(setting.parse, "__qualname__", "").split(".")[0]
        self.name = "TEXT" if self.text else _METAVARS.get(setting.parse) or {
            "whole": "INTEGER", "choice": "LEVEL", "_listen": "HOST:PORT", "_file": "FILE"}.get(kind, "TEXT")

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # already parsed
        try:
            return self.parse(value)
        except ValueError as exc:
            error = exc
        number = None if self.text else _number(value)
        if number is not None:
            try:
                return self.parse(number)
            except ValueError as exc:
                error = exc
        self.fail(str(error), param, ctx)


def _number(text: str) -> int | float | None:
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return None


def _param(flag: str) -> str:
    return flag.lstrip("-").replace("-", "_")


def router_options(command: Callable) -> Callable:
    """One click option per ROUTER_OPTIONS row, in the table's order (a repeated one for the collections)."""
    for key, setting in reversed(ROUTER_OPTIONS.items()):
        required = setting.default is REQUIRED
        if setting.multiple:
            default = None if setting.default is None else router_flag_value(key, setting.default)
        else:
            default = None if required or setting.default is None else router_flag_value(key, setting.default)[0]
        command = click.option(setting.flag, _param(setting.flag), type=SettingType(setting), required=required,
                               default=default, multiple=setting.multiple, help=setting.text_help or setting.help,
                               show_default=not setting.multiple)(command)
    return command


def options_of(opts: dict) -> dict[str, Any]:
    """click's parameters -> {setting key: value}; a repeated option's items as a tuple (None when not given)."""
    out = {}
    for key, setting in ROUTER_OPTIONS.items():
        value = opts[_param(setting.flag)]
        out[key] = (tuple(value) or None) if setting.multiple else value
    return out


def policy_of(o: dict[str, Any]) -> tuple[PolicyConfig, tuple[Endpoint, ...]]:
    """The decision's configuration and the backends' addresses from the router's options."""
    window, kv = o["local.context_window"], o["local.kv_cache_per_token"]

    def local_tier(m: Model) -> Model:
        return replace(m, context_window=m.context_window or window, kv_bytes_per_token=m.kv_bytes_per_token or kv)

    if o["local.models"]:
        given = [f for f, key in (("--local-model", "local.model"), ("--small-model", "small.model")) if o[key]]
        if given:
            raise click.UsageError(f"--local-tier gives the local models: leave out {' and '.join(given)}")
        models = [local_tier(m) for m in o["local.models"]]
    elif o["local.model"]:
        models = [Model(o["local.model"], 0.0, window, kv)]
        if o["small.model"]:
            models.append(Model(o["small.model"], 0.0, o["small.context_window"] or window,
                                o["small.kv_cache_per_token"] or max(1, kv // 2)))
    else:
        raise click.UsageError("give the local model: --local-model NAME, or its tiers, --local-tier 'NAME above=...'")
    if o["cloud.models"]:
        if o["cloud.model"]:
            raise click.UsageError("--cloud-tier gives the cloud models: leave out --cloud-model")
        cloud_models = list(o["cloud.models"])
    elif o["cloud.model"]:
        cloud_models = [Model(o["cloud.model"])]
    else:
        raise click.UsageError("give the cloud model: --cloud-model NAME, or its tiers, --cloud-tier 'NAME above=...'")
    capacity = o["gpu.capacity"]
    locals_ = [policy.backend(LOCAL, models, max_inflight=o["local.max_inflight"], capacity=capacity)]
    endpoints = [Endpoint(LOCAL, o["local.url"], o["gpu.device"], o["local.load"])]
    for peer in o["peers"] or ():
        if peer.name in (LOCAL, CLOUD) or peer.name in (e.name for e in endpoints):
            raise click.UsageError(f"--peer {peer.name}: a backend of that name is given already")
        locals_.append(policy.backend(peer.name, [local_tier(m) for m in peer.models], max_inflight=peer.max_inflight,
                                      capacity=peer.capacity or capacity))
        endpoints.append(Endpoint(peer.name, peer.url, peer.gpu, peer.load))
    endpoints.append(Endpoint(CLOUD, o["cloud.url"], None, "none"))
    try:
        config = PolicyConfig(locals=tuple(locals_), cloud=policy.backend(CLOUD, cloud_models),
                              rules=o["rules"] or (), unknown=o["unknown"], threshold=o["threshold"],
                              gpu_reserve=o["gpu.reserve"])
    except ValueError as exc:
        raise click.UsageError(str(exc)) from None
    return config, tuple(endpoints)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@router_options
def main(**opts) -> None:
    """The GPU-aware LLM router: OpenAI-compatible, local or cloud per request.

    `agentkit-router eval FILE [--manifest DIR]` runs a labelled set of tasks through the decision instead."""
    o = options_of(opts)
    logs.setup(units.ROUTER_PROGRAM, level=o["log_level"])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    host, port = o["listen"]
    config, endpoints = policy_of(o)
    try:
        key = read_key(o["cloud.key_file"])
    except FileNotFoundError as exc:
        # As under systemd (SetCredential='s empty default): the router runs, the cloud gets no key, and
        # the log and /health say so; the file can come later (a restart reads it).
        logging.getLogger(units.ROUTER_PROGRAM).warning(
            "the cloud API key file %s does not exist: starting without a cloud key", exc.filename)
        key = None
    except OSError as exc:
        raise click.ClickException(f"cannot read the cloud API key: {exc.strerror}: {exc.filename}") from None
    settings = Settings(
        policy=config, endpoints=endpoints, cloud_api_key=key,
        timeout=seconds(o["timeout"]), attempt_timeout=seconds(o["attempt_timeout"]),
        first_byte_timeout=seconds(o["first_byte_timeout"]),
        hedge_after=None if o["hedge_after"] is None else seconds(o["hedge_after"]),
        connect_timeout=seconds(o["connect_timeout"]), header_timeout=seconds(o["header_timeout"]),
        max_request_bytes=o["max_request_size"],
        breaker_failures=o["breaker.failures"], breaker_open_for=seconds(o["breaker.open_for"]),
        probe_interval=seconds(o["probe_interval"]),
    )
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    sys.exit(runner(serve(settings, host, port, seconds(o["gpu.interval"]), seconds(o["gpu.stale_after"]))))


def run() -> None:
    """The console script: `eval` runs the labelled-set tool, anything else the router."""
    if len(sys.argv) > 1 and sys.argv[1] == "eval":
        from .evaluate import command
        command(sys.argv[2:], prog_name=f"{units.ROUTER_PROGRAM} eval")
    else:
        main()


def _inherited_socket() -> socket.socket | None:
    """The listening socket systemd passes (agentkit-router.socket, LISTEN_FDS=1 at fd 3), or
    None: under supervisord, or started by hand, the router binds its port itself."""
    if os.environ.get("LISTEN_PID") != str(os.getpid()) or os.environ.get("LISTEN_FDS") != "1":
        return None
    for name in ("LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"):  # not for the router's children
        os.environ.pop(name, None)
    return socket.socket(fileno=3)


async def serve(settings: Settings, host: str, port: int, gpu_interval: float, gpu_stale_after: float) -> int:
    log = logging.getLogger(units.ROUTER_PROGRAM)
    gpu = GpuSampler(interval=gpu_interval, stale_after=gpu_stale_after)
    gpu.start()
    if gpu.available:
        snapshot = gpu.latest()
        names = ", ".join(snapshot.names) if snapshot else "no snapshot yet"
        log.info("NVML: free GPU memory sampled every %g s (%s)", gpu_interval, names)
    else:
        log.warning("%s; deciding with the configured local capacity of %d MiB", gpu.reason,
                    settings.policy.locals[0].capacity >> 20)
    router = Router(settings, gpu)
    # Protecting the server from its clients (guard.py): descriptors, idle and slow connections, log floods.
    before, nofile = guard.raise_nofile_limit()
    log.info("open files: at most %d (the soft limit was %d)", nofile, before)
    guard.install_log_filter()
    runner = web.AppRunner(make_app(router), access_log=None, handle_signals=False,
                           **guard.server_kwargs(settings.header_timeout))
    await runner.setup()
    notifier = Notifier(os.environ)
    try:
        inherited = _inherited_socket()
        site = (web.SockSite(runner, inherited) if inherited is not None
                else web.TCPSite(runner, host, port, backlog=4096, reuse_address=True))
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, os.strerror(exc.errno) if exc.errno else exc)
            return 1
        log.info("listening on http://%s:%d (%s; cloud key %s)", host, port,
                 "; ".join(f"{e.name} {e.url} {', '.join(m.name for m in b.models)}"
                           for e, b in zip(settings.endpoints, settings.policy.locals + (settings.policy.cloud,))),
                 "set" if settings.cloud_api_key else "none")
        notifier.send("READY=1", f"STATUS=listening on {host}:{port}")
        await until_stopped(notifier)
        log.info("stopping")
        return 0
    finally:
        await runner.cleanup()
        gpu.stop()
        notifier.close()


if __name__ == "__main__":
    run()
