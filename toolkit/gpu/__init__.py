"""GPU memory admission: an optional GPU agent starts only once its `gpu_memory` is free
on its GPU, after idle optional agents there have been stopped to make room.

table.py: what the manifest says (each host's GPUs, its GPU agents, the router's reserve),
in one text form both backends hand to the admission and the status service.
nvml.py: what the GPUs say (NVIDIA's pynvml), sampled at most once per interval.
admission.py: the decision, pure: fits, whom to stop, or why not.
ledger.py: what was decided, as JSON lines the status service follows (metrics, events).
systemd.py: agentkit-admit, the ExecStartPre= that admits an agent under systemd; the
supervisord backend's activator decides in-process (backends/supervisord/activator/gpu.py).
"""
