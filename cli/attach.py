"""`weave attach` / `weave detach` / `weave ps`: plugging containers into the bridge.

Theory of operation: attaching creates a veth pair in the host's namespace — the host end
(`vethwl<hash>`) on the `weave` bridge, the other end moved into the container's
namespace and renamed `ethwe` — sets the bridge's MTU on both ends (and gso_max_size
64000, so a container's TCP super-frames fit one sealed UDP datagram), adds the address(es)
and brings it up, then announces the address with a gratuitous ARP so routers learn the
MAC at once.  A second attach adds addresses to the existing `ethwe`.  The router is told
about the attachment (for `weave ps` and persistence).  Detaching removes the given
addresses, or all of them, and deletes `ethwe` when none is left.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import socket
import struct

from pyroute2 import IPRoute
from pyweave.cli import api_client
from pyweave.cli.errors import CliError
from pyweave.cli.netns import Container, entered
from pyweave.router.api_types import Attachment

BRIDGE = "weave"
CONTAINER_IFNAME = "ethwe"
ETH_P_ARP = 0x0806
GSO_MAX_SIZE = 64000  # a sealed super-frame: one UDP datagram, its train one GRO skb


def parse_cidrs(args: list[str]) -> list[ipaddress.IPv4Interface]:
    """Explicit addresses (CIDR or ip:CIDR) as interfaces; CliError for anything else."""
    from pyweave.cli.ipam_cmds import parse_address

    cidrs: list[ipaddress.IPv4Interface] = []
    for arg in args:
        kind, cidr = parse_address(arg)
        if kind != "ip" or cidr is None:
            raise CliError(f"{arg}: a subnet is not an address here; give CIDRs like 10.128.0.2/10")
        cidrs.append(ipaddress.IPv4Interface(cidr))
    return cidrs


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def bridge_state() -> tuple[int, int, str]:
    """(index, MTU, MAC) of the weave bridge in this namespace."""
    with IPRoute() as ipr:
        index = _index(ipr, BRIDGE)
        if index is None:
            raise CliError("weave bridge not found: is the router running here? (weave launch)")
        link = ipr.get_links(index)[0]
        return index, int(link.get_attr("IFLA_MTU")), str(link.get_attr("IFLA_ADDRESS"))


def host_ifnames(container: Container) -> tuple[str, str]:
    digest = hashlib.sha256(container.spec.encode()).hexdigest()[:9]
    return f"vethwl{digest}", f"vethwg{digest}"


def _container_link(container: Container) -> tuple[str, list[str]] | None:
    """MAC and CIDRs of ethwe in the container, or None if it has none."""
    with entered(container.netns_path), IPRoute() as ipr:
        index = _index(ipr, CONTAINER_IFNAME)
        if index is None:
            return None
        mac = str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))
        cidrs = [
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        ]
        return mac, cidrs


def _create_veth(container: Container, bridge_index: int, mtu: int) -> None:
    host_end, guest_end = host_ifnames(container)
    netns_fd = open(container.netns_path)  # noqa: SIM115 - must outlive the netlink call
    try:
        with IPRoute() as ipr:
            if _index(ipr, host_end) is not None:
                ipr.link("del", ifname=host_end)
            ipr.link("add", ifname=host_end, kind="veth", peer=guest_end)
            host_index = _index(ipr, host_end)
            guest_index = _index(ipr, guest_end)
            if host_index is None or guest_index is None:
                raise CliError("veth pair vanished right after creation")
            ipr.link("set", index=host_index, gso_max_size=GSO_MAX_SIZE)
            ipr.link("set", index=guest_index, gso_max_size=GSO_MAX_SIZE)
            ipr.link("set", index=host_index, mtu=mtu, master=bridge_index, state="up")
            ipr.link("set", index=guest_index, mtu=mtu, net_ns_fd=netns_fd.fileno())
    finally:
        netns_fd.close()
    with entered(container.netns_path), IPRoute() as ipr:
        index = _index(ipr, guest_end)
        if index is None:
            raise CliError("veth end did not arrive in the container")
        ipr.link("set", index=index, ifname=CONTAINER_IFNAME, state="up")


def _add_addresses(container: Container, cidrs: list[ipaddress.IPv4Interface]) -> str:
    with entered(container.netns_path), IPRoute() as ipr:
        index = _index(ipr, CONTAINER_IFNAME)
        if index is None:
            raise CliError("ethwe vanished from the container")
        existing = {
            f"{a.get_attr('IFA_ADDRESS')}/{a['prefixlen']}"
            for a in ipr.get_addr(index=index, family=socket.AF_INET)
        }
        for iface in cidrs:
            if str(iface) not in existing:
                ipr.addr(
                    "add", index=index, address=str(iface.ip), prefixlen=iface.network.prefixlen
                )
        mac = str(ipr.get_links(index)[0].get_attr("IFLA_ADDRESS"))
        for iface in cidrs:
            _gratuitous_arp(index, mac, iface.ip)
        return mac


def _gratuitous_arp(index: int, mac: str, ip: ipaddress.IPv4Address) -> None:
    """Announce `ip` at `mac` (best effort: a failure only delays MAC learning)."""
    raw_mac = bytes.fromhex(mac.replace(":", ""))
    arp = struct.pack(
        "!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, 1, raw_mac, ip.packed, b"\x00" * 6, ip.packed
    )
    frame = b"\xff" * 6 + raw_mac + struct.pack("!H", ETH_P_ARP) + arp
    try:
        with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as sock:
            sock.bind((CONTAINER_IFNAME, 0))
            sock.send(frame)
    except OSError:
        pass


def attach(container: Container, cidr_args: list[str]) -> list[str]:
    from pyweave.cli.ipam_cmds import allocate, parse_address  # IPAM

    for arg in cidr_args:
        parse_address(arg)  # IPAM: reject malformed arguments before touching anything
    bridge_index, mtu, _ = bridge_state()
    api_client.call("GET", "/status")  # the router must be up to record the attachment
    # IPAM: claim explicit addresses, allocate net:CIDR / net:default (also: no address)
    got = allocate(container.id, cidr_args, spec=container.spec)
    cidrs = [ipaddress.IPv4Interface(c) for c in got]
    if _container_link(container) is None:
        _create_veth(container, bridge_index, mtu)
    mac = _add_addresses(container, cidrs)
    current = _container_link(container)
    all_cidrs = current[1] if current else [str(c) for c in cidrs]
    record: Attachment = {
        "container": container.id,
        "mac": mac,
        "cidrs": all_cidrs,
        "netns": container.spec,
    }
    api_client.call("PUT", f"/attachments/{container.id}", record)
    return [str(c.ip) for c in cidrs]


def _subnet_of(arg: str) -> ipaddress.IPv4Network:
    """The subnet a `net:CIDR` / `net:default` spec names (default: asked of the router)."""
    from pyweave.cli.ipam_cmds import parse_address

    _, cidr = parse_address(arg)
    if cidr is None:
        status = api_client.call("GET", "/status")
        ipam = status.get("ipam") if isinstance(status, dict) else None
        if not isinstance(ipam, dict) or not ipam.get("default_subnet"):
            raise CliError(f"{arg}: IP address allocation is not enabled on this router")
        cidr = str(ipam["default_subnet"])
    return ipaddress.IPv4Network(cidr, strict=False)


def _addresses_to_remove(existing: list[str], args: list[str]) -> list[str]:
    """Explicit CIDRs, and every address inside a `net:` subnet; all of them if none given."""
    if not args:
        return existing
    nets = [_subnet_of(a) for a in args if a.startswith("net:")]
    remove = [str(c) for c in parse_cidrs([a for a in args if not a.startswith("net:")])]
    for cidr in existing:
        if any(ipaddress.IPv4Interface(cidr).ip in net for net in nets) and cidr not in remove:
            remove.append(cidr)
    if nets and not remove:
        raise CliError(f"no address of the container is in {', '.join(map(str, nets))}")
    return remove


def detach(container: Container, cidr_args: list[str]) -> list[str]:
    current = _container_link(container)
    if current is None:
        raise CliError(f"container {container.id} is not attached to weave")
    mac, existing = current
    remove = _addresses_to_remove(existing, cidr_args)
    missing = [c for c in remove if c not in existing]
    if missing:
        raise CliError(f"container {container.id} does not have address {missing[0]}")
    remaining = [c for c in existing if c not in remove]
    with entered(container.netns_path), IPRoute() as ipr:
        index = _index(ipr, CONTAINER_IFNAME)
        if index is not None:
            if remaining:
                for cidr in remove:
                    ip, _, prefix = cidr.partition("/")
                    ipr.addr("del", index=index, address=ip, prefixlen=int(prefix))
            else:
                ipr.link("del", index=index)
    if remaining:
        api_client.call(
            "PUT",
            f"/attachments/{container.id}",
            {"container": container.id, "mac": mac, "cidrs": remaining, "netns": container.spec},
        )
    else:
        # not recorded (attached by an older router): nothing to forget
        with contextlib.suppress(CliError):
            api_client.call("DELETE", f"/attachments/{container.id}")
    from pyweave.cli.ipam_cmds import release  # IPAM: give the addresses back

    release(container.id, remove if remaining else None)
    return [c.split("/")[0] for c in remove]
