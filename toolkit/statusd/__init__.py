"""agentkit-status: one small, read-only status service per host.

board.py holds what is known of every agent and turns state changes into events;
systemd.py feeds it from systemd's D-Bus signals; metrics.py writes it for
Prometheus; web.py serves /health, /metrics, /events and the page (page.html);
main.py is the command that `agentkit render` puts in agentkit-status.service.
"""
