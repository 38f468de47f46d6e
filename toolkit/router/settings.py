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
from . import config


@dataclass(frozen=True)
class RouterSetting:
    parse: Callable[[Any], Any]
    default: Any  # None: not passed (the router's own default), REQUIRED: must be given
    flag: str | None  # the agentkit-router option it becomes; None: used by the unit itself
    help: str
    manifest: bool = True  # False: an agentkit-router option only, not a key of the manifest's router:
    doc: str | None = None  # the README's text, where it says more than help
    shown: str | None = None  # the README's default, where the value alone would not say it
    # A repeated option (the rule table, tiers, peers): the manifest's value is a collection, each item one
    # option, read back with from_text and written with to_text.
    from_text: Callable[[str], Any] | None = None
    to_text: Callable[[Any], str] | None = None
    text_help: str | None = None  # the option's help, where its text form differs from the manifest's

    @property
    def multiple(self) -> bool:
        return self.from_text is not None


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


def router_flag_value(key: str, value: Any) -> list[str]:
    """A router setting as its agentkit-router option's texts: one, or one per item of a repeated option."""
    setting = ROUTER_SETTINGS[key]
    if setting.multiple:
        return [setting.to_text(item) for item in value]
    return [_flag_text(setting.parse, value)]


def _flag_text(parse: Callable[[Any], Any], value: Any) -> str:
    if parse is _listen:
        host, port = value
        return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    if parse is parsers.size:
        return values.format_size(value)
    if parse is parsers.span:
        return values.format_span(value)
    if isinstance(value, float):
        return repr(value)  # every digit: the router reads back the manifest's number
    return str(value)


# The reference's rule table (its heavy and light task types), the default of `rules`.
DEFAULT_RULES = (
    config.Rule("code_generation", 0.9, None),
    config.Rule("large_context_reasoning", 0.95, None),
    config.Rule("training|fine_tuning", 1.0, None),
    config.Rule("simple_chat|greeting", 0.2, None),
    config.Rule("command_parsing", 0.3, None),
    config.Rule("emotion_detection", 0.4, None),
)
_PORT = 8090
_LOG_LEVELS = ("debug", "info", "warning", "error")

ROUTER_SETTINGS: dict[str, RouterSetting] = {
    "host": RouterSetting(parsers.text, REQUIRED, None, "the host the router runs on (a key of hosts:)"),
    "port": RouterSetting(parsers.port, _PORT, None, "the HTTP port: OpenAI API, /v1/route, /health, /metrics"),
    "bind": RouterSetting(parsers.bind, "0.0.0.0", None, "the address to listen on"),
    # The unit writes --listen from bind and port.
    "listen": RouterSetting(_listen, ("127.0.0.1", _PORT), "--listen", "HOST:PORT to serve on", manifest=False),
    "local.url": RouterSetting(parsers.url, REQUIRED, "--local-url", "the local backend's OpenAI base URL"),
    "local.model": RouterSetting(parsers.model_name, None, "--local-model",
                                 "the local model (or its tiers, local.models)"),
    "local.models": RouterSetting(config.tiers(cloud=False), None, "--local-tier",
                                  "the local models by complexity, each {name, above, context_window, "
                                  "kv_cache_per_token, input_price, output_price}",
                                  from_text=lambda text: config.model_from_text(text, cloud=False),
                                  to_text=lambda m: config.model_text(m, cloud=False),
                                  text_help="a local model tier, 'NAME above=0.7 context_window=4096 "
                                            "kv_cache_per_token=800K input_price=0 output_price=0' (repeat it)"),
    "local.context_window": RouterSetting(parsers.whole(1, 10_000_000), 8192, "--local-context-window",
                                          "tokens a local model takes, prompt and answer (a tier's default)"),
    "local.kv_cache_per_token": RouterSetting(parsers.size, 128 << 10, "--local-kv-per-token",
                                              "GPU memory one token of KV cache takes (fp16 13B: about 800K; "
                                              "a tier's default)"),
    "local.max_inflight": RouterSetting(parsers.whole(1, 100_000), 4, "--local-max-inflight",
                                        "local requests in flight before new ones go to a peer or the cloud"),
    "local.load": RouterSetting(parsers.choice(*config.LOADS), "none", "--local-load",
                                "the backend's own load signal, polled: llama.cpp's /slots, or /metrics "
                                "(llama.cpp, vLLM)"),
    "small.model": RouterSetting(parsers.model_name, None, "--small-model",
                                 "a smaller local model for when the cloud is down and memory is short"),
    "small.context_window": RouterSetting(parsers.whole(1, 10_000_000), None, "--small-context-window",
                                          "its window; default: the local model's"),
    "small.kv_cache_per_token": RouterSetting(parsers.size, None, "--small-kv-per-token",
                                              "its KV cache per token; default: half the local model's"),
    "peers": RouterSetting(config.peers, None, "--peer",
                           "more local backends by name, each {url, host, models (or model), max_inflight, load, "
                           "gpu, capacity}",
                           from_text=config.peer_from_text, to_text=config.peer_text,
                           text_help="another local backend, 'NAME url=URL max_inflight=2 load=slots gpu=0 "
                                     "capacity=8G; MODEL above=0.5 ...; MODEL ...' (gpu=N: NVML on this host; "
                                     "repeat it)"),
    "cloud.url": RouterSetting(parsers.url, REQUIRED, "--cloud-url", "the cloud backend's OpenAI base URL"),
    "cloud.model": RouterSetting(parsers.model_name, None, "--cloud-model", "the cloud model (or its tiers, cloud.models)"),
    "cloud.models": RouterSetting(config.tiers(cloud=True), None, "--cloud-tier",
                                  "the cloud models by complexity, each {name, above, input_price, output_price}",
                                  from_text=lambda text: config.model_from_text(text, cloud=True),
                                  to_text=lambda m: config.model_text(m, cloud=True),
                                  text_help="a cloud model tier, 'NAME above=0.9 input_price=2.5 output_price=10' "
                                            "(repeat it)"),
    "cloud.api_key_file": RouterSetting(parsers.abs_path, None, None,
                                        "the file holding the cloud key (its owner alone may read it)"),
    # The router reads the key from the credential that LoadCredential= passes, not from the manifest's file.
    "cloud.key_file": RouterSetting(_file, None, "--cloud-api-key-file",
                                    "the file holding the cloud key; default: $CREDENTIALS_DIRECTORY/cloud-api-key "
                                    "(systemd LoadCredential=)", manifest=False),
    "rules": RouterSetting(config.rules, DEFAULT_RULES, "--rule",
                           "task type (or pattern, such as training|fine_tuning) -> complexity score or backend",
                           from_text=config.rule_from_text, to_text=config.rule_text,
                           text_help="'PATTERN=SCORE' or 'PATTERN=BACKEND', the first match wins (repeat it; "
                                     "given, it replaces the default table)",
                           shown="the reference's table"),
    "unknown": RouterSetting(config.unknown, config.ESTIMATE, "--unknown",
                             "how task types no rule matches are scored: estimate (from the request's size, answer "
                             "length and tools), a score, or a backend"),
    "threshold": RouterSetting(parsers.fraction, 0.7, "--threshold", "complexity from which work goes to the cloud"),
    "gpu.device": RouterSetting(parsers.whole(0, 63), 0, "--gpu-device", "NVML index of the local backend's GPU"),
    "gpu.reserve": RouterSetting(parsers.size, 512 << 20, "--gpu-reserve", "GPU memory kept free on each local backend's GPU"),
    "gpu.capacity": RouterSetting(parsers.size, 8 << 30, "--gpu-capacity",
                                 "free GPU memory assumed without NVML (a peer's default too)"),
    "gpu.interval": RouterSetting(parsers.span, 250_000, "--gpu-interval", "NVML sampling period"),
    "gpu.stale_after": RouterSetting(parsers.span, 2_000_000, "--gpu-stale-after", "an older GPU snapshot counts as unknown"),
    "timeout": RouterSetting(parsers.span, 60_000_000, "--timeout", "a request's deadline to its first byte, retries included"),
    "attempt_timeout": RouterSetting(parsers.span, 30_000_000, "--attempt-timeout",
                                     "one backend's time to answer a request that is not streamed, before the "
                                     "request fails over"),
    "first_byte_timeout": RouterSetting(parsers.span, 10_000_000, "--first-byte-timeout",
                                        "one backend's time to a stream's first byte before the request fails over"),
    "hedge_after": RouterSetting(parsers.span, None, "--hedge-after",
                                 "a stream with no first byte by then gets a second attempt on the next backend; "
                                 "the first to answer wins (off unless set)"),
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
    "header_timeout": RouterSetting(parsers.span, 10_000_000, "--header-timeout",
                                    "a client connection with no complete request head this long after it opened "
                                    "or after its last answer is closed (idle keep-alive ones too)", manifest=False),
    "memory_max": RouterSetting(parsers.memory, 1 << 30, None, "MemoryMax= of the router's unit"),
}

# What the manifest's `router:` section accepts (the loader reads this), and what agentkit-router takes.
MANIFEST_SETTINGS: dict[str, RouterSetting] = {k: s for k, s in ROUTER_SETTINGS.items() if s.manifest}
ROUTER_OPTIONS: dict[str, RouterSetting] = {k: s for k, s in ROUTER_SETTINGS.items() if s.flag is not None}
