"""The names agentkit gives the units (and programs) of a host: said once, used by both
renderers, install, status and the testinfra checks.

An agent called X is `agentkit-X.service`; an optional one also listens through
`agentkit-X.socket` (native) or `agentkit-X-proxy.socket` + `agentkit-X-proxy.service`
(proxy). Under supervisord the program is called X itself.
"""

from __future__ import annotations

PREFIX = "agentkit-"
TARGET = "agentkit.target"  # the deployment on a host: wanted by multi-user.target
ROOT_SLICE = "agentkit.slice"
REARM = "agentkit-rearm@"  # template units that make a failed socket listen again
ROUTER = "agentkit-router.service"
ROUTER_SOCKET = "agentkit-router.socket"
ROUTER_PROGRAM = "agentkit-router"
STATUS = "agentkit-status.service"  # the host's status service: /health, /metrics, /events, the page
STATUS_PROGRAM = "agentkit-status"
STATUS_USER = "agentkit-status"  # a system user: the system bus refuses DynamicUser= identities
STATUS_USER_UNIT = "agentkit-status-user.service"  # makes that user (systemd-sysusers)
ACTIVATOR_PROGRAM = "agentkit-activator"
AGENT_PROGRAM = "agentkit-agent"  # the reference agent
READY_PROGRAM = "agentkit-ready"  # the readiness probe (ready: port, http, command)
# The units of agentkit's own services, which no agent's may be called.
OWN_UNITS = (ROUTER, ROUTER_SOCKET, STATUS, STATUS_USER_UNIT)
# agentkit's own programs: always in its bin directory, on whichever machine a render is for.
ADMIT_PROGRAM = "agentkit-admit"  # GPU admission under systemd: an optional GPU agent's ExecStartPre=
OWN_PROGRAMS = ("agentkit", AGENT_PROGRAM, ROUTER_PROGRAM, ACTIVATOR_PROGRAM, READY_PROGRAM, STATUS_PROGRAM,
                ADMIT_PROGRAM)
# The units `agentkit down` stops on a systemd host, besides the target.
PATTERNS = (PREFIX + "*.socket", PREFIX + "*.service")


def service(name: str) -> str:
    return f"{PREFIX}{name}.service"


def proxy(name: str) -> str:
    return f"{PREFIX}{name}-proxy.service"


def live(name: str) -> str:
    """The unit that probes a running agent's liveness (the manifest's `liveness`)."""
    return f"{PREFIX}{name}-live.service"


def socket(name: str, activation: str) -> str:
    """The socket that holds an optional agent's port: the proxy's in proxy mode."""
    suffix = "-proxy" if activation == "proxy" else ""
    return f"{PREFIX}{name}{suffix}.socket"


def slice_(name: str) -> str:
    return f"{PREFIX}{name}.slice"

