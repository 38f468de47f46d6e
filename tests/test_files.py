"""agentkit's own temporary files, and only those, are what a later install removes."""

from __future__ import annotations

import os

from agentkit import files


def test_stale_temp_files_are_atomic_writes_own_and_never_a_users_file(tmp_path):
    # What a write killed between mkstemp and rename leaves: made the way atomic_write makes it.
    leftover = tmp_path / f".agentkit-web.service{files.TEMP_MARK}k3j9x0a2"
    leftover.write_text("half")
    users = [".agentkit-router.service.20250101", ".agentkit-mine.service.original", ".agentkit-x.service.disabled",
             ".agentkit.target.backup_1", ".mine.service.agentkit-tmp-abcdefgh", "agentkit-web.service"]
    for name in users:
        (tmp_path / name).write_text("the user's")
    assert files.stale_temp_files(str(tmp_path)) == [leftover.name]
    assert files.remove_stale_temp_files(str(tmp_path)) == [leftover.name]
    assert sorted(os.listdir(tmp_path)) == sorted(users)


def test_atomic_write_leaves_nothing_else_behind(tmp_path):
    files.atomic_write(str(tmp_path / "agentkit-web.service"), "[Unit]\n")
    assert os.listdir(tmp_path) == ["agentkit-web.service"]
    assert files.stale_temp_files(str(tmp_path)) == []
