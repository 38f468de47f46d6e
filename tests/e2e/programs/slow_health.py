#!/usr/bin/python3
"""An ordinary HTTP server that listens at once but takes a while to load, as a model
server does: for LOAD seconds every path answers 503 (its /health too), then 200.
It knows nothing of agentkit. Usage: slow_health.py PORT LOAD_SECONDS [UPSTREAM]

With UPSTREAM (a URL), a request for /call is answered with what UPSTREAM answers:
an agent that depends on another."""

import http.server
import os
import sys
import time
import urllib.request

PORT, LOAD = int(sys.argv[1]), float(sys.argv[2])
UPSTREAM = sys.argv[3] if len(sys.argv) > 3 else None
READY_AT = time.monotonic() + LOAD


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if time.monotonic() < READY_AT:
            status, body = 503, b"loading\n"
        elif self.path == "/call" and UPSTREAM:
            with urllib.request.urlopen(UPSTREAM, timeout=30) as answer:
                status, body = 200, b"called: " + answer.read()
        else:
            status, body = 200, f"ready {os.getpid()}\n".encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", PORT), Handler).serve_forever()
