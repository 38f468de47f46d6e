"""agentkit-router: the command (`agentkit render` writes its flags from the manifest's router section)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

import click
from aiohttp import web

from .. import values
from ..agent import Notifier
from .gpu import GpuSampler
from .policy import THRESHOLD, LocalModel, PolicyConfig
from .server import Router, Settings, make_app, read_key


def _size(text: str) -> int:
    try:
        value = values.parse_size(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return value


def _seconds(text: str) -> float:
    try:
        return values.parse_span(text) / 1_000_000
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


class Size(click.ParamType):
    name = "SIZE"

    def convert(self, value, param, ctx):
        return value if isinstance(value, int) else _size(value)


class Span(click.ParamType):
    name = "SPAN"

    def convert(self, value, param, ctx):
        return value if isinstance(value, float) else _seconds(value)


def _listen(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise click.BadParameter(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


@click.command(context_settings={"help_option_names": ["-h", "--help"], "show_default": True})
@click.option("--listen", default="127.0.0.1:8090", help="HOST:PORT to serve on")
@click.option("--local-url", required=True, help="the local backend's OpenAI base URL, e.g. http://127.0.0.1:8080/v1")
@click.option("--local-model", required=True, help="the local model's name")
@click.option("--local-context-window", type=click.IntRange(1), default=8192, help="tokens, prompt and answer")
@click.option("--local-kv-per-token", type=Size(), default="128K", help="GPU memory one token of KV cache takes")
@click.option("--local-max-inflight", type=click.IntRange(1), default=4, help="local requests in flight before overflow")
@click.option("--small-model", default=None, help="a smaller local model for when the cloud is down and memory short")
@click.option("--small-context-window", type=click.IntRange(1), default=None, help="default: the local model's")
@click.option("--small-kv-per-token", type=Size(), default=None)
@click.option("--cloud-url", required=True, help="the cloud backend's OpenAI base URL")
@click.option("--cloud-model", required=True)
@click.option("--cloud-api-key-file", type=click.Path(dir_okay=False), default=None,
              help="default: $CREDENTIALS_DIRECTORY/cloud-api-key (systemd LoadCredential=)")
@click.option("--threshold", type=click.FloatRange(0, 1), default=THRESHOLD, help="complexity that goes to the cloud")
@click.option("--gpu-device", type=click.IntRange(0), default=0, help="NVML index of the local model's GPU")
@click.option("--gpu-reserve", type=Size(), default="512M", help="GPU memory kept free")
@click.option("--gpu-capacity", type=Size(), default="8G", help="free GPU memory assumed when NVML tells nothing")
@click.option("--gpu-interval", type=Span(), default="250ms", help="NVML sampling period")
@click.option("--gpu-stale-after", type=Span(), default="2s", help="an older snapshot counts as unknown")
@click.option("--timeout", type=Span(), default="60s", help="a request's deadline to its first byte, retries included")
@click.option("--attempt-timeout", type=Span(), default="30s",
              help="one backend's time to answer (or start a stream) before the request fails over")
@click.option("--connect-timeout", type=Span(), default="2s")
@click.option("--max-request-size", type=Size(), default="1M", help="larger request bodies get a 413")
@click.option("--breaker-failures", type=click.IntRange(1), default=3, help="failures in a row that open a circuit")
@click.option("--breaker-open", type=Span(), default="2s", help="how long an open circuit waits before half-open")
@click.option("--probe-interval", type=Span(), default="500ms", help="health probes of a backend whose circuit is open (x10 when traffic is quiet)")
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]), default="info")
def main(**opts) -> None:
    """The GPU-aware LLM router: OpenAI-compatible, local or cloud per request."""
    logging.basicConfig(level=opts["log_level"].upper(), format="%(levelname)s %(message)s", stream=sys.stderr)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    host, port = _listen(opts["listen"])
    local = LocalModel(opts["local_model"], opts["local_context_window"], opts["local_kv_per_token"])
    small = None
    if opts["small_model"]:
        small = LocalModel(opts["small_model"], opts["small_context_window"] or local.context_window,
                           opts["small_kv_per_token"] or max(1, local.kv_bytes_per_token // 2))
    try:
        key = read_key(opts["cloud_api_key_file"])
    except OSError as exc:
        raise click.ClickException(f"cannot read the cloud API key: {exc.strerror}: {exc.filename}") from None
    settings = Settings(
        policy=PolicyConfig(local=local, cloud_model=opts["cloud_model"], small=small, threshold=opts["threshold"],
                            max_inflight=opts["local_max_inflight"], gpu_reserve=opts["gpu_reserve"],
                            gpu_capacity=opts["gpu_capacity"]),
        local_url=opts["local_url"], cloud_url=opts["cloud_url"], cloud_api_key=key, gpu_device=opts["gpu_device"],
        timeout=opts["timeout"], attempt_timeout=opts["attempt_timeout"], connect_timeout=opts["connect_timeout"], max_request_bytes=opts["max_request_size"],
        breaker_failures=opts["breaker_failures"], breaker_open_for=opts["breaker_open"],
        probe_interval=opts["probe_interval"],
    )
    try:
        import uvloop
    except ImportError:
        uvloop = None
    runner = uvloop.run if uvloop is not None else asyncio.run
    sys.exit(runner(serve(settings, host, port, opts["gpu_interval"], opts["gpu_stale_after"])))


async def serve(settings: Settings, host: str, port: int, gpu_interval: float, gpu_stale_after: float) -> int:
    log = logging.getLogger("agentkit.router")
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
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        notifier.send("STOPPING=1")
        log.info("stopping")
        return 0
    finally:
        await runner.cleanup()
        gpu.stop()
        notifier.close()


if __name__ == "__main__":
    main()
