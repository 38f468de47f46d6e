"""Fixtures of the router tests: the stand-in NVML library, stand-in backends, a running router."""

import os

import pytest

from .nvml import FakeGpu, build_fake_nvml


def fail_or_skip(message: str):
    """A missing tool skips on a developer's machine and fails in CI, where .ci/run provides it."""
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@pytest.fixture(scope="session")
def fake_nvml_dir(tmp_path_factory):
    """A directory holding the stand-in libnvidia-ml.so.1, built once per session."""
    try:
        return build_fake_nvml(tmp_path_factory.mktemp("fake-nvml"))
    except RuntimeError as error:
        fail_or_skip(str(error))


@pytest.fixture
def fake_gpu(fake_nvml_dir, tmp_path):
    return FakeGpu(tmp_path / "nvml-state", fake_nvml_dir)
