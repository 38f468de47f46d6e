#!/usr/bin/python3 -S
"""The smallest ordinary server: listens on 127.0.0.1:PORT, says READY=1 when systemd
asks for it (NOTIFY_SOCKET), and answers every connection with one HTTP 200. It imports
only the socket module, so its own start is not what a readiness benchmark measures.
Usage: tiny_http.py PORT"""

import os
import socket
import sys

server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
server.bind(("127.0.0.1", int(sys.argv[1])))
server.listen(128)
where = os.environ.get("NOTIFY_SOCKET")
if where:
    notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    notify.sendto(b"READY=1", "\0" + where[1:] if where.startswith("@") else where)
    notify.close()
ANSWER = b"HTTP/1.0 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nok\n"
while True:
    conn, _ = server.accept()
    try:
        conn.settimeout(5)
        conn.recv(65536)
        conn.sendall(ANSWER)
    except OSError:
        pass
    finally:
        conn.close()
