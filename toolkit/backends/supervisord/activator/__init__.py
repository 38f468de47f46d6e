"""agentkit-activator: on-demand start of optional agents under supervisord.

supervisord has no socket activation. The activator stands in for it: supervisord
keeps it running (``[program:agentkit-activator]``, autostart, priority 1), and it

- listens on the public port of every optional agent of the host, from the start,
  so a dormant agent's port never refuses a connection;
- on a connection for agent X whose target (X's private address) does not accept
  connections, starts X and its dormant dependencies together, each through
  supervisord's XML-RPC API (``startProcess``), and counts X ready once its
  readiness probe passes (its target accepts a TCP connection, an HTTP path answers
  2xx, or a command exits 0; supervisord has no readiness notification). X's
  requests to a dependency come through the dependency's public port, ours, so they
  wait there until that dependency is ready too;
- forwards bytes both ways between the client and the target (half-close too);
- stops X (``stopProcess``) once it has had no connection for its idle time and
  nothing that depends on it is up (as Requires= keeps a dependency up under systemd).

While X starts (or supervisord restarts it after a crash), its connections wait
for the same start, never for a second one; a start that fails (supervisord gives
up, FATAL; the process exits; the start timeout passes) closes the connections
that waited for it.

Design: one asyncio loop (uvloop when installed) does everything on the request
path: accepting, connecting to the target, moving bytes with Protocol callbacks
(no task and no copy per chunk beyond the socket's own). A warm agent costs one
connect() to its target and no supervisord call; only when that connect is refused
does the slow path run (supervisord's state, dependencies, startProcess, the
readiness poll), once per agent however many connections wait for it. Blocking
XML-RPC calls, only on starts and stops, run on a small thread pool, one
ServerProxy per thread.

Modules: main (the command: argv, listening, the loop), core (the Activator:
starts, readiness, idle stops), agent (what it knows of one agent), link (the
byte-forwarding protocols), rpc (supervisord's XML-RPC client). Its configuration
(``--config PATH``, activator.json) is agentkit.backends.supervisord.config, the
schema the supervisord renderer writes it with.
"""

from .... import units

PROG = units.ACTIVATOR_PROGRAM  # its logger's name: every line reads `agentkit-activator: ...`
