"""Kernel network devices the router owns, through netlink (pyroute2).

Theory of operation: the router needs exactly two devices in its namespace — the Linux
bridge `weave` that containers' veths plug into, and the router's own TAP port enslaved
to it.  `ensure_bridge` is idempotent (a bridge left by an earlier run is reused, as Weave
Net keeps its bridge across `weave stop`), and `enslave` puts a port on the bridge with
the overlay MTU and brings it up.  Nothing here parses `ip` output.
"""

from __future__ import annotations

from pyroute2 import IPRoute


def _index(ipr: IPRoute, name: str) -> int | None:
    found = ipr.link_lookup(ifname=name)
    return int(found[0]) if found else None


def ensure_bridge(name: str, mtu: int, mac: str) -> str:
    """Create bridge `name` if missing, give it `mac`, bring it up; return its MAC.

    A bridge without an address of its own takes the lowest MAC of its ports, which
    changes as containers come and go; a fixed one keeps `weave ps` and ARP caches stable.
    """
    with IPRoute() as ipr:
        index = _index(ipr, name)
        if index is None:
            ipr.link("add", ifname=name, kind="bridge")
            index = _index(ipr, name)
            if index is None:
                raise OSError(f"bridge {name} vanished right after creation")
        ipr.link("set", index=index, address=mac, mtu=mtu)
        ipr.link("set", index=index, state="up")
        link = ipr.get_links(index)[0]
        return str(link.get_attr("IFLA_ADDRESS"))


def enslave(port: str, bridge: str, mtu: int) -> None:
    """Plug `port` into `bridge` with the given MTU, and bring it up."""
    with IPRoute() as ipr:
        port_index = _index(ipr, port)
        bridge_index = _index(ipr, bridge)
        if port_index is None or bridge_index is None:
            raise OSError(f"cannot enslave {port} to {bridge}: device missing")
        ipr.link("set", index=port_index, mtu=mtu)
        ipr.link("set", index=port_index, master=bridge_index, state="up")


def bridge_mtu(bridge: str) -> int | None:
    with IPRoute() as ipr:
        index = _index(ipr, bridge)
        if index is None:
            return None
        return int(ipr.get_links(index)[0].get_attr("IFLA_MTU"))


def underlay_mtu(addresses: list[str], bridge: str) -> int | None:
    """The MTU of the underlay: the smallest MTU of the devices towards `addresses`;
    without any, the default route's device; without one, the smallest MTU of the up
    devices holding a global IPv4 address (not loopback, not `bridge`).  None if none."""
    found = [m for m in (route_mtu_towards(a) for a in addresses) if m is not None]
    if found:
        return min(found)
    with IPRoute() as ipr:
        for route in ipr.get_default_routes(family=2):
            oif = route.get_attr("RTA_OIF")
            if oif is not None:
                return int(ipr.get_links(oif)[0].get_attr("IFLA_MTU"))
        with_address = {
            int(a["index"])
            for a in ipr.get_addr(family=2)
            if a["scope"] == 0  # universe
        }
        mtus = [
            int(link.get_attr("IFLA_MTU"))
            for link in ipr.get_links()
            if link["index"] in with_address
            and link.get_attr("IFLA_IFNAME") not in ("lo", bridge)
            and link["flags"] & 1  # IFF_UP
        ]
    return min(mtus) if mtus else None


def route_mtu_towards(address: str) -> int | None:
    """The MTU of the device the kernel would use to reach `address` (None if unknown)."""
    with IPRoute() as ipr:
        try:
            routes = ipr.route("get", dst=address)
        except Exception:
            return None
        if not routes:
            return None
        oif = routes[0].get_attr("RTA_OIF")
        if oif is None:
            return None
        return int(ipr.get_links(oif)[0].get_attr("IFLA_MTU"))
