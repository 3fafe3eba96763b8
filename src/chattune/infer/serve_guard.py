"""The ASGI guard in front of `chattune serve`: API key on /v1/*, then the request body size cap."""
from __future__ import annotations

import hmac
import json

from .serve_schema import APIError, error_body


class Guard:
    """ASGI middleware in front of everything: API key on /v1/*, then the request body size cap.

    Raw ASGI rather than a FastAPI dependency: dependencies run after the body is read and parsed, so
    an unauthenticated client could still make us buffer and parse a large body.
    """

    def __init__(self, app, api_key: str | None, max_body_bytes: int):
        self.app, self.api_key, self.max_body = app, api_key, max_body_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = {k.lower(): v for k, v in scope.get("headers", [])}
        if self.api_key and scope["path"].startswith("/v1"):
            auth = headers.get(b"authorization", b"").decode("latin-1").strip()
            scheme, _, token = auth.partition(" ")
            if not auth:
                return await send_json(send, 401, error_body(
                    "You didn't provide an API key: send it as 'Authorization: Bearer KEY'",
                    code="invalid_api_key"), {"www-authenticate": "Bearer"})
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await send_json(send, 401, error_body("Incorrect API key provided", code="invalid_api_key"),
                                   {"www-authenticate": "Bearer"})
        if scope["method"] not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        too_big = APIError(413, f"request body is larger than the server's limit of {self.max_body} bytes",
                           code="request_too_large")
        declared = headers.get(b"content-length")
        if declared is not None:
            try:
                if int(declared) > self.max_body:
                    return await send_json(send, 413, too_big.body())
            except ValueError:
                return await send_json(send, 400, error_body("invalid Content-Length header"))
        # Read the body here (chunked uploads carry no length) so the cap holds however it is sent.
        chunks, size = [], 0
        while True:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return None
            chunk = msg.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return await send_json(send, 413, too_big.body())
            chunks.append(chunk)
            if not msg.get("more_body"):
                break
        body, replayed = b"".join(chunks), False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()  # later calls: disconnect detection

        return await self.app(scope, replay, send)


async def send_json(send, status: int, body: dict, headers: dict | None = None) -> None:
    data = json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": data, "more_body": False})
