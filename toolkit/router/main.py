"""agentkit-router: the command. Its options are router/settings.py's table (`agentkit render` writes them
from the manifest's router section; the router's own ones keep their defaults)."""

from __future__ import annotations

import asyncio
import logging
import os
import sys
from typing import Any, Callable

import click
from aiohttp import web

from .. import logs, parsers, units
from ..sdnotify import Notifier, until_stopped
from .gpu import GpuSampler
from .policy import LocalModel, PolicyConfig
from .server import Router, Settings, make_app, read_key
from ..values import seconds
from .settings import REQUIRED, ROUTER_OPTIONS, RouterSetting, router_flag_value

_METAVARS = {parsers.size: "SIZE", parsers.span: "SPAN", parsers.fraction: "NUMBER", parsers.url: "URL",
             parsers.model_name: "MODEL"}


class SettingType(click.ParamType):
    """A router setting's text through the table's parser (the manifest loader's); numbers as YAML gives them."""

    def __init__(self, setting: RouterSetting) -> None:
        self.parse = setting.parse
        kind = getattr(setting.parse, "__qualname__", "").split(".")[0]
        self.name = _METAVARS.get(setting.parse) or {"whole": "INTEGER", "choice": "LEVEL", "_listen": "HOST:PORT",
                                                       "_file": "FILE"}.get(kind, "TEXT")

    def convert(self, value, param, ctx):
        if not isinstance(value, str):
            return value  # already parsed
        try:
            return self.parse(value)
        except ValueError as exc:
            error = exc
        number = _number(value)
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
    """One click option per ROUTER_OPTIONS row, in the table's order."""
    for key, setting in reversed(ROUTER_OPTIONS.items()):
        required = setting.default is REQUIRED
        default = None if required or setting.default is None else router_flag_value(key, setting.default)
        command = click.option(setting.flag, _param(setting.flag), type=SettingType(setting), required=required,
                               default=default, help=setting.help)(command)
    return command


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@router_options
def main(**opts) -> None:
    """The GPU-aware LLM router: OpenAI-compatible, local or cloud per request."""
    o: dict[str, Any] = {key: opts[_param(setting.flag)] for key, setting in ROUTER_OPTIONS.items()}
    logs.setup(units.ROUTER_PROGRAM, level=o["log_level"])
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    host, port = o["listen"]
    local = LocalModel(o["local.model"], o["local.context_window"], o["local.kv_cache_per_token"])
    small = None
    if o["small.model"]:
        small = LocalModel(o["small.model"], o["small.context_window"] or local.context_window,
                           o["small.kv_cache_per_token"] or max(1, local.kv_bytes_per_token // 2))
    try:
        key = read_key(o["cloud.key_file"])
    except OSError as exc:
        raise click.ClickException(f"cannot read the cloud API key: {exc.strerror}: {exc.filename}") from None
    settings = Settings(
        policy=PolicyConfig(local=local, cloud_model=o["cloud.model"], small=small, threshold=o["threshold"],
                            max_inflight=o["local.max_inflight"], gpu_reserve=o["gpu.reserve"],
                            gpu_capacity=o["gpu.capacity"]),
        local_url=o["local.url"], cloud_url=o["cloud.url"], cloud_api_key=key, gpu_device=o["gpu.device"],
        timeout=seconds(o["timeout"]), attempt_timeout=seconds(o["attempt_timeout"]),
        connect_timeout=seconds(o["connect_timeout"]), max_request_bytes=o["max_request_size"],
        breaker_failures=o["breaker.failures"], breaker_open_for=seconds(o["breaker.open_for"]),
        probe_interval=seconds(o["probe_interval"]),
    )
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    sys.exit(runner(serve(settings, host, port, seconds(o["gpu.interval"]), seconds(o["gpu.stale_after"]))))


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
                    settings.policy.gpu_capacity >> 20)
    router = Router(settings, gpu)
    runner = web.AppRunner(make_app(router), access_log=None, handle_signals=False)
    await runner.setup()
    notifier = Notifier(os.environ)
    try:
        site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
        try:
            await site.start()
        except OSError as exc:
            log.error("cannot listen on %s:%d: %s", host, port, os.strerror(exc.errno) if exc.errno else exc)
            return 1
        log.info("listening on http://%s:%d (local %s %s, cloud %s %s, cloud key %s)", host, port,
                 settings.local_url, settings.policy.local.name, settings.cloud_url, settings.policy.cloud_model,
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
    main()
