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
from .gpu import WAIT_BUCKETS

CONTENT_TYPE = CONTENT_TYPE_LATEST
EVENT_KINDS = ("wake", "start", "ready", "idle-stop", "stop", "crash", "failed", "restart", "start-limit-hit",
               "gpu-admit", "gpu-evict", "gpu-refuse")


class AgentCollector:
    """What changes only when the board does (states, counts, histograms): rendered again only then."""

    def __init__(self, board: Board) -> None:
        self.board = board

    def collect(self):
        board, host = self.board, self.board.host
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
                                     "First connection to ready, for starts on demand (optional agents)",
                                     labels=["host", "agent"])
        last = GaugeMetricFamily("agentkit_agent_last_start_seconds", "How long the agent's last start took",
                                 labels=["host", "agent"])
        for row in board.rows.values():
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
            if not row.essential:  # an essential agent starts at boot, never on a first connection
                cold.add_metric([host, name], _cumulative(COLD_START_BUCKETS, row.cold_buckets, row.cold_count),
                                row.cold_sum)
            if seen.last_start_s is not None:
                last.add_metric([host, name], seen.last_start_s)
        events = CounterMetricFamily("agentkit_status_events", "Events published on /events, by kind",
                                     labels=["host", "kind"])
        for kind in EVENT_KINDS:
            events.add_metric([host, kind], board.counted.get(kind, 0))
        dropped = CounterMetricFamily("agentkit_status_event_clients_dropped",
                                      "/events clients let go because they fell behind", labels=["host"])
        dropped.add_metric([host], board.dropped_clients)
        yield from (info, state, since, starts, restarts, limits, cold, last, events, dropped)


def _cumulative(bounds, counts, total) -> list[tuple[str, int]]:
    """A histogram's buckets as Prometheus has them, from counts per bucket (each bound's own)."""
    buckets, running = [], 0
    for bound, count in zip(bounds, counts):
        running += count
        buckets.append((repr(bound), running))
    return buckets + [("+Inf", total)]


class LiveCollector:
    """What changes all the time: memory and CPU (sampled from the cgroups now), the service's own state."""

    def __init__(self, board: Board, sample) -> None:
        self.board = board
        self.sample = sample

    def collect(self):
        board, host = self.board, self.board.host
        self.sample()
        memory = GaugeMetricFamily("agentkit_agent_memory_bytes", "Memory of the agent's cgroup (memory.current)",
                                   labels=["host", "agent"])
        cpu = CounterMetricFamily("agentkit_agent_cpu_seconds", "CPU time of the agent's cgroup (cpu.stat usage)",
                                  labels=["host", "agent"])
        gpu = GaugeMetricFamily("agentkit_agent_gpu_memory_bytes", "GPU memory of the agent's processes (NVML)",
                                labels=["host", "agent"])
        accepted = CounterMetricFamily("agentkit_agent_accepted_connections",
                                       "Connections accepted on the agent's port (where the backend counts them: "
                                       "the activator under supervisord)", labels=["host", "agent"])
        for row in board.rows.values():
            if row.accepted is not None:
                accepted.add_metric([host, row.name], row.accepted)
            if row.memory is not None:
                memory.add_metric([host, row.name], row.memory)
            if row.cpu_seconds is not None:
                cpu.add_metric([host, row.name], row.cpu_seconds)
            if row.gpu_memory is not None:
                gpu.add_metric([host, row.name], row.gpu_memory)
        up = GaugeMetricFamily("agentkit_status_source_up", "1 while the service manager answers and its "
                               "signals arrive", labels=["host"])
        up.add_metric([host], 1 if board.source_up else 0)
        healthy = GaugeMetricFamily("agentkit_status_healthy", "1 when every essential agent is active "
                                    "(what /health answers 200 for)", labels=["host"])
        healthy.add_metric([host], 1 if board.healthy() else 0)
        clients = GaugeMetricFamily("agentkit_status_event_clients", "Clients reading /events now", labels=["host"])
        clients.add_metric([host], len(board.subscribers))
        yield from (memory, cpu, gpu, accepted, up, healthy, clients)
        if board.admission is not None and board.admission.table is not None:
            yield from admission_metrics(board, board.admission)


def admission_metrics(board: Board, view):
    """Per GPU: its memory as admission counts it; what admission decided, counted."""
    host = board.host
    families = {key: GaugeMetricFamily(f"agentkit_gpu_memory_{key}_bytes", text, labels=["host", "gpu"])
                for key, text in (("total", "The GPU's memory (NVML, else the manifest's figure)"),
                                  ("free", "Free memory of the GPU as NVML reports it"),
                                  ("claimed", "Memory admitted to running GPU agents and not yet in use by them "
                                              "(without NVML: all that they were admitted for)"),
                                  ("available", "What a new GPU agent may take now: free, less the router's "
                                                "reserve, less what is claimed"))}
    nvml = GaugeMetricFamily("agentkit_gpu_nvml", "1 when the figures come from NVML, 0 when from the manifest",
                             labels=["host", "gpu"])
    for room in view.rooms:
        label = [host, str(room.index)]
        for key in ("total", "free", "claimed", "available"):
            value = getattr(room, key)
            if value is not None:
                families[key].add_metric(label, value)
        nvml.add_metric(label, 1 if room.source == "NVML" else 0)
    admitted = CounterMetricFamily("agentkit_gpu_admissions", "GPU agents admitted (started once room was there)",
                                   labels=["host", "gpu", "agent"])
    for (index, name), count in sorted(view.admissions.items()):
        admitted.add_metric([host, str(index), name], count)
    refused = CounterMetricFamily("agentkit_gpu_refusals", "GPU agents refused: no room within their start_timeout",
                                  labels=["host", "gpu", "agent"])
    for (index, name), count in sorted(view.refusals.items()):
        refused.add_metric([host, str(index), name], count)
    evicted = CounterMetricFamily("agentkit_gpu_evictions", "Idle agents stopped to make room, by victim",
                                  labels=["host", "gpu", "victim"])
    for (index, name), count in sorted(view.evictions.items()):
        evicted.add_metric([host, str(index), name], count)
    waits = HistogramMetricFamily("agentkit_gpu_admission_wait_seconds",
                                  "How long an admission waited for room (evictions included)", labels=["host", "gpu"])
    for index, counts in sorted(view.waits.items()):
        waits.add_metric([host, str(index)], _cumulative(WAIT_BUCKETS, counts, counts[-2]), counts[-1])
    yield from (*families.values(), nvml, admitted, refused, evicted, waits)


class Metrics:
    """The page: the agents' part, kept while the board is unchanged (prometheus-client spends about
    a quarter of a millisecond per agent writing it), then the live part, written every time."""

    def __init__(self, board: Board, sample) -> None:
        self.board = board
        self.agents = CollectorRegistry(auto_describe=False)
        self.agents.register(AgentCollector(board))
        self.live = CollectorRegistry(auto_describe=False)
        self.live.register(LiveCollector(board, sample))
        ProcessCollector(registry=self.live)  # the service's own memory, CPU and file descriptors
        self.kept: tuple[int, bytes] = (-1, b"")

    def expose(self) -> bytes:
        version, text = self.kept
        if version != self.board.version:
            version = self.board.version
            text = generate_latest(self.agents)
            self.kept = (version, text)
        return text + generate_latest(self.live)
