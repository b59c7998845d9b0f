"""The Docker API proxy: `DOCKER_HOST=tcp://127.0.0.1:12375 docker run ...` joins weave.

Theory of operation: the proxy sits between a Docker client and the real engine and
passes every byte through, except at two points where the router hooks in:

* `POST /containers/create` — the JSON body is read whole (it is small), handed to
  `hooks.rewrite_create`, re-serialised with a new Content-Length and sent on.  The router
  uses it to put its wait wrapper in front of the container's command.
* `POST /containers/{id}/start` and `.../restart` — the request goes through untouched,
  but a successful answer is held until `hooks.container_started(id)` has attached the
  container to weave; if attaching fails the client gets a 500 with the reason instead.

Everything else is relayed as raw HTTP/1.1: request and response heads verbatim, bodies
by their framing (Content-Length, chunked — passed on still chunked —, or none).  A
response that is delimited by the connection closing — `101 Switching Protocols` for
`docker attach`/`exec` with `Upgrade: tcp`, or an old-style hijacked 200 — turns the
connection into two byte pumps: client->engine until the client half-closes (then the
engine sees EOF, which is how `docker run -i` ends stdin), engine->client until the
engine closes, which ends the exchange.  One engine connection per client connection,
opened on the first request and kept alive while both sides keep it alive, so request
pipelining and keep-alive behave as they do against the engine itself.  Buffers are
bounded (64 KB reads, `drain` after each write), so large responses such as `docker
save` stream rather than pile up.

This module knows nothing of weave: hooks come in through `ProxyHooks`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from typing import Any, Protocol

log = logging.getLogger(__name__)

DEFAULT_PROXY_PORT = 12375
READ_SIZE = 64 * 1024
MAX_HEAD_BYTES = 64 * 1024
MAX_CREATE_BODY = 16 * 1024 * 1024
CREATE_PATH = re.compile(r"^(?:/v[0-9.]+)?/containers/create$")
START_PATH = re.compile(r"^(?:/v[0-9.]+)?/containers/([^/]+)/(?:start|restart)$")
NO_BODY_STATUS = {204, 304}


class ProxyHooks(Protocol):
    async def rewrite_create(self, query: str, config: dict[str, Any]) -> dict[str, Any]:
        """Return the (possibly changed) body of a container create request."""

    async def container_started(self, container: str) -> str | None:
        """The engine started `container`; return an error text, or None when all went well."""


class ProxyError(Exception):
    """Malformed HTTP from either side: the connection is dropped."""


class Head:
    """A request or response head: first line plus headers, kept in their original order."""

    def __init__(self, raw: bytes) -> None:
        text = raw.decode("latin-1")
        lines = text.split("\r\n")
        self.start = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if not line:
                continue
            name, sep, value = line.partition(":")
            if not sep:
                raise ProxyError(f"malformed header line {line[:40]!r}")
            self.headers.append((name.strip(), value.strip()))

    def get(self, name: str) -> str | None:
        lname = name.lower()
        for key, value in self.headers:
            if key.lower() == lname:
                return value
        return None

    def replace(self, name: str, value: str | None) -> None:
        """Drop every `name` header, then add it back with `value` (unless None)."""
        lname = name.lower()
        self.headers = [(k, v) for k, v in self.headers if k.lower() != lname]
        if value is not None:
            self.headers.append((name, value))

    def encode(self) -> bytes:
        lines = [self.start, *(f"{k}: {v}" for k, v in self.headers), "", ""]
        return "\r\n".join(lines).encode("latin-1")

    def chunked(self) -> bool:
        return "chunked" in (self.get("Transfer-Encoding") or "").lower()

    def length(self) -> int | None:
        raw = self.get("Content-Length")
        if raw is None:
            return None
        if not raw.isdigit():
            raise ProxyError(f"bad Content-Length {raw!r}")
        return int(raw)

    def keep_alive(self) -> bool:
        connection = (self.get("Connection") or "").lower()
        if self.start.endswith("HTTP/1.0") or self.start.startswith("HTTP/1.0"):
            return "keep-alive" in connection
        return "close" not in connection


def _parse_listen(address: str) -> tuple[str, str | tuple[str, int]]:
    """ "unix:///path" -> ("unix", path); "tcp://host:port" or "host:port" -> ("tcp", (h, p))."""
    if address.startswith("unix://"):
        return "unix", address[len("unix://") :]
    if address.startswith("/"):
        return "unix", address
    rest = address.removeprefix("tcp://")
    host, _, port = rest.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"invalid address {address!r}: expected tcp://host:port or unix:///path")
    return "tcp", (host, int(port))


async def _open(address: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    kind, where = _parse_listen(address)
    if kind == "unix":
        assert isinstance(where, str)
        return await asyncio.open_unix_connection(where, limit=MAX_HEAD_BYTES)
    assert isinstance(where, tuple)
    return await asyncio.open_connection(where[0], where[1], limit=MAX_HEAD_BYTES)


async def _read_head(reader: asyncio.StreamReader) -> Head | None:
    """The next head, or None if the peer closed cleanly before sending one."""
    try:
        raw = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise ProxyError("connection closed inside a header") from exc
    except asyncio.LimitOverrunError as exc:
        raise ProxyError("header too large") from exc
    return Head(raw)


async def _copy_exact(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, n: int) -> None:
    while n > 0:
        data = await reader.read(min(READ_SIZE, n))
        if not data:
            raise ProxyError("connection closed inside a body")
        writer.write(data)
        await writer.drain()
        n -= len(data)


async def _copy_chunked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Relay a chunked body as is (framing included), stopping after its last chunk."""
    while True:
        line = await reader.readuntil(b"\r\n")
        writer.write(line)
        size_text = line.split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError as exc:
            raise ProxyError(f"bad chunk size {size_text[:20]!r}") from exc
        if size == 0:
            while True:  # trailers, up to the empty line
                trailer = await reader.readuntil(b"\r\n")
                writer.write(trailer)
                if trailer == b"\r\n":
                    await writer.drain()
                    return
        await _copy_exact(reader, writer, size + 2)  # data and its CRLF


async def _read_chunked(reader: asyncio.StreamReader, limit: int) -> bytes:
    parts: list[bytes] = []
    total = 0
    while True:
        line = await reader.readuntil(b"\r\n")
        size = int(line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return b"".join(parts)
        total += size
        if total > limit:
            raise ProxyError("request body too large")
        parts.append((await reader.readexactly(size + 2))[:-2])


async def _pump(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, half_close: bool
) -> None:
    """Copy until EOF; then half-close the far side (or leave closing to the caller)."""
    while True:
        data = await reader.read(READ_SIZE)
        if not data:
            break
        writer.write(data)
        await writer.drain()
    if half_close and writer.can_write_eof():
        with contextlib.suppress(OSError):
            writer.write_eof()


def _close(writer: asyncio.StreamWriter | None) -> None:
    if writer is not None:
        with contextlib.suppress(Exception):
            writer.close()


class DockerProxy:
    """Listen on `listen` (tcp://host:port or unix:///path), relay to the engine at `upstream`."""

    def __init__(self, listen: str, upstream: str, hooks: ProxyHooks) -> None:
        self.listen = listen
        self.upstream = upstream
        self.hooks = hooks
        self.server: asyncio.Server | None = None
        self._clients: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        kind, where = _parse_listen(self.listen)
        if kind == "unix":
            assert isinstance(where, str)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where)
            self.server = await asyncio.start_unix_server(self._serve, where, limit=MAX_HEAD_BYTES)
        else:
            assert isinstance(where, tuple)
            self.server = await asyncio.start_server(
                self._serve, where[0], where[1], reuse_address=True, limit=MAX_HEAD_BYTES
            )

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
        for task in list(self._clients):
            task.cancel()
        if self._clients:
            await asyncio.gather(*self._clients, return_exceptions=True)
        if self.server is not None:
            await self.server.wait_closed()
        kind, where = _parse_listen(self.listen)
        if kind == "unix" and isinstance(where, str):
            with contextlib.suppress(OSError):
                os.unlink(where)

    async def _serve(self, creader: asyncio.StreamReader, cwriter: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._clients.add(task)
        upstream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        try:
            while True:
                request = await _read_head(creader)
                if request is None:
                    break
                if upstream is None:
                    upstream = await _open(self.upstream)
                if not await self._exchange(request, creader, cwriter, *upstream):
                    break
        except (ProxyError, ValueError, OSError, asyncio.IncompleteReadError) as exc:
            log.debug("docker proxy connection ended: %s", exc)
        except asyncio.LimitOverrunError:
            log.debug("docker proxy: oversized line")
        finally:
            self._clients.discard(task)
            _close(upstream[1] if upstream else None)
            _close(cwriter)

    async def _exchange(
        self,
        request: Head,
        creader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
        ureader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
    ) -> bool:
        """Relay one request and its response; False when the connection must end."""
        method, target = _request_line(request)
        path, _, query = target.partition("?")
        if method == "POST" and CREATE_PATH.match(path):
            await self._send_create(request, query, creader, uwriter)
        else:
            uwriter.write(request.encode())
            await _forward_body(request, creader, uwriter)
        response = await _read_head(ureader)
        if response is None:
            raise ProxyError("engine closed the connection before answering")
        status = _status(response)
        started = START_PATH.match(path) if method == "POST" else None
        if started and 200 <= status < 300:
            return await self._answer_start(started.group(1), response, ureader, cwriter)
        cwriter.write(response.encode())
        await cwriter.drain()
        if method == "HEAD" or status in NO_BODY_STATUS or (100 <= status < 200 and status != 101):
            return request.keep_alive() and response.keep_alive()
        if response.chunked():
            await _copy_chunked(ureader, cwriter)
        elif response.length() is not None and status != 101:
            await _copy_exact(ureader, cwriter, response.length() or 0)
        else:  # delimited by close: an upgraded or hijacked stream
            await _splice(creader, cwriter, ureader, uwriter)
            return False
        return request.keep_alive() and response.keep_alive()

    async def _send_create(
        self,
        request: Head,
        query: str,
        creader: asyncio.StreamReader,
        uwriter: asyncio.StreamWriter,
    ) -> None:
        body = await _read_body(request, creader)
        try:
            config = json.loads(body) if body else {}
            if isinstance(config, dict):
                body = json.dumps(await self.hooks.rewrite_create(query, config)).encode()
        except ValueError:
            pass  # not JSON: let the engine complain
        except Exception:
            log.exception("docker proxy: rewriting a create request failed; passing it on")
        request.replace("Transfer-Encoding", None)
        request.replace("Content-Length", str(len(body)))
        uwriter.write(request.encode() + body)
        await uwriter.drain()

    async def _answer_start(
        self,
        container: str,
        response: Head,
        ureader: asyncio.StreamReader,
        cwriter: asyncio.StreamWriter,
    ) -> bool:
        body = await _read_response_body(response, ureader)
        try:
            error = await self.hooks.container_started(container)
        except Exception as exc:
            log.exception("docker proxy: attaching %s failed", container)
            error = f"weave: attaching container {container} failed: {exc}"
        if error:
            doc = json.dumps({"message": error}).encode()
            head = (
                "HTTP/1.1 500 Internal Server Error\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(doc)}\r\n\r\n"
            )
            cwriter.write(head.encode() + doc)
        else:
            cwriter.write(response.encode() + body)
        await cwriter.drain()
        return response.keep_alive()


def _request_line(request: Head) -> tuple[str, str]:
    parts = request.start.split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        raise ProxyError(f"malformed request line {request.start[:60]!r}")
    return parts[0], parts[1]


def _status(response: Head) -> int:
    parts = response.start.split(" ", 2)
    if len(parts) < 2 or not parts[1].isdigit():
        raise ProxyError(f"malformed status line {response.start[:60]!r}")
    return int(parts[1])


async def _forward_body(
    head: Head, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    if head.chunked():
        await _copy_chunked(reader, writer)
    else:
        await _copy_exact(reader, writer, head.length() or 0)
    await writer.drain()


async def _read_body(head: Head, reader: asyncio.StreamReader) -> bytes:
    if head.chunked():
        return await _read_chunked(reader, MAX_CREATE_BODY)
    length = head.length() or 0
    if length > MAX_CREATE_BODY:
        raise ProxyError("request body too large")
    return await reader.readexactly(length)


async def _read_response_body(head: Head, reader: asyncio.StreamReader) -> bytes:
    """The whole (small) body of a start answer, re-framed with a Content-Length."""
    if _status(head) in NO_BODY_STATUS:
        return b""
    body = await _read_body(head, reader)
    head.replace("Transfer-Encoding", None)
    head.replace("Content-Length", str(len(body)))
    return body


async def _splice(
    creader: asyncio.StreamReader,
    cwriter: asyncio.StreamWriter,
    ureader: asyncio.StreamReader,
    uwriter: asyncio.StreamWriter,
) -> None:
    """Two pumps; the exchange ends when the engine's side ends."""
    to_engine = asyncio.ensure_future(_pump(creader, uwriter, half_close=True))
    try:
        await _pump(ureader, cwriter, half_close=False)
    finally:
        if not to_engine.done():
            to_engine.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await to_engine
