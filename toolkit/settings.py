"""Every setting of the manifest, declared once (as mkosi declares its settings).

Each table drives the loader (parsing, defaults, the unknown-key check), `agentkit
show`, and the tables of the README (`markdown()`; tests/test_settings.py keeps
the README in step). The router's table, which also makes agentkit-router's
options, is in router/settings.py.

A Setting's `help` is the short text errors quote ("missing port: ..."); `doc` is
the README's, when it says more. `shown` is the README's default when the value
alone would not say it (a required setting, a computed default).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from . import parsers, values
from .router.settings import REQUIRED, RouterSetting


@dataclass(frozen=True)
class Setting:
    parse: Callable[[Any], Any] | None  # None: a section the loader reads with its own rules
    default: Any
    help: str
    doc: str | None = None
    shown: str | None = None


def _S(parse, default, help, doc=None, shown=None) -> Setting:
    return Setting(parse, default, help, doc, shown)


def shown_default(setting: Setting | RouterSetting) -> str:
    """A default as the README writes it."""
    if setting.shown is not None:
        return setting.shown
    value = setting.default
    if value is REQUIRED:
        return "(required)"
    if value is None:
        return "none"
    if isinstance(value, bool):
        return f"`{'true' if value else 'false'}`"
    if setting.parse is parsers.span:
        return f"`{values.format_span(value)}`"
    if setting.parse in (parsers.size, parsers.memory):
        return f"`{values.format_size(value)}`"
    if value == () or value == []:
        return "`[]`"
    if value == {}:
        return "`{}`"
    return f"`{value}`"


BUILTIN_SLICES = ("essential", "optional")  # every host has these; slices: adds more
EVICT_ORDER = ("first", "normal", "last", "never")  # gpu_evict: stopped for room in this order; never: not at all

RESTART_SETTINGS: dict[str, Setting] = {
    "policy": _S(parsers.choice("no", "on-success", "on-failure", "on-abnormal", "on-watchdog", "on-abort", "always"),
                 "on-failure", "systemd Restart=: when a stopped agent is started again"),
    "delay": _S(parsers.span, 1_000_000, "RestartSec=: pause before a restart"),
    "burst": _S(parsers.burst, 5, "StartLimitBurst=: starts allowed within the interval"),
    "interval": _S(parsers.span, 30_000_000, "StartLimitIntervalSec=: the window the burst is counted in"),
}

AGENT_SETTINGS: dict[str, Setting] = {
    "host": _S(parsers.text, None, "the host the agent runs on (a key of hosts:)",
               "the host it runs on", "(required)"),
    "essential": _S(parsers.boolean, False, "true: started at boot; false: started on first connection",
                    "true: started at boot; false: started on the first connection"),
    "group": _S(parsers.text, None, "a label for profiles and graphs (default: the file's group)",
                "a label for profiles and graphs", "the file's group"),
    "description": _S(parsers.text, None, "one line for the unit's Description=",
                      "one line for the unit's `Description=`", "generated"),
    "command": _S(parsers.argv, None, "argv; a bare program name is looked up in --bin-dir, then PATH",
                  "argv, never a shell line; a bare program name is looked up in `--bin-dir` (default: this "
                  "agentkit's own bin directory), then `PATH`; a word's `{port}` is the port the program listens "
                  "on (the private port behind a proxy)", "(required)"),
    "port": _S(parsers.port, None, "the agent port (ZeroMQ/TCP); optional agents' socket listens here",
               "the agent port; an optional agent's socket listens here", "(required)"),
    "health_port": _S(parsers.optional(parsers.port), None, "HTTP health port; never socket-activated",
                      "HTTP health; never socket-activated, so a health check does not wake an agent"),
    "depends_on": _S(parsers.names, (), "agents started first (Wants= and After=)",
                     "`Wants=` and `After=` an essential one; an optional one's socket instead, and `Wants=` "
                     "its service, so a cold chain starts together; across hosts, addresses in `AGENTKIT_DEPENDS`"),
    "activation": _S(parsers.choice("native", "proxy"), "native",
                     "optional agents: native adopts the socket fd; proxy uses systemd-socket-proxyd",
                     "optional agents: `native` (the agent adopts the socket's fd) or `proxy` "
                     "(agentkit holds the port and forwards to the program on 127.0.0.1:`private_port`, which its "
                     "command can name as `{port}`); an essential agent binds its own port unless it says "
                     "`native`: then systemd holds its port too, and clients wait while it restarts (under "
                     "supervisord it binds its own)", "`native`; essential: none"),
    "private_port": _S(parsers.port, None,
                       "proxy mode: where the agent listens on 127.0.0.1 (default port + private_port_offset)",
                       "proxy mode only", "port + `private_port_offset`"),
    "idle_stop": _S(parsers.span, 300_000_000, "optional agents: stop after this long without traffic",
                    "optional agents stop after this long without traffic"),
    "service_type": _S(parsers.choice("simple", "exec", "notify", newer={"notify-reload": "253"}), "exec",
                       "systemd Type=; notify when the agent sends READY=1",
                       "`Type=`: `simple`, `exec` or `notify` (the same as `ready: notify`)"),
    "ready": _S(parsers.optional(parsers.readiness), None,
                "when the agent is ready: notify, started, port, {http: /path} or {command: [argv]}",
                "when the agent counts as started, within `start_timeout`: `notify` (it sends `READY=1`), "
                "`started` (its process runs), `port` (its port accepts a connection), `{http: /path}` (the path "
                "answers 2xx) or `{command: [argv]}` (it exits 0); the unit is active, and its dependants and "
                "clients go on, only then",
                "`notify` if `service_type` is, else `port` (`started` for `native`)"),
    "liveness": _S(parsers.optional(parsers.liveness), None,
                   "{http: /path} or {tcp: true}, interval (10s), failures (3): a running agent that stops "
                   "answering is killed and restarted",
                   "`{http: /path}` (answers 2xx) or `{tcp: true}` (accepts), on `health_port` if set, else the "
                   "port the program listens on; with `interval` (default `10s`) and `failures` (default `3`): "
                   "that many misses in a row and the agent is killed, and its `restart` policy brings it back. "
                   "Only a running agent is probed, never a dormant one"),
    "start_timeout": _S(parsers.span, 30_000_000, "TimeoutStartSec=: how long a start may take",
                        "`TimeoutStartSec=`"),
    "cold_start_slo": _S(parsers.span, 30_000_000, "a cold start slower than this fires an alert",
                         "first connection to ready: slower than this, on average over 15 minutes, fires "
                         "`AgentkitColdStartSlow` (the original's 30 s loading SLA)"),
    "watchdog": _S(parsers.optional(parsers.span), None, "WatchdogSec=: the agent sends WATCHDOG=1 within this",
                   "`WatchdogSec=`"),
    "restart": _S(dict, None, "restart policy and start limits: " + ", ".join(RESTART_SETTINGS),
                  "`policy`, `delay`, `burst`, `interval`: `Restart=`, `RestartSec=`, `StartLimitBurst=`, "
                  "`StartLimitIntervalSec=`", ", ".join(shown_default(s) for s in RESTART_SETTINGS.values())),
    "memory_max": _S(parsers.memory, None, "MemoryMax=: e.g. 4G, 80%", "`MemoryMax=`: `4G`, `80%`, `infinity`"),
    "cpu_weight": _S(parsers.cpu_weight, None, "CPUWeight=: 1-10000", "`CPUWeight=` 1-10000"),
    "gpu_memory": _S(parsers.gpu_memory, None, "GPU memory the agent needs, e.g. 6G (admitted before it starts)",
                     "what the agent needs on the GPU, e.g. `6G`: an optional agent starts only once that much is "
                     "free there, after stopping idle ones if need be (exported as `AGENTKIT_GPU_MEMORY`; keeps "
                     "`/dev` visible)"),
    "gpu": _S(parsers.gpu_index, 0, "the NVML index of the GPU the agent's gpu_memory is on",
              "the NVML index of the GPU its `gpu_memory` is on (exported as `CUDA_VISIBLE_DEVICES`, with "
              "`CUDA_DEVICE_ORDER=PCI_BUS_ID` so that CUDA counts as NVML does)"),
    "gpu_evict": _S(parsers.choice(*EVICT_ORDER), "normal",
                    "optional GPU agents: first, normal, last or never: who is stopped first to make room",
                    "optional GPU agents: `first`, `normal`, `last` or `never`: which idle agents are stopped "
                    "first (then the least recently used) when another needs room on their GPU; essential ones "
                    "never are"),
    "slice": _S(parsers.text, None, "a key of slices: (default: essential or optional)", "a key of `slices:`",
                " / ".join(f"`{name}`" for name in BUILTIN_SLICES)),
    "environment": _S(parsers.environment, {}, "extra environment; merged over the host's and the defaults'",
                      "merged over the host's and the defaults'; a value `{address_of: HOST}` is that host's "
                      "address"),
    "user": _S(parsers.optional(parsers.user), None, "run as this existing user instead of a DynamicUser=",
               "an existing user instead of `DynamicUser=yes`"),
    "working_directory": _S(parsers.optional(parsers.abs_path), None, "WorkingDirectory=", "`WorkingDirectory=`"),
    "writable_paths": _S(parsers.abs_paths, (), "ReadWritePaths=: paths the sandboxed agent may write",
                         "`ReadWritePaths=`"),
    "sandbox": _S(parsers.boolean, True, "the hardening directives (ProtectSystem=strict, ...); false turns them off",
                  "the hardening directives; `false` drops them"),
}
# Settings that only mean something for an on-demand agent.
OPTIONAL_ONLY = ("private_port", "idle_stop", "gpu_evict")

FLEET_SETTINGS: dict[str, Setting] = {
    "name": _S(parsers.text, "agentkit", "the fleet's name (units' descriptions, supervisord's state directory)"),
    "hosts": _S(None, None, "the hosts, by name: address, environment, ports", shown="(required)"),
    "defaults": _S(None, None, "agent settings for every agent (a group file may have its own)", shown="`{}`"),
    "slices": _S(None, None, "agentkit-<name>.slice under agentkit.slice: description, memory_max, cpu_weight",
                 shown=", ".join(f"`{name}`" for name in BUILTIN_SLICES)),
    "profiles": _S(None, None, "which optional agents a host gets: all, agents, groups", shown="`full: {all: true}`"),
    "default_profile": _S(parsers.text, None, "the profile used when none is named",
                          shown="`full`, else the first"),
    "private_port_offset": _S(parsers.whole(1, 65535), 20000,
                              "proxy mode and supervisord: an agent listens on 127.0.0.1:port + this"),
    "router": _S(None, None, "agentkit-router's settings (see The router)", shown="none"),
}
HOST_SETTINGS: dict[str, Setting] = {
    "address": _S(parsers.text, None, "how agents on other hosts reach this one", shown="the host's name"),
    "environment": _S(parsers.environment, {}, "variables for every agent on the host"),
    "ports": _S(None, {}, "fleet services' ports on the host, by name: checked for clashes too"),
    "status": _S(None, None, "the host's status service (agentkit-status): port, bind",
                 shown="port 8202 on 127.0.0.1"),
    "gpus": _S(parsers.gpus, {}, "the host's GPUs: NVML index -> memory, e.g. {0: 24G}; auto: NVML tells at run time",
               "the host's GPUs, NVML index -> memory: `{0: 24G}`, or `auto` where NVML tells at run time; "
               "`validate` checks the agents' `gpu_memory` against the figures, and without NVML they are what "
               "admission counts from", shown="`{0: auto}` when an agent has `gpu_memory`"),
}
# The host's status service (/health, /metrics, /events, the page): where it listens.
STATUS_SETTINGS: dict[str, Setting] = {
    "port": _S(parsers.port, 8202, "the port (LazyLoader's health port in the original)"),
    "bind": _S(parsers.status_bind, "127.0.0.1", "the address to listen on: an IP address, or `address`: loopback "
               "and the host's address (as --address gives it), for `agentkit status --all` and Prometheus"),
}
GROUP_SETTINGS: dict[str, Setting] = {
    "group": _S(parsers.text, None, "the group's name", shown="the file's name"),
    "host": _S(parsers.text, None, "the default host of the file's agents", shown="none"),
    "defaults": _S(None, None, "agent settings for the file's agents", shown="`{}`"),
    "agents": _S(None, None, "the agents, by name", shown="`{}`"),
}
SLICE_SETTINGS: dict[str, Setting] = {
    "description": _S(parsers.text, "agentkit {name} agents", "the slice's Description=",
                      shown="agentkit NAME agents"),
    "memory_max": _S(parsers.optional(parsers.memory), None, "MemoryMax= of the whole slice"),
    "cpu_weight": _S(parsers.optional(parsers.cpu_weight), None, "CPUWeight= of the whole slice"),
}
PROFILE_SETTINGS: dict[str, Setting] = {
    "all": _S(parsers.boolean, False, "every optional agent"),
    "agents": _S(parsers.names, (), "optional agents by name"),
    "groups": _S(parsers.names, (), "every optional agent of these groups"),
}


def markdown(table: dict[str, Setting] | dict[str, RouterSetting]) -> str:
    """The README's table of `table`: setting, default, meaning."""
    rows = ["| setting | default | meaning |", "|---|---|---|"]
    for name, setting in table.items():
        rows.append(f"| `{name}` | {shown_default(setting)} | {setting.doc or setting.help} |")
    return "\n".join(rows) + "\n"
