"""An ordinary ASGI app (no agentkit in it) for uvicorn: answers every request with its pid."""

import os
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    body = f"asgi {os.getpid()}\n".encode()
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/plain")]})
    await send({"type": "http.response.body", "body": body})
