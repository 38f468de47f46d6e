"""The router's cloud API key: read once, at start, from a file only its owner may read.

Never from the environment or the command line (which other users read in /proc): the
command line names the file (--cloud-api-key-file, supervisord), or systemd passes the
key as the credential $CREDENTIALS_DIRECTORY/cloud-api-key (LoadCredential=).

A key file that its group or others may read is refused, naming the file and the fix.
The mode is read with fstat() on the file opened for reading, so it is the mode of the
very file read (no race with a chmod or a rename between a check and the open). systemd's
credential is exempt from the group rule only: systemd writes it 0400 and, for a
DynamicUser= service, gives the service's user read access with an ACL entry, whose mask
stat() shows in the group bits (mode 0440) although no group may read it.
"""

from __future__ import annotations

import os
import stat

import click

from .. import units

CREDENTIAL = "cloud-api-key"  # the name under $CREDENTIALS_DIRECTORY (LoadCredential=)


class KeyFileError(click.ClickException):
    """A key file the router will not use; shown as `agentkit-router: MESSAGE`, exit 1."""

    def show(self, file=None) -> None:
        click.echo(f"{units.ROUTER_PROGRAM}: {self.format_message()}", file=file, err=True)


def mode_problem(path: str, mode: int, credential: bool = False) -> str | None:
    """Why a key file of this st_mode may not be used, or None. `credential`: systemd's
    credential, whose group bits are an ACL mask (see the module's docstring)."""
    if not stat.S_ISREG(mode):
        return f"the cloud API key file {path} is not a regular file"
    readers = [who for who, bit in (("its group", stat.S_IRGRP), ("others", stat.S_IROTH))
               if mode & bit and not (credential and bit == stat.S_IRGRP)]
    if not readers:
        return None
    return (f"the cloud API key file {path} is readable by {' and '.join(readers)} "
            f"(mode {stat.S_IMODE(mode):04o}): chmod 600 {path}")


def read_key(path: str | None) -> str | None:
    """The cloud key: from `path` (--cloud-api-key-file), else the credential systemd passed
    (LoadCredential=), else None (no key). OSError when the file cannot be read (a missing
    `path` included), KeyFileError when its group or others may read it."""
    credential = path is None
    if path is None:
        directory = os.environ.get("CREDENTIALS_DIRECTORY")
        if not directory or not os.path.exists(os.path.join(directory, CREDENTIAL)):
            return None
        path = os.path.join(directory, CREDENTIAL)
    # O_NONBLOCK: a FIFO in its place is refused below instead of blocking the start.
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK)
    with open(fd, encoding="utf-8", closefd=True) as handle:
        problem = mode_problem(path, os.fstat(fd).st_mode, credential)
        if problem is not None:
            raise KeyFileError(problem)
        key = handle.read().strip()
    if any(c.isspace() or not c.isprintable() for c in key):
        # It goes into an HTTP header: a second line or a control character would fail every cloud request.
        raise KeyFileError(f"the cloud API key file {path} holds more than the key: one line, no spaces")
    return key or None
