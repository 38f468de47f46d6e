#!/usr/bin/python3
"""An ordinary HTTP server on PORT that answers every request with 200, until it gets SIGUSR1:
from then on it still accepts connections but never answers (a hung program, which its
port alone cannot tell). Usage: hangs_on_usr1.py PORT"""

import http.server
import signal
import sys
import threading

hung = threading.Event()
signal.signal(signal.SIGUSR1, lambda *_: hung.set())


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if hung.is_set():
            threading.Event().wait()  # never answers
        self.send_response(200)
        self.send_header("Content-Length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
