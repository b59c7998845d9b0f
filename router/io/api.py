"""The router's HTTP API on 127.0.0.1:6784: a small, strict HTTP/1.1 server.

Theory of operation: the CLI is the only intended client, so the server speaks just
enough HTTP: one request per connection (`Connection: close`), a request line, headers,
an optional JSON body bounded by Content-Length.  Requests are dispatched on
(method, path prefix) to handlers that return (status code, JSON-able document).  Anything
malformed — an oversized header, a bad Content-Length, invalid JSON — gets a 400 with
`{"error": "..."}`, and a slow client is cut off after a timeout; the router never raises
out of a request.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 16 * 1024
MAX_BODY_BYTES = 1024 * 1024
REQUEST_TIMEOUT = 10.0
Handler = Callable[[str, object], Awaitable[tuple[int, object]]]
REASONS = {
    200: "OK",
    400: "Bad Request",
    404: "Not Found",
    405: "Method Not Allowed",
    409: "Conflict",
    500: "Internal Server Error",
    503: "Service Unavailable",
}


class BadRequest(Exception):
    pass


class ApiServer:
    def __init__(self) -> None:
        self.routes: list[tuple[str, str, Handler]] = []
        self.server: asyncio.Server | None = None

    def route(self, method: str, prefix: str, handler: Handler) -> None:
        """Register `handler(path_rest, json_body)`; longest prefix wins."""
        self.routes.append((method, prefix, handler))
        self.routes.sort(key=lambda r: len(r[1]), reverse=True)

    async def start(self, host: str, port: int) -> None:
        self.server = await asyncio.start_server(self._serve, host, port, reuse_address=True)

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            status, document = await asyncio.wait_for(self._handle(reader), REQUEST_TIMEOUT)
        except BadRequest as exc:
            status, document = 400, {"error": str(exc)}
        except TimeoutError:
            status, document = 400, {"error": "request timed out"}
        except Exception as exc:
            log.exception("API handler failed")
            status, document = 500, {"error": f"internal error: {exc}"}
        body = json.dumps(document).encode()
        head = (
            f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            "Connection: close\r\n\r\n"
        ).encode()
        try:
            writer.write(head + body)
            await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader) -> tuple[int, object]:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
        except asyncio.LimitOverrunError as exc:
            raise BadRequest("request header too large") from exc
        except asyncio.IncompleteReadError as exc:
            raise BadRequest("incomplete request") from exc
        if len(head) > MAX_HEADER_BYTES:
            raise BadRequest("request header too large")
        method, path, headers = _parse_head(head)
        body = await _read_body(reader, headers)
        return await self._dispatch(method, path, body)

    async def _dispatch(self, method: str, path: str, body: object) -> tuple[int, object]:
        path = path.split("?", 1)[0]
        matched_path = False
        for route_method, prefix, handler in self.routes:
            if path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                matched_path = True
                if route_method == method:
                    return await handler(path[len(prefix) :].lstrip("/"), body)
        if matched_path:
            return 405, {"error": f"{method} not allowed on {path}"}
        return 404, {"error": f"no such endpoint {path}"}


def _parse_head(head: bytes) -> tuple[str, str, dict[str, str]]:
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError as exc:  # pragma: no cover - latin-1 decodes everything
        raise BadRequest("undecodable header") from exc
    lines = text.split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise BadRequest("malformed request line")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest("malformed header line")
        headers[name.strip().lower()] = value.strip()
    return parts[0], parts[1], headers


async def _read_body(reader: asyncio.StreamReader, headers: dict[str, str]) -> object:
    raw_length = headers.get("content-length", "0")
    if not raw_length.isdigit():
        raise BadRequest("bad Content-Length")
    length = int(raw_length)
    if length > MAX_BODY_BYTES:
        raise BadRequest("request body too large")
    if length == 0:
        return None
    try:
        raw = await reader.readexactly(length)
    except asyncio.IncompleteReadError as exc:
        raise BadRequest("incomplete request body") from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise BadRequest(f"request body is not JSON: {exc}") from exc
