"""The Docker API proxy against a fake engine: no Docker needed.

A tiny asyncio "engine" answers on a unix socket; the proxy listens on another; raw
HTTP/1.1 is spoken on both sides so framing, hijacking and half-close are exercised
exactly.  Also the command merge that the create rewrite relies on.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from typing import Any

from pyweave.router.docker_containers import weave_cidr, wrapped_command
from pyweave.router.io.docker_proxy import DockerProxy


class Hooks:
    def __init__(self) -> None:
        self.started: list[str] = []
        self.fail = False

    async def rewrite_create(self, query: str, config: dict[str, Any]) -> dict[str, Any]:
        config["Entrypoint"] = ["/wrapped"]
        return config

    async def container_started(self, container: str) -> str | None:
        await asyncio.sleep(0.05)
        self.started.append(container)
        return "attach failed" if self.fail else None


async def _engine(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Fake engine: echoes creates, chunks /chunks, hijacks /attach, 204s /start."""
    while True:
        try:
            head = (await reader.readuntil(b"\r\n\r\n")).decode()
        except asyncio.IncompleteReadError:
            break
        line = head.split("\r\n")[0]
        length = 0
        for h in head.split("\r\n")[1:]:
            if h.lower().startswith("content-length:"):
                length = int(h.split(":")[1])
        body = await reader.readexactly(length)
        if "/containers/create" in line:
            writer.write(b"HTTP/1.1 201 Created\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        elif "/start" in line:
            writer.write(b"HTTP/1.1 204 No Content\r\n\r\n")
        elif "/chunks" in line:
            writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
            for part in (b"hello ", b"x" * 100000, b" bye"):
                writer.write(b"%x\r\n" % len(part) + part + b"\r\n")
            writer.write(b"0\r\n\r\n")
        elif "/attach" in line:
            writer.write(b"HTTP/1.1 101 UPGRADED\r\nConnection: Upgrade\r\nUpgrade: tcp\r\n\r\n")
            await writer.drain()
            data = await reader.read()  # until the client half-closes
            writer.write(data.upper())
            await writer.drain()
            writer.close()
            return
        await writer.drain()
    writer.close()


async def _exchange(path: str, request: bytes, half_close: bool = False) -> bytes:
    reader, writer = await asyncio.open_unix_connection(path)
    writer.write(request)
    if half_close:
        writer.write_eof()
    await writer.drain()
    data = await asyncio.wait_for(reader.read(), 5) if half_close else b""
    if not half_close:
        chunks = []
        while True:
            try:
                chunk = await asyncio.wait_for(reader.read(65536), 0.5)
            except TimeoutError:
                break
            if not chunk:
                break
            chunks.append(chunk)
        data = b"".join(chunks)
    writer.close()
    return data


async def _scenario() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        engine_path = os.path.join(tmp, "engine.sock")
        proxy_path = os.path.join(tmp, "proxy.sock")
        engine = await asyncio.start_unix_server(_engine, engine_path)
        hooks = Hooks()
        proxy = DockerProxy(f"unix://{proxy_path}", f"unix://{engine_path}", hooks)
        await proxy.start()
        try:
            body = json.dumps({"Image": "x", "Cmd": ["true"]}).encode()
            create = (
                b"POST /v1.41/containers/create HTTP/1.1\r\nHost: d\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body) + body
            )
            out = await _exchange(proxy_path, create)
            assert out.startswith(b"HTTP/1.1 201")
            echoed = json.loads(out.split(b"\r\n\r\n", 1)[1])
            assert echoed == {"Image": "x", "Cmd": ["true"], "Entrypoint": ["/wrapped"]}

            start = b"POST /v1.41/containers/abc/start HTTP/1.1\r\nHost: d\r\n\r\n"
            chunks = b"GET /chunks HTTP/1.1\r\nHost: d\r\n\r\n"
            out = await _exchange(proxy_path, start + chunks)  # keep-alive: two requests
            assert out.startswith(b"HTTP/1.1 204")
            assert hooks.started == ["abc"]
            assert b"hello " in out and b" bye" in out and out.count(b"x") == 100000
            assert out.endswith(b"0\r\n\r\n")

            hooks.fail = True
            out = await _exchange(proxy_path, start)
            assert out.startswith(b"HTTP/1.1 500") and b"attach failed" in out

            attach = (
                b"POST /v1.41/containers/abc/attach?stream=1&stdin=1 HTTP/1.1\r\nHost: d\r\n"
                b"Connection: Upgrade\r\nUpgrade: tcp\r\n\r\nstdin data"
            )
            out = await _exchange(proxy_path, attach, half_close=True)
            assert out.startswith(b"HTTP/1.1 101")
            assert out.endswith(b"STDIN DATA")
        finally:
            await proxy.stop()
            engine.close()
            await engine.wait_closed()


def test_proxy_relays_rewrites_holds_and_hijacks() -> None:
    asyncio.run(_scenario())


def test_wrapped_command_follows_the_engine_merge() -> None:
    image = {"Entrypoint": ["/entry"], "Cmd": ["serve"]}
    assert wrapped_command({}, image) == (["/entry"], ["serve"])
    assert wrapped_command({"Cmd": ["x"]}, image) == (["/entry"], ["x"])
    assert wrapped_command({"Entrypoint": ["/e2"]}, image) == (["/e2"], [])
    assert wrapped_command({"Entrypoint": "/e3", "Cmd": "y"}, image) == (["/e3"], ["y"])
    assert wrapped_command({"Entrypoint": [""]}, image) == ([], ["serve"])
    assert wrapped_command({"Cmd": ["sh"]}, {"Entrypoint": None, "Cmd": None}) == ([], ["sh"])


def test_weave_cidr() -> None:
    assert weave_cidr(None) is None
    assert weave_cidr(["A=1"]) is None
    assert weave_cidr(["WEAVE_CIDR=none"]) == ["none"]
    assert weave_cidr(["WEAVE_CIDR=10.0.0.1/8 net:default"]) == ["10.0.0.1/8", "net:default"]
