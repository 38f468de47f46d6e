#!/usr/bin/python3
"""An ordinary HTTP server that knows nothing of agentkit: it answers every GET with
what the server at $UPSTREAM answers for the same path. Usage: front.py PORT."""

import http.server
import os
import sys
import urllib.error
import urllib.request

UPSTREAM = os.environ["UPSTREAM"]


class Relay(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        try:
            with urllib.request.urlopen(UPSTREAM + self.path, timeout=30) as answer:
                status, kind, body = answer.status, answer.headers.get("Content-Type", "text/plain"), answer.read()
        except urllib.error.HTTPError as error:
            status, kind, body = error.code, "text/plain", error.read()
        except OSError as error:
            status, kind, body = 502, "text/plain", f"upstream {UPSTREAM}: {error}\n".encode()
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


http.server.ThreadingHTTPServer(("127.0.0.1", int(sys.argv[1])), Relay).serve_forever()
