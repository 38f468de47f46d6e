"""The reference agent's two helpers that have nothing to do with systemd: the work
that stands in for model loading (CPU and memory spent on purpose), and the HTTP
health port, a few lines over a raw socket (http.server costs ~30 ms to import).

Standard library only, imported at the agent's start: keep it cheap.
"""

import socket
import threading
import time

MiB = 1024 * 1024
PAGE = 4096


# --- work that stands in for a model ------------------------------------------------

def burn_cpu(seconds, tick):
    """`seconds` of this thread's CPU time spent hashing; tick() between slices of ~1 ms."""
    if seconds <= 0:
        return 0.0
    import hashlib
    digest = hashlib.sha256()
    block = b"\x5a" * 65536
    start = time.thread_time()
    end = start + seconds
    while time.thread_time() < end:
        for _ in range(4):
            digest.update(block)
        tick()
    return time.thread_time() - start


def hold_memory(mb):
    """M MB that are really resident: every page written once."""
    size = int(mb * MiB)
    buf = bytearray(size)
    pages = (size + PAGE - 1) // PAGE
    buf[::PAGE] = b"\x01" * pages
    return buf


class CudaMemory:
    """`amount` bytes of GPU memory from the CUDA runtime (cudaMalloc on the process's first
    visible device, CUDA_VISIBLE_DEVICES), held until the process exits: what loading a
    model's weights does. libcudart is the one the dynamic loader finds (the CUDA toolkit,
    or PyPI's nvidia-cuda-runtime-cu12 on LD_LIBRARY_PATH); OSError says what failed."""

    def __init__(self, amount):
        import ctypes
        lib = None
        for name in ("libcudart.so.12", "libcudart.so.11.0", "libcudart.so"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        if lib is None:
            raise OSError("--gpu-allocate: no CUDA runtime (libcudart.so.12) found")
        lib.cudaGetErrorString.restype = ctypes.c_char_p
        self.pointer = ctypes.c_void_p()
        code = lib.cudaMalloc(ctypes.byref(self.pointer), ctypes.c_size_t(amount))
        if code != 0:
            raise OSError(f"cudaMalloc of {amount} bytes failed: {lib.cudaGetErrorString(code).decode()} "
                          f"(CUDA error {code})")
        self.amount = amount


# --- the health port ----------------------------------------------------------------

class Health:
    """GET /health over HTTP/1.0 on a raw socket, one short-lived thread per connection."""

    def __init__(self, port, status):
        self.status = status
        self.sock = socket.create_server(("0.0.0.0", port), backlog=64)
        self.thread = threading.Thread(target=self._accept, name="health", daemon=True)
        self.thread.start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return  # closed
            threading.Thread(target=self._answer, args=(conn,), daemon=True).start()

    def _answer(self, conn):
        import json
        try:
            conn.settimeout(5)
            data = b""
            while b"\n\r\n" not in data and b"\n\n" not in data and len(data) < 8192:
                chunk = conn.recv(4096)
                if not chunk:
                    break
                data += chunk
            parts = data.split(b"\n", 1)[0].decode("latin-1").split()
            method = parts[0] if parts else ""
            path = parts[1].split("?", 1)[0] if len(parts) > 1 else ""
            if len(parts) < 2:
                code, body = "400 Bad Request", {"error": "bad request"}
            elif path != "/health":
                code, body = "404 Not Found", {"error": f"not found: {path}", "see": "/health"}
            elif method not in ("GET", "HEAD"):
                code, body = "405 Method Not Allowed", {"error": f"method {method} not allowed"}
            else:
                code, body = "200 OK", self.status()
            payload = json.dumps(body).encode()
            allow = "Allow: GET, HEAD\r\n" if code.startswith("405") else ""
            head = (f"HTTP/1.0 {code}\r\nContent-Type: application/json\r\nContent-Length: {len(payload)}\r\n"
                    f"Cache-Control: no-store\r\n{allow}Connection: close\r\n\r\n").encode()
            conn.sendall(head if method == "HEAD" else head + payload)
        except OSError:
            pass
        finally:
            conn.close()

    def close(self):
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes the accept() of the health thread
        except OSError:
            pass
        self.sock.close()
