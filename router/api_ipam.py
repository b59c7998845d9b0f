"""HTTP API of IPAM, shaped after Weave Net's (`/ip/<container>`, `/peer/<name>`).

Theory of operation: each handler validates, asks the `IpamService`, and answers (status,
JSON).  Allocation and claims wait inside the router up to `wait` seconds (default
`DEFAULT_WAIT`, at most `MAX_WAIT`, below the API server's request timeout); if still not
served they answer 503 with the reason (`{"error": ..., "waiting": true}`), so a client
never hangs silently and can ask again.  A refusal (the address is held elsewhere) is a 409.

    POST   /ip/<container>              {"subnet": CIDR?, "spec": S?, "wait": s?} -> address
    PUT    /ip/<container>/<ip>/<len>   {"spec": S?, "wait": s?}                  -> address
    DELETE /ip/<container>[/<ip>]                                  -> released addresses
    DELETE /peer/<name>[,<name>...]     (rmpeer)                   -> {"taken": N}
    GET    /ipam                        the `ipam` status document
    POST   /ipam/prime {"wait": s?}     200 once a ring exists, else 503 with the status
    POST   /ipam/handoff                (reset) give our ranges away -> {"heir": name|null}
"""

from __future__ import annotations

import ipaddress
from typing import TYPE_CHECKING

from pyweave.router.core.ipam.allocator import Allocated, Refused
from pyweave.router.core.names import format_peer_name
from pyweave.router.io.api import ApiServer

if TYPE_CHECKING:
    from pyweave.router.ipam_service import IpamService
    from pyweave.router.router import Router

Result = tuple[int, object]
DEFAULT_WAIT = 5.0
MAX_WAIT = 8.0
DISABLED = "IP allocation is disabled (--ipalloc-range is empty)"


def _body(body: object) -> dict[str, object]:
    return body if isinstance(body, dict) else {}


def _wait(body: dict[str, object]) -> float:
    raw = body.get("wait", DEFAULT_WAIT)
    value = float(raw) if isinstance(raw, int | float) else DEFAULT_WAIT
    return max(0.0, min(MAX_WAIT, value))


def _spec(container: str, body: dict[str, object]) -> str:
    spec = body.get("spec")
    return spec if isinstance(spec, str) and spec else container


def _waiting(reason: str) -> Result:
    return 503, {"error": reason, "waiting": True}


async def allocate(ipam: IpamService, container: str, body: object) -> Result:
    doc = _body(body)
    subnet = None
    if isinstance(doc.get("subnet"), str):
        try:
            subnet = ipaddress.IPv4Network(str(doc["subnet"]), strict=False)
        except ValueError as exc:
            return 400, {"error": f"invalid subnet: {exc}"}
    outcome, net = await ipam.allocate(container, _spec(container, doc), subnet, _wait(doc))
    if isinstance(outcome, Allocated):
        return 200, {"address": f"{ipaddress.IPv4Address(outcome.addr)}/{net.prefixlen}"}
    if isinstance(outcome, Refused):
        return 409, {"error": outcome.reason}
    return _waiting(f"cannot allocate in {net} yet: {outcome.reason}")


async def claim(ipam: IpamService | None, rest: str, body: object) -> Result:
    container, _, cidr = rest.partition("/")
    try:
        iface = ipaddress.IPv4Interface(cidr)
    except ValueError as exc:
        return 400, {"error": f"invalid address {cidr!r}: {exc}"}
    if ipam is None:
        return 200, {"address": str(iface), "managed": False}
    doc = _body(body)
    addr = int(iface.ip)
    outcome = await ipam.claim(container, _spec(container, doc), addr, _wait(doc))
    if isinstance(outcome, Allocated):
        managed = iface.ip in ipam.config.range
        return 200, {"address": str(iface), "managed": managed}
    if isinstance(outcome, Refused):
        return 409, {"error": outcome.reason}
    return _waiting(f"cannot claim {iface.ip} yet: {outcome.reason}")


def free(ipam: IpamService, rest: str) -> Result:
    container, _, ip_text = rest.partition("/")
    addrs = None
    if ip_text:
        try:
            addrs = [int(ipaddress.IPv4Interface(ip_text).ip)]
        except ValueError as exc:
            return 400, {"error": f"invalid address {ip_text!r}: {exc}"}
    released = ipam.free(container, addrs)
    return 200, {"released": [str(ipaddress.IPv4Address(a)) for a in released]}


def rmpeer(ipam: IpamService, rest: str) -> Result:
    try:
        peers = [ipam.resolve_peer(text) for text in rest.split(",") if text]
        if not peers:
            return 400, {"error": "no peer given"}
        taken = ipam.rmpeer(peers)
    except ValueError as exc:
        return 409, {"error": str(exc)}
    names = ", ".join(format_peer_name(p) for p in peers)
    return 200, {"taken": taken, "message": f"{taken} IPs taken over from {names}"}


def register_ipam_handlers(api: ApiServer, router: Router) -> None:
    def service() -> IpamService | None:
        return router.ipam

    async def post_ip(rest: str, body: object) -> Result:
        ipam = service()
        if ipam is None:
            return 400, {"error": DISABLED}
        if not rest or "/" in rest:
            return 400, {"error": "expected POST /ip/<container>"}
        return await allocate(ipam, rest, body)

    async def put_ip(rest: str, body: object) -> Result:
        return await claim(service(), rest, body)

    async def delete_ip(rest: str, body: object) -> Result:
        ipam = service()
        return (200, {"released": []}) if ipam is None else free(ipam, rest)

    async def delete_peer(rest: str, body: object) -> Result:
        ipam = service()
        return (400, {"error": DISABLED}) if ipam is None else rmpeer(ipam, rest)

    async def get_ipam(rest: str, body: object) -> Result:
        ipam = service()
        if ipam is None:
            return 404, {"error": DISABLED}
        return 200, ipam.status(router.loop_time())

    async def prime(rest: str, body: object) -> Result:
        ipam = service()
        if ipam is None:
            return 400, {"error": DISABLED}
        status = await ipam.prime(_wait(_body(body)))
        return (200, {"status": status}) if status == "ready" else _waiting(status)

    async def handoff(rest: str, body: object) -> Result:
        ipam = service()
        heir = None if ipam is None else ipam.handoff()
        return 200, {"heir": None if heir is None else format_peer_name(heir)}

    api.route("POST", "/ip", post_ip)
    api.route("PUT", "/ip", put_ip)
    api.route("DELETE", "/ip", delete_ip)
    api.route("DELETE", "/peer", delete_peer)
    api.route("GET", "/ipam", get_ipam)
    api.route("POST", "/ipam/prime", prime)
    api.route("POST", "/ipam/handoff", handoff)
