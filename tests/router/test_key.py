"""The router's cloud key file (toolkit/router/key.py): read only when its owner alone may read it."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentkit.router.key import CREDENTIAL, KeyFileError, read_key

KEY = "sk-test-key-file-mode"
ROUTER = Path(sys.executable).parent / "agentkit-router"


def key_file(tmp_path: Path, mode: int, name: str = "cloud.key") -> Path:
    path = tmp_path / name
    path.write_text(KEY + "\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize("mode", [0o600, 0o400, 0o700])
def test_a_key_file_only_its_owner_may_read_is_read(tmp_path, mode):
    assert read_key(str(key_file(tmp_path, mode))) == KEY


@pytest.mark.parametrize("mode, readers", [
    (0o640, "its group"), (0o604, "others"), (0o644, "its group and others"), (0o444, "its group and others"),
])
def test_a_key_file_its_group_or_others_may_read_is_refused_naming_it(tmp_path, mode, readers):
    path = key_file(tmp_path, mode)
    with pytest.raises(KeyFileError) as caught:
        read_key(str(path))
    assert caught.value.format_message() == (
        f"the cloud API key file {path} is readable by {readers} (mode {mode:04o}): chmod 600 {path}")
    assert KEY not in caught.value.format_message()


def test_group_or_other_write_without_read_is_not_a_leak(tmp_path):
    assert read_key(str(key_file(tmp_path, 0o620))) == KEY


def test_an_empty_key_file_is_no_key_and_a_missing_one_an_oserror(tmp_path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    empty.chmod(0o600)
    assert read_key(str(empty)) is None
    with pytest.raises(FileNotFoundError) as caught:
        read_key(str(tmp_path / "missing"))
    assert caught.value.filename == str(tmp_path / "missing")


def test_a_fifo_is_refused_without_blocking(tmp_path):
    path = tmp_path / "fifo"
    os.mkfifo(path, 0o600)
    with pytest.raises(KeyFileError, match="is not a regular file"):
        read_key(str(path))


def test_systemds_credential_may_show_an_acl_mask_in_its_group_bits(tmp_path, monkeypatch):
    # systemd writes the credential 0400 and gives a DynamicUser= service read access with an ACL
    # entry; stat() then shows the ACL's mask as group r-- (0440). Others' bits are never set.
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    path = key_file(tmp_path, 0o440, CREDENTIAL)
    assert read_key(None) == KEY
    path.chmod(0o444)
    with pytest.raises(KeyFileError, match=r"readable by others \(mode 0444\)"):
        read_key(None)
    path.unlink()
    assert read_key(None) is None  # no credential: no key (SetCredential='s empty default aside)


def test_the_router_says_why_and_exits_1(tmp_path):
    path = key_file(tmp_path, 0o644)
    program = str(ROUTER) if ROUTER.exists() else "agentkit-router"
    result = subprocess.run([program, "--local-url", "http://127.0.0.1:9/v1", "--local-model", "l",
                             "--cloud-url", "http://127.0.0.1:9/v1", "--cloud-model", "c",
                             "--cloud-api-key-file", str(path)], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        f"agentkit-router: the cloud API key file {path} is readable by its group and others (mode 0644): "
        f"chmod 600 {path}")
    assert KEY not in result.stdout + result.stderr


def test_a_key_file_of_two_lines_is_refused_naming_the_file(tmp_path):
    key = tmp_path / "key"
    key.write_text("sk-one\nsk-two\n")
    key.chmod(0o600)
    with pytest.raises(KeyFileError) as caught:
        read_key(str(key))
    assert str(caught.value.message) == f"the cloud API key file {key} holds more than the key: one line, no spaces"
