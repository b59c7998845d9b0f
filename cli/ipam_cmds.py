"""IPAM on the command line: addresses for attach/expose, and rmpeer, reset, prime, hide.

Theory of operation: every address argument (`[ip:]CIDR`, `net:CIDR`, `net:default`, or
none at all = `net:default`) becomes one request to the router's IPAM API: a claim
(`PUT /ip/<container>/<cidr>`) or an allocation (`POST /ip/<container>`).  The router
waits a few seconds itself and answers 503 with the reason when it cannot serve the
request yet; we ask again until our own deadline (`WEAVE_IPAM_TIMEOUT`, default 30 s)
and then fail with that reason, so nothing hangs silently.  Addresses outside the
allocation range are not managed and pass through as given.  `expose`/`hide` put
addresses on the `weave` bridge itself (container id `weave:expose`).
"""

from __future__ import annotations

import argparse
import contextlib
import http.client
import ipaddress
import json
import os
import socket
import time

from pyweave.cli import api_client
from pyweave.cli.errors import CliError

EXPOSE = "weave:expose"
BRIDGE = "weave"
DEFAULT_TIMEOUT = 30.0
REQUEST_WAIT = 5.0


def timeout() -> float:
    raw = os.environ.get("WEAVE_IPAM_TIMEOUT", "")
    try:
        return float(raw) if raw else DEFAULT_TIMEOUT
    except ValueError as exc:
        raise CliError(f"invalid WEAVE_IPAM_TIMEOUT {raw!r}") from exc


def parse_address(arg: str) -> tuple[str, str | None]:
    """("net", CIDR|None) for allocations, ("ip", CIDR) for claims; CliError if malformed."""
    if arg.startswith("net:"):
        text = arg[len("net:") :]
        if text == "default":
            return "net", None
        try:
            return "net", str(ipaddress.IPv4Network(text, strict=False))
        except ValueError as exc:
            raise CliError(f"invalid subnet {arg!r}: {exc}") from exc
    text = arg.removeprefix("ip:")
    if "/" not in text:
        raise CliError(f"invalid address {arg!r}: expected CIDR notation like 10.128.0.2/10")
    try:
        iface = ipaddress.IPv4Interface(text)
    except ValueError as exc:
        raise CliError(f"invalid address {arg!r}: {exc}") from exc
    net = iface.network
    if net.prefixlen < 31 and iface.ip in (net.network_address, net.broadcast_address):
        raise CliError(f"invalid address {arg!r}: network or broadcast address of {net}")
    return "ip", str(iface)


def _request(method: str, path: str, body: object) -> tuple[int, dict[str, object]]:
    """One API call that, unlike api_client.call, lets us see 503 "still waiting"."""
    host, port = api_client.api_address()
    conn = http.client.HTTPConnection(host, port, timeout=REQUEST_WAIT + 10)
    try:
        conn.request(method, path, json.dumps(body).encode(), {"Content-Type": "application/json"})
        response = conn.getresponse()
        raw = response.read()
    except (OSError, http.client.HTTPException) as exc:
        raise CliError(
            f"weave router is not running (no answer on {host}:{port}); start it with "
            "'weave launch'"
        ) from exc
    finally:
        conn.close()
    try:
        doc = json.loads(raw) if raw else {}
    except ValueError as exc:
        raise CliError(f"router sent a malformed answer to {method} {path}") from exc
    return response.status, doc if isinstance(doc, dict) else {}


def _until_served(method: str, path: str, body: dict[str, object]) -> dict[str, object]:
    deadline = time.monotonic() + timeout()
    while True:
        wait = max(0.0, min(REQUEST_WAIT, deadline - time.monotonic()))
        status, doc = _request(method, path, {**body, "wait": wait})
        if status < 400:
            return doc
        message = str(doc.get("error") or f"router answered {status} to {method} {path}")
        if not doc.get("waiting") or time.monotonic() >= deadline:
            raise CliError(message)


def allocate(container_id: str, addr_args: list[str], spec: str | None = None) -> list[str]:
    """CIDRs for `container_id`: claims and allocations, `net:default` if none given.

    All arguments are checked before the first request; on a failure, what this call
    got so far is released again.
    """
    wanted = [parse_address(a) for a in addr_args] or [("net", None)]
    body: dict[str, object] = {"spec": spec or container_id}
    got: list[str] = []
    try:
        for kind, cidr in wanted:
            if kind == "ip":
                doc = _until_served("PUT", f"/ip/{container_id}/{cidr}", body)
            else:
                sub = {} if cidr is None else {"subnet": cidr}
                doc = _until_served("POST", f"/ip/{container_id}", {**body, **sub})
            got.append(str(doc["address"]))
    except CliError:
        release(container_id, got)
        raise
    return got


def release(container_id: str, cidrs: list[str] | None = None) -> list[str]:
    """Give addresses back (all of the container's without `cidrs`); best effort."""
    paths = [f"/ip/{container_id}"]
    if cidrs is not None:
        paths = [f"/ip/{container_id}/{c.split('/')[0]}" for c in cidrs]
    released: list[str] = []
    for path in paths:
        try:
            doc = api_client.call("DELETE", path)
        except CliError:
            continue
        if isinstance(doc, dict):
            released += [str(a) for a in doc.get("released", [])]
    return released


# -- commands ----------------------------------------------------------------------------


def cmd_rmpeer(args: argparse.Namespace) -> int:
    doc = api_client.call("DELETE", f"/peer/{','.join(args.peers)}")
    print(doc.get("message", "") if isinstance(doc, dict) else "")
    return 0


def cmd_prime(args: argparse.Namespace) -> int:
    _until_served("POST", "/ipam/prime", {})
    return 0


def cmd_reset(args: argparse.Namespace) -> int:
    from pyweave.cli.docker_launch import stop
    from pyweave.cli.launch import running_pid, state_dir

    if running_pid(state_dir()) is not None:
        api_client.call("POST", "/ipam/handoff")
        stop()
    _delete_bridge()
    for name in ("ipam.json", "attachments.json", "peer-name"):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(os.path.join(state_dir(), name))
    return 0


def _delete_bridge() -> None:
    """Delete the bridge and every veth plugged into it (which takes the containers'
    `ethwe` with it: their addresses have been handed to other peers)."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=BRIDGE)
        if not found:
            return
        for link in ipr.get_links():
            if link.get_attr("IFLA_MASTER") == found[0] and link.get_attr("IFLA_LINKINFO"):
                with contextlib.suppress(Exception):
                    ipr.link("del", index=link["index"])
        ipr.link("del", index=found[0])


def _bridge_addrs() -> tuple[int, list[str]]:
    from pyweave.cli.attach import bridge_state

    index, _, _ = bridge_state()
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        cidrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        ]
    return index, cidrs


def cmd_expose(args: argparse.Namespace) -> int:
    from pyroute2 import IPRoute

    index, existing = _bridge_addrs()
    cidrs = allocate(EXPOSE, args.addresses, spec=EXPOSE)
    with IPRoute() as ipr:
        for cidr in cidrs:
            if cidr not in existing:
                iface = ipaddress.IPv4Interface(cidr)
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
    print(" ".join(c.split("/")[0] for c in cidrs))
    return 0


def cmd_hide(args: argparse.Namespace) -> int:
    from pyroute2 import IPRoute

    index, existing = _bridge_addrs()
    wanted = [parse_address(a) for a in args.addresses]
    if any(kind == "net" for kind, _ in wanted):
        raise CliError("hide takes addresses (CIDR), not net: specs")
    remove = [str(c) for _, c in wanted] if wanted else existing
    missing = [c for c in remove if c not in existing]
    if missing:
        raise CliError(f"address {missing[0]} is not exposed")
    with IPRoute() as ipr:
        for cidr in remove:
            iface = ipaddress.IPv4Interface(cidr)
            ipr.addr("del", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen)
    release(EXPOSE, remove)
    print(" ".join(c.split("/")[0] for c in remove))
    return 0


def add_ipam_parsers(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("rmpeer", help="take over the IP ranges of dead peers")
    p.add_argument("peers", nargs="+", metavar="PEER")
    sub.add_parser("prime", help="wait until IP allocation is possible")
    sub.add_parser("reset", help="give our IP ranges away, stop the router, wipe its state")
    for name in ("expose", "hide"):
        p = sub.add_parser(name, help=f"{name} the host on the weave network")
        p.add_argument("addresses", nargs="*", metavar="ADDR")


IPAM_COMMANDS = {
    "rmpeer": cmd_rmpeer,
    "prime": cmd_prime,
    "reset": cmd_reset,
    "expose": cmd_expose,
    "hide": cmd_hide,
}


def validate_ipam_options(args: argparse.Namespace) -> None:
    """`weave launch --ipalloc-range/--ipalloc-default-subnet/--ipalloc-init`."""
    from pyweave.router.core.names import BadPeerName, parse_peer_name

    if not args.ipalloc_range:
        return
    try:
        universe = ipaddress.IPv4Network(args.ipalloc_range, strict=False)
        subnet = ipaddress.IPv4Network(args.ipalloc_default_subnet or universe, strict=False)
    except ValueError as exc:
        raise CliError(f"invalid IP allocation range: {exc}") from exc
    if not subnet.subnet_of(universe):
        raise CliError(f"--ipalloc-default-subnet {subnet} is not inside {universe}")
    kind, _, arg = args.ipalloc_init.partition("=")
    try:
        if kind == "seed" and arg:
            for name in arg.split(","):
                parse_peer_name(name)
            return
    except BadPeerName as exc:
        raise CliError(f"invalid --ipalloc-init seed: {exc}") from exc
    if kind in ("", "consensus") and (not arg or (arg.isdigit() and int(arg) > 0)):
        return
    if kind == "observer" and not arg:
        return
    raise CliError(
        f"invalid --ipalloc-init {args.ipalloc_init!r}: expected consensus[=N], "
        "seed=NAME,... or observer"
    )


def ipam_router_args(args: argparse.Namespace) -> list[str]:
    argv = []
    if args.ipalloc_default_subnet:
        argv += ["--ipalloc-default-subnet", args.ipalloc_default_subnet]
    if args.ipalloc_init:
        argv += ["--ipalloc-init", args.ipalloc_init]
    return argv
