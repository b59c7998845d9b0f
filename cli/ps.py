"""`weave ps`: the bridge's own line, then every attached container with MAC and CIDRs.

Theory of operation: the router keeps the list of attachments; `ps` shows those whose
namespace still exists and whose `ethwe` is still there, reading MAC and addresses live
from the kernel (so what it prints is what is, not what was recorded).
"""

from __future__ import annotations

import socket
from typing import cast

from pyroute2 import IPRoute
from pyweave.cli import api_client
from pyweave.cli.attach import bridge_state
from pyweave.cli.errors import CliError
from pyweave.cli.netns import resolve
from pyweave.cli.status_format import format_ps
from pyweave.router.api_types import Attachment


def _expose_line() -> Attachment:
    index, _, mac = bridge_state()
    with IPRoute() as ipr:
        cidrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        ]
    return {"container": "weave:expose", "mac": mac, "cidrs": cidrs}


def _live(record: Attachment) -> Attachment | None:
    from pyweave.cli.attach import _container_link

    try:
        container = resolve(record.get("netns", record["container"]).removeprefix("docker:"))
        link = _container_link(container)
    except CliError:
        return None
    if link is None:
        return None
    return {"container": record["container"], "mac": link[0], "cidrs": link[1]}


def show_ps(only: list[str]) -> str:
    document = cast(dict[str, list[Attachment]], api_client.call("GET", "/attachments"))
    expose = _expose_line() if not only else None
    live = []
    for record in document.get("attachments", []):
        if only and record["container"] not in only and record.get("netns") not in only:
            continue
        current = _live(record)
        if current is not None:
            live.append(current)
    return format_ps(live, expose)
