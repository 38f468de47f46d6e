"""One logging setup for every agentkit program (the CLI, the router, the activator,
the reference agent): one line per record on stderr, `NAME: message`, with the
level before the message from warnings up. Under systemd (JOURNAL_STREAM set) the
journal stamps each line; elsewhere (supervisord's log files) the line starts with
the local time. --debug (or a level) lowers the threshold."""

from __future__ import annotations

import logging
import os
import sys


class _Formatter(logging.Formatter):
    def __init__(self, stamped: bool):
        super().__init__(datefmt="%Y-%m-%d %H:%M:%S")
        self.stamped = stamped

    def format(self, record: logging.LogRecord) -> str:
        level = f"{record.levelname.lower()}: " if record.levelno >= logging.WARNING else ""
        line = f"{record.name}: {level}{record.getMessage()}"
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        if self.stamped:
            line = f"{self.formatTime(record, self.datefmt)}.{int(record.msecs):03d} {line}"
        return line


def setup(program: str, *, debug: bool = False, level: str | int | None = None) -> logging.Logger:
    """Configure this process's logging once; return the program's logger (named `program`)."""
    if level is None:
        level = logging.DEBUG if debug else logging.INFO
    elif isinstance(level, str):
        level = level.upper()
    root = logging.getLogger()
    if not any(getattr(h, "agentkit", False) for h in root.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_Formatter(stamped="JOURNAL_STREAM" not in os.environ))
        handler.agentkit = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.setLevel(level)
    return logging.getLogger(program)
