"""agentkit: run a fleet of AI agents under the host's own init system."""

__version__ = "0.1.0"
