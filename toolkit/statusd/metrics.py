"""/metrics: the board in Prometheus' text format, written when Prometheus scrapes.

Names follow Prometheus' conventions and stay close to systemd_exporter's
(systemd_unit_state{state}, systemd_service_restart_total): agentkit_agent_*,
base units (bytes, seconds), _total on counters, one series per state so that
`agentkit_agent_state{state="failed"} == 1` is an alert. Every agent has its
series from the first scrape on, dormant ones included, so dashboards and rates
see an agent before it is first woken.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from .board import CAUSES, COLD_START_BUCKETS, STATES, Board

CONTENT_TYPE = CONTENT_TYPE_LATEST
EVENT_KINDS = ("wake", "start", "ready", "idle-stop", "stop", "crash", "failed", "restart", "start-limit-hit")


class BoardCollector:
    def __init__(self, board: Board, sample) -> None:
        self.board = board
        self.sample = sample  # refreshes memory and CPU from the cgroups before each scrape

    def collect(self):
        board = self.board
        self.sample()
        rows = list(board.rows.values())
        host = board.host
        info = GaugeMetricFamily("agentkit_agent_info", "An agent of the host: 1, with its unit and class",
                                 labels=["host", "agent", "unit", "essential"])
        state = GaugeMetricFamily("agentkit_agent_state", "1 for the agent's state, 0 for the others",
                                  labels=["host", "agent", "state"])
        since = GaugeMetricFamily("agentkit_agent_state_since_seconds",
                                  "When the agent entered its state, seconds since the epoch", labels=["host", "agent"])
        starts = CounterMetricFamily("agentkit_agent_starts", "Starts seen, by cause (boot, first_connection, restart)",
                                     labels=["host", "agent", "cause"])
        restarts = CounterMetricFamily("agentkit_agent_restarts", "Automatic restarts (systemd's NRestarts)",
                                       labels=["host", "agent"])
        limits = CounterMetricFamily("agentkit_agent_start_limit_hits",
                                     "Times the manager gave up restarting the agent (start limit hit)",
                                     labels=["host", "agent"])
        cold = HistogramMetricFamily("agentkit_agent_cold_start_seconds",
                                     "First connection to ready, for starts on demand", labels=["host", "agent"])
        last = GaugeMetricFamily("agentkit_agent_last_start_seconds", "How long the agent's last start took",
                                 labels=["host", "agent"])
        memory = GaugeMetricFamily("agentkit_agent_memory_bytes", "Memory of the agent's cgroup (memory.current)",
                                   labels=["host", "agent"])
        cpu = CounterMetricFamily("agentkit_agent_cpu_seconds", "CPU time of the agent's cgroup (cpu.stat usage)",
                                  labels=["host", "agent"])
        for row in rows:
            seen, name = row.seen, row.name
            info.add_metric([host, name, row.unit, "true" if row.essential else "false"], 1)
            for each in STATES:
                state.add_metric([host, name, each], 1 if seen.state == each else 0)
            if seen.since is not None:
                since.add_metric([host, name], seen.since)
            for cause in CAUSES:
                starts.add_metric([host, name, cause], row.starts[cause])
            restarts.add_metric([host, name], seen.restarts)
            limits.add_metric([host, name], row.start_limit_hits)
            buckets, running = [], 0
            for bound, count in zip(COLD_START_BUCKETS, row.cold_buckets):
                running += count
                buckets.append((repr(bound), running))
            buckets.append(("+Inf", row.cold_count))
            cold.add_metric([host, name], buckets, row.cold_sum)
            if seen.last_start_s is not None:
                last.add_metric([host, name], seen.last_start_s)
            if row.memory is not None:
                memory.add_metric([host, name], row.memory)
            if row.cpu_seconds is not None:
                cpu.add_metric([host, name], row.cpu_seconds)
        yield from (info, state, since, starts, restarts, limits, cold, last, memory, cpu)
        up = GaugeMetricFamily("agentkit_status_source_up", "1 while the service manager answers and its "
                               "signals arrive", labels=["host"])
        up.add_metric([host], 1 if board.source_up else 0)
        healthy = GaugeMetricFamily("agentkit_status_healthy", "1 when every essential agent is active "
                                    "(what /health answers 200 for)", labels=["host"])
        healthy.add_metric([host], 1 if board.healthy() else 0)
        events = CounterMetricFamily("agentkit_status_events", "Events published on /events, by kind",
                                     labels=["host", "kind"])
        for kind in EVENT_KINDS:
            events.add_metric([host, kind], board.counted.get(kind, 0))
        clients = GaugeMetricFamily("agentkit_status_event_clients", "Clients reading /events now", labels=["host"])
        clients.add_metric([host], len(board.subscribers))
        dropped = CounterMetricFamily("agentkit_status_event_clients_dropped",
                                      "/events clients let go because they fell behind", labels=["host"])
        dropped.add_metric([host], board.dropped_clients)
        yield from (up, healthy, events, clients, dropped)


class Metrics:
    def __init__(self, board: Board, sample) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(BoardCollector(board, sample))
        ProcessCollector(registry=self.registry)  # the service's own memory, CPU and file descriptors

    def expose(self) -> bytes:
        return generate_latest(self.registry)
