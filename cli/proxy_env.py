"""`weave proxy-env` / `weave env`: point the Docker client at the weave proxy, and back.

Theory of operation: the router tells where its Docker API proxy listens (`GET /proxy`);
the command prints one shell line for `eval`, as Weave Net's does:

    export DOCKER_HOST=tcp://127.0.0.1:12375 ORIG_DOCKER_HOST=<previous DOCKER_HOST>

`--restore` prints the line that undoes it: `export DOCKER_HOST=<ORIG_DOCKER_HOST>; unset
ORIG_DOCKER_HOST`, or `unset DOCKER_HOST ORIG_DOCKER_HOST` when there was none.  Running
`proxy-env` twice keeps the original ORIG_DOCKER_HOST.  A proxy bound to a wildcard
address is reached on 127.0.0.1.
"""

from __future__ import annotations

import os
import shlex
from typing import cast

from pyweave.cli import api_client
from pyweave.cli.errors import CliError


def proxy_address() -> str:
    try:
        info = cast(dict[str, str], api_client.call("GET", "/proxy"))
    except CliError as exc:
        raise CliError(f"weave proxy is not running: {exc}") from exc
    address = str(info.get("address") or "")
    if not address:
        raise CliError("weave proxy is not running")
    for wildcard in ("tcp://0.0.0.0:", "tcp://[::]:"):
        if address.startswith(wildcard):
            address = "tcp://127.0.0.1:" + address[len(wildcard) :]
    return address


def proxy_env(restore: bool) -> str:
    if restore:
        original = os.environ.get("ORIG_DOCKER_HOST", "")
        if original:
            return f"export DOCKER_HOST={shlex.quote(original)}; unset ORIG_DOCKER_HOST"
        return "unset DOCKER_HOST ORIG_DOCKER_HOST"
    address = proxy_address()
    current = os.environ.get("DOCKER_HOST", "")
    original = os.environ.get("ORIG_DOCKER_HOST", "") if current == address else current
    return f"export DOCKER_HOST={shlex.quote(address)} ORIG_DOCKER_HOST={shlex.quote(original)}"
