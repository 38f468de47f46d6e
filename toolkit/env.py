"""The environment contract between agentkit and every agent it runs (AGENTKIT_*).

Both renderers write it, the reference agent reads it, and the manifest refuses
variables of the user's that start with the prefix. Each name is said here once.
"""

from __future__ import annotations

from . import values

TYPE_CHECKING = False  # not typing's: the reference agent imports this module, and typing costs it 2.5 ms
if TYPE_CHECKING:
    from .model import Agent, Manifest

PREFIX = "AGENTKIT_"
AGENT = "AGENTKIT_AGENT"  # the agent's name
HOST = "AGENTKIT_HOST"  # the host of the manifest it runs on
PORT = "AGENTKIT_PORT"  # its public port (the socket's, in native mode)
HEALTH_PORT = "AGENTKIT_HEALTH_PORT"  # its HTTP health port, when it has one
ACTIVATION = "AGENTKIT_ACTIVATION"  # none (essential), native or proxy
BIND = "AGENTKIT_BIND"  # proxy mode: the private 127.0.0.1:port to listen on
IDLE_STOP = "AGENTKIT_IDLE_STOP"  # native mode: seconds without traffic before it exits
DEPENDS = "AGENTKIT_DEPENDS"  # Name=address:port,... of what it depends on
GPU_MEMORY = "AGENTKIT_GPU_MEMORY"  # bytes of GPU memory the manifest says it needs


# A command word's placeholder for the port the program itself listens on.
PORT_WORD = "{port}"


def listen_port(agent: "Agent", private_port: int | None = None) -> int:
    """Where the program binds: its private port behind a proxy or an activator, else its port."""
    if private_port is not None:
        return private_port
    return agent.private_port if agent.activation == "proxy" else agent.port


def live_port(agent: "Agent", private_port: int | None = None) -> int:
    """Where a liveness probe asks an agent: its health port if it has one, else where its program binds."""
    return agent.health_port or listen_port(agent, private_port)


def with_port(words: "tuple[str, ...]", port: int) -> tuple[str, ...]:
    """`words` with each {port} replaced: `command: [python3, -m, http.server, "{port}"]`."""
    return tuple(word.replace(PORT_WORD, str(port)) for word in words)


def loopback(port: int) -> str:
    return f"127.0.0.1:{port}"


def for_agent(manifest: "Manifest", agent: "Agent", *, activation: str | None = None,
              private_port: int | None = None) -> list[tuple[str, str]]:
    """What agentkit tells an agent about itself, then the manifest's own variables.

    `activation` and `private_port` override the agent's own (supervisord runs every
    optional agent behind its activator, as proxy mode does)."""
    activation = activation or agent.activation
    private_port = private_port if private_port is not None else agent.private_port
    env = [(AGENT, agent.name), (HOST, agent.host), (PORT, str(agent.port))]
    if agent.health_port is not None:
        env.append((HEALTH_PORT, str(agent.health_port)))
    env.append((ACTIVATION, activation))
    if activation == "proxy":
        env.append((BIND, loopback(private_port)))
    if activation == "native" and agent.optional:  # an essential agent never stops for idleness
        env.append((IDLE_STOP, f"{values.seconds(agent.idle_stop):g}"))
    if agent.depends_on:
        addresses = []
        for dep_name in agent.depends_on:
            dep = manifest.agents[dep_name]
            address = "127.0.0.1" if dep.host == agent.host else manifest.hosts[dep.host].address
            addresses.append(f"{dep.name}={address}:{dep.port}")
        env.append((DEPENDS, ",".join(addresses)))
    if agent.gpu_memory is not None:
        env.append((GPU_MEMORY, str(agent.gpu_memory)))
        # Pinned to its GPU, numbered as NVML numbers them (CUDA's default is fastest first);
        # the agent's own environment may say otherwise.
        env += [("CUDA_DEVICE_ORDER", "PCI_BUS_ID"), ("CUDA_VISIBLE_DEVICES", str(agent.gpu))]
    return env + list(agent.environment)
