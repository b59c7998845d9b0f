"""Talking to the local router's HTTP API (127.0.0.1:6784 in this network namespace).

Theory of operation: one short HTTP/1.1 request per call with http.client; the JSON
answer is returned as is.  A router that does not answer, or answers with an error
document, becomes a CliError with a one-line message.
"""

from __future__ import annotations

import http.client
import json
import os

from pyweave.cli.errors import CliError
from pyweave.router.api_types import API_PORT

TIMEOUT = 10.0


def api_address() -> tuple[str, int]:
    raw = os.environ.get("WEAVE_HTTP_ADDR", f"127.0.0.1:{API_PORT}")
    host, _, port = raw.rpartition(":")
    if not host or not port.isdigit():
        raise CliError(f"invalid WEAVE_HTTP_ADDR {raw!r}: expected host:port")
    return host, int(port)


def call(method: str, path: str, body: object = None, timeout: float = TIMEOUT) -> object:
    host, port = api_address()
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    payload = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if payload is not None else {}
    try:
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(
            "weave router is not running (no answer on "
            f"{host}:{port}); start it with 'weave launch'"
        ) from exc
    finally:
        conn.close()
    try:
        document = json.loads(raw) if raw else None
    except ValueError as exc:
        raise CliError(f"router sent a malformed answer to {method} {path}") from exc
    if response.status >= 400:
        message = document.get("error") if isinstance(document, dict) else None
        raise CliError(str(message or f"router answered {response.status} to {method} {path}"))
    return document


def is_up(timeout: float = 1.0) -> bool:
    try:
        call("GET", "/status", timeout=timeout)
    except CliError:
        return False
    return True
