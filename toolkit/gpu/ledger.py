"""What admission decided, one JSON line each, for the status service to follow.

Records: {"t": unix time, "kind": admit | evict | refuse, "agent", "gpu", "need",
"waited_s"} and, by kind, "victims" (admit), "for" and "stop_s" (evict: how long the stop took), "reason" (refuse),
with "available" and "claimed" as the decision saw them. A file is kept under MAX_BYTES by
moving it to NAME.1 (the status service follows the move).
"""

from __future__ import annotations

import json
import os
import time

MAX_BYTES = 1 << 20
NAME = "gpu-admissions.jsonl"
SYSTEMD_DIR = "/run/agentkit"  # systemd: agentkit-admit (root) writes, agentkit-status reads


def make_dir(directory: str) -> None:
    """The directory, readable by all: the writer's UMask= (0077 in agents' units) would hide it
    from the status service."""
    if not os.path.isdir(directory):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o755)


def append(path: str, record: dict) -> None:
    """Add one record; one write() of one line with O_APPEND, so writers never interleave."""
    line = (json.dumps({"t": round(time.time(), 6), **record}, separators=(",", ":")) + "\n").encode()
    make_dir(os.path.dirname(path) or ".")
    try:
        if os.path.getsize(path) + len(line) > MAX_BYTES:
            os.replace(path, path + ".1")
    except FileNotFoundError:
        pass
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        if os.fstat(fd).st_size == 0:
            os.fchmod(fd, 0o644)  # the status service, another user, reads it
        os.write(fd, line)
    finally:
        os.close(fd)


class Follower:
    """New records of a ledger since the last read(): those written after the Follower was
    made (what came before was told by an earlier reader), and all of a file that is new."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._inode = None
        self._offset = 0
        self._partial = b""
        try:
            stat = os.stat(path)
            self._inode, self._offset = stat.st_ino, stat.st_size
        except FileNotFoundError:
            pass

    def read(self) -> list[dict]:
        try:
            with open(self.path, "rb") as handle:
                stat = os.fstat(handle.fileno())
                if stat.st_ino != self._inode or stat.st_size < self._offset:  # moved to .1, or new
                    self._inode, self._offset, self._partial = stat.st_ino, 0, b""
                handle.seek(self._offset)
                data = handle.read()
        except FileNotFoundError:
            return []
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            try:
                records.append(json.loads(line))
            except ValueError:
                continue  # not ours to judge: skip what does not parse
        return records


def refusal(path: str, name: str) -> str | None:
    """The reason of `name`'s last refusal, unless an admission came after it; None if none."""
    last = None
    for candidate in (path + ".1", path):
        try:
            with open(candidate, "rb") as handle:
                for line in handle:
                    if b'"agent":' + json.dumps(name).encode() in line:
                        try:
                            record = json.loads(line)
                        except ValueError:
                            continue
                        if record.get("kind") in ("admit", "refuse"):
                            last = record
        except FileNotFoundError:
            continue
    return last.get("reason") if last and last.get("kind") == "refuse" else None
