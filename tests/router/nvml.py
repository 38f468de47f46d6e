"""A stand-in NVIDIA driver for tests and benchmarks of the router's GPU sampler.

build_fake_nvml() compiles fake_nvml.c (next to this file) into
libnvidia-ml.so.1; FakeGpu writes the state file the library answers from and
gives the environment a subprocess needs to load it (the dynamic loader reads
LD_LIBRARY_PATH at process start, and pynvml keeps the library it loaded, so
code under test that uses NVML runs in a subprocess started with environ()).
See the top of fake_nvml.c for the state file format.
"""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import tempfile

SOURCE = pathlib.Path(__file__).resolve().with_name("fake_nvml.c")
LIBRARY = "libnvidia-ml.so.1"
CUDART = "libcudart.so.12"  # the same source: the CUDA runtime's allocation calls
STATE_VARIABLE = "AGENTKIT_FAKE_NVML_STATE"


def build_fake_nvml(directory: pathlib.Path, *, without_memory_info_v2: bool = False) -> pathlib.Path:
    """Compile fake_nvml.c into directory/libnvidia-ml.so.1 and return directory.

    without_memory_info_v2 leaves out nvmlDeviceGetMemoryInfo_v2, like drivers
    before 510. Raises RuntimeError when gcc is missing or reports anything
    (warnings are errors: the source is meant to build cleanly).
    """
    gcc = shutil.which("gcc")
    if gcc is None:
        raise RuntimeError("gcc is not installed (Debian package gcc): cannot build the fake NVML library")
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    for soname in (LIBRARY, CUDART):
        # Build under a temporary name, then rename: a process loading the
        # library never sees a half-written file.
        partial = directory / f".{soname}.{os.getpid()}.tmp"
        command = [gcc, "-shared", "-fPIC", "-O2", "-Wall", "-Wextra", "-Werror",
                   "-fvisibility=hidden", f"-Wl,-soname,{soname}",
                   "-o", str(partial), str(SOURCE)]
        if without_memory_info_v2:
            command.insert(1, "-DFAKE_NVML_WITHOUT_MEMORY_INFO_V2")
        try:
            result = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if result.returncode != 0 or result.stderr.strip():
                raise RuntimeError(f"building {soname} failed ({' '.join(command)}):\n{result.stderr}")
            os.replace(partial, directory / soname)
        finally:
            partial.unlink(missing_ok=True)
    return directory


class FakeGpu:
    """The GPUs the fake library reports, through its state file."""

    def __init__(self, state_file: pathlib.Path, lib_dir: pathlib.Path) -> None:
        self.state_file = pathlib.Path(state_file)
        self.lib_dir = pathlib.Path(lib_dir)

    def set(self, *devices: tuple[str, int, int], processes: tuple[tuple[int, int, int], ...] = ()) -> None:
        """Report these devices: (name, total_mib, free_mib) each, in index order, and these
        processes on them: (device index, pid, used_mib) each."""
        lines = [f"proc {int(index)} {int(pid)} {int(used)}\n" for index, pid, used in processes]
        for name, total_mib, free_mib in devices:
            if not name or any(c.isspace() for c in name) or len(name.encode()) > 95:
                raise ValueError(f"device name {name!r}: 1 to 95 bytes, no whitespace")
            if not 0 <= free_mib <= total_mib:
                raise ValueError(f"device {name}: need 0 <= free_mib ({free_mib}) <= total_mib ({total_mib})")
            lines.append(f"{name} {int(total_mib)} {int(free_mib)}\n")
        if len(devices) > 16 or len(processes) > 64:
            raise ValueError("the fake library reports at most 16 devices and 64 processes")
        self._write("".join(lines))

    def allocations(self) -> list[tuple[int, int, int]]:
        """(device index, pid, MiB) of every cudaMalloc still recorded (dead processes' too)."""
        return self._records(".alloc")

    def out_of_memory(self) -> list[tuple[int, int, int]]:
        """(device index, pid, MiB) of every cudaMalloc that did not fit: what the tests want empty."""
        return self._records(".oom")

    def _records(self, suffix: str) -> list[tuple[int, int, int]]:
        try:
            text = self.state_file.with_name(self.state_file.name + suffix).read_text()
        except FileNotFoundError:
            return []
        return [tuple(int(x) for x in line.split()[:3]) for line in text.splitlines() if line.strip()]

    def fail(self, code: int = 15) -> None:
        """Make every query (not init) return NVML error `code` (15: GPU is lost)."""
        if code == 0:
            raise ValueError("0 is NVML_SUCCESS, not an error")
        self._write(f"error {int(code)}\n")

    def remove(self) -> None:
        """No state file: nvmlInit fails with NVML_ERROR_DRIVER_NOT_LOADED (9)."""
        self.state_file.unlink(missing_ok=True)

    def environ(self) -> dict[str, str]:
        """LD_LIBRARY_PATH (the fake first) and the state file variable, to merge into an env."""
        inherited = os.environ.get("LD_LIBRARY_PATH")
        path = str(self.lib_dir) if not inherited else f"{self.lib_dir}{os.pathsep}{inherited}"
        return {"LD_LIBRARY_PATH": path, STATE_VARIABLE: str(self.state_file)}

    def _write(self, text: str) -> None:
        directory = self.state_file.parent
        directory.mkdir(parents=True, exist_ok=True)
        fd, partial = tempfile.mkstemp(dir=directory, prefix=f".{self.state_file.name}.")
        try:
            os.fchmod(fd, 0o644)   # mkstemp's 0600 would hide it from a router run as another user
            with os.fdopen(fd, "w") as handle:
                handle.write(text)
            os.replace(partial, self.state_file)
        except BaseException:
            pathlib.Path(partial).unlink(missing_ok=True)
            raise
