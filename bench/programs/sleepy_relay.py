#!/usr/bin/python3 -S
"""An ordinary server that takes LOAD seconds to load (waiting, as on a disk or a GPU,
not computing), then listens on 127.0.0.1:PORT, says READY=1 when systemd asks for it
(NOTIFY_SOCKET), and answers each HTTP request with its NAME, after its upstream's
answer when it has one: a link of a dependency chain. Imports only `socket`.
Usage: sleepy_relay.py NAME PORT LOAD [UPSTREAM_PORT]"""

import os
import socket
import sys
import time

NAME, PORT, LOAD = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
UPSTREAM = int(sys.argv[4]) if len(sys.argv) > 4 else None
time.sleep(LOAD)
server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", PORT))
server.listen(128)
where = os.environ.get("NOTIFY_SOCKET")
if where:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", "\0" + where[1:] if where.startswith("@") else where)
    notify.close()


def ask(port):
    with socket.create_connection(("127.0.0.1", port), timeout=30) as up:
        up.sendall(b"GET / HTTP/1.0\r\n\r\n")
        data = b""
        while True:
            chunk = up.recv(65536)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n\r\n", 1)[1]


while True:
    conn, _ = server.accept()
    try:
        conn.settimeout(30)
        conn.recv(65536)
        body = NAME.encode() + (b" <- " + ask(UPSTREAM) if UPSTREAM else b"")
        conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    except OSError:
        pass
    finally:
        conn.close()
