"""The router's settings, each declared once: the manifest's `router:` section and the
agentkit-router option each one becomes (`agentkit render` writes the options from
the manifest; agentkit-router builds its command line from this table and reads
them). A few options are the router's alone (manifest=False): the manifest does not
accept them under `router:` and `agentkit render` does not write them.

Every default is the parsed value (bytes, microseconds, numbers), the same the
manifest loader gives; the router's own code takes its defaults from here too.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Callable

from .. import parsers, values


@dataclass(frozen=True)
class RouterSetting:
    parse: Callable[[Any], Any]
    default: Any  # None: not passed (the router's own default), REQUIRED: must be given
    flag: str | None  # the agentkit-router option it becomes; None: used by the unit itself
    help: str
    manifest: bool = True  # False: an agentkit-router option only, not a key of the manifest's router:
    doc: str | None = None  # the README's text, where it says more than help
    shown: str | None = None  # the README's default, where the value alone would not say it


REQUIRED = object()


def _listen(value: Any) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) as (host, port)."""
    text = parsers.text(value)
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)


def _file(value: Any) -> str:
    """A file's path (it need not exist yet; a directory is refused)."""
    text = parsers.text(value)
    if not text:
        raise ValueError("expected a file's path, got an empty one")
    if os.path.isdir(text):
        raise ValueError(f"{text!r} is a directory, not a file")
    return text


def default(key: str) -> Any:
    """The table's default for `key` (a parsed value)."""
    return ROUTER_SETTINGS[key].default


def router_flag_value(key: str, value: Any) -> str:
    """A router setting as its agentkit-router option's text."""
    parse = ROUTER_SETTINGS[key].parse
    if parse is _listen:
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parse is parsers.size:
        return values.format_size(value)
    if parse is parsers.span:
        return values.format_span(value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


_PORT = 8090
_LOG_LEVELS = ("debug", "info", "warning", "error")

ROUTER_SETTINGS: dict[str, RouterSetting] = {
    "host": RouterSetting(parsers.text, REQUIRED, None, "the host the router runs on (a key of hosts:)"),
    "port": RouterSetting(parsers.port, _PORT, None, "the HTTP port: OpenAI API, /v1/route, /health, /metrics"),
    "bind": RouterSetting(parsers.bind, "0.0.0.0", None, "the address to listen on"),
    # The unit writes --listen from bind and port.
    "listen": RouterSetting(_listen, ("127.0.0.1", _PORT), "--listen", "HOST:PORT to serve on", manifest=False),
    "local.url": RouterSetting(parsers.url, REQUIRED, "--local-url", "the local backend's OpenAI base URL"),
    "local.model": RouterSetting(parsers.model_name, REQUIRED, "--local-model", "the local model"),
    "local.context_window": RouterSetting(parsers.whole(1, 10_000_000), 8192, "--local-context-window",
                                          "tokens the local model takes, prompt and answer"),
    "local.kv_cache_per_token": RouterSetting(parsers.size, 128 << 10, "--local-kv-per-token",
                                              "GPU memory one token of KV cache takes (fp16 13B: about 800K)"),
    "local.max_inflight": RouterSetting(parsers.whole(1, 100_000), 4, "--local-max-inflight",
                                        "local requests in flight before new ones overflow to the cloud"),
    "small.model": RouterSetting(parsers.model_name, None, "--small-model",
                                 "a smaller local model for when the cloud is down and memory is short"),
    "small.context_window": RouterSetting(parsers.whole(1, 10_000_000), None, "--small-context-window",
                                          "its window; default: the local model's"),
    "small.kv_cache_per_token": RouterSetting(parsers.size, None, "--small-kv-per-token",
                                              "its KV cache per token; default: half the local model's"),
    "cloud.url": RouterSetting(parsers.url, REQUIRED, "--cloud-url", "the cloud backend's OpenAI base URL"),
    "cloud.model": RouterSetting(parsers.model_name, REQUIRED, "--cloud-model", "the cloud model"),
    "cloud.api_key_file": RouterSetting(parsers.abs_path, None, None,
                                        "the file holding the cloud key, passed with LoadCredential="),
    # The router reads the key from the credential that LoadCredential= passes, not from the manifest's file.
    "cloud.key_file": RouterSetting(_file, None, "--cloud-api-key-file",
                                    "the file holding the cloud key; default: $CREDENTIALS_DIRECTORY/cloud-api-key "
                                    "(systemd LoadCredential=)", manifest=False),
    "threshold": RouterSetting(parsers.fraction, 0.7, "--threshold", "complexity from which work goes to the cloud"),
    "gpu.device": RouterSetting(parsers.whole(0, 63), 0, "--gpu-device", "NVML index of the local model's GPU"),
    "gpu.reserve": RouterSetting(parsers.size, 512 << 20, "--gpu-reserve", "GPU memory kept free"),
    "gpu.capacity": RouterSetting(parsers.size, 8 << 30, "--gpu-capacity", "free GPU memory assumed without NVML"),
    "gpu.interval": RouterSetting(parsers.span, 250_000, "--gpu-interval", "NVML sampling period"),
    "gpu.stale_after": RouterSetting(parsers.span, 2_000_000, "--gpu-stale-after", "an older GPU snapshot counts as unknown"),
    "timeout": RouterSetting(parsers.span, 60_000_000, "--timeout", "a request's deadline to its first byte, retries included"),
    "attempt_timeout": RouterSetting(parsers.span, 30_000_000, "--attempt-timeout",
                                     "one backend's time to answer (or start a stream) before the request fails over",
                                     manifest=False),
    "connect_timeout": RouterSetting(parsers.span, 2_000_000, "--connect-timeout", "one backend's time to accept a connection",
                                     manifest=False),
    "max_request_size": RouterSetting(parsers.size, 1 << 20, "--max-request-size", "larger request bodies get a 413"),
    "breaker.failures": RouterSetting(parsers.whole(1, 1_000_000), 3, "--breaker-failures",
                                      "failures in a row that open a circuit", manifest=False),
    "breaker.open_for": RouterSetting(parsers.span, 2_000_000, "--breaker-open",
                                      "how long an open circuit waits before half-open", manifest=False),
    "probe_interval": RouterSetting(parsers.span, 500_000, "--probe-interval",
                                    "health probes of a backend whose circuit is open (x10 when traffic is quiet)",
                                    manifest=False),
    "log_level": RouterSetting(parsers.choice(*_LOG_LEVELS), "info", "--log-level",
                               "the least severe log records written: " + ", ".join(_LOG_LEVELS), manifest=False),
    "memory_max": RouterSetting(parsers.memory, 1 << 30, None, "MemoryMax= of the router's unit"),
}

# What the manifest's `router:` section accepts (the loader reads this), and what agentkit-router takes.
MANIFEST_SETTINGS: dict[str, RouterSetting] = {k: s for k, s in ROUTER_SETTINGS.items() if s.manifest}
ROUTER_OPTIONS: dict[str, RouterSetting] = {k: s for k, s in ROUTER_SETTINGS.items() if s.flag is not None}
