"""The TAP port: the router's door into the `weave` bridge.

Theory of operation: the router opens /dev/net/tun as a TAP device (Ethernet frames, no
packet-information prefix) with IFF_VNET_HDR, so every read and write carries a 10-byte
virtio_net_hdr in front of the frame.  With offloads off (the default), that header is all
zeros and frames are at most MTU + 14 bytes; with `offload=True` the kernel may hand us
64 KB TCP super-frames (TSO) with partial checksums, described by that header, which the
far side writes back verbatim so its kernel finishes the job.  python-pytun has no
IFF_VNET_HDR / TUNSETOFFLOAD, so this module issues the ioctls itself.

The router opens it with offloads on (`TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6`; TSO
without CSUM is refused with EINVAL).  A sealed super-frame must fit one 65,507-byte UDP
datagram, so `clamp_gso_max_size` lowers the device's gso_max_size to GSO_MAX_SIZE
(the bridge takes the minimum of its ports; `weave attach` clamps the containers' veths,
which is where the TCP stack sizes its super-frames).  UFO/USO are not enabled: only TCP
super-frames arrive, which core/wire/gso.py can cut in software when it must.

UDP GSO super-frames (GSO_UDP_L4, core/wire/uso.py) need no offload flag: they are only
written, and Linux >= 6.2 takes them on a write.

The descriptor is opened non-blocking and stays so: the data plane waits for it with poll
and reads until EAGAIN.  Closing the descriptor deletes the (non-persistent) device.
"""

from __future__ import annotations

import fcntl
import os
import struct

TUNSETIFF = 0x400454CA
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM = 0x01
TUN_F_TSO4 = 0x02
TUN_F_TSO6 = 0x04
VNET_HDR_SIZE = 10
IFNAMSIZ = 16
GSO_MAX_SIZE = 64000  # sealed + as pieces: < 64 KB, the most GRO merges into one skb
OFFLOADS = TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6


def open_tap(name: str, offload: bool = False) -> int:
    """Create TAP device `name`; return its non-blocking file descriptor."""
    if len(name.encode()) >= IFNAMSIZ:
        raise ValueError(f"interface name {name!r} is longer than 15 bytes")
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        ifreq = struct.pack("16sH", name.encode(), IFF_TAP | IFF_NO_PI | IFF_VNET_HDR)
        fcntl.ioctl(fd, TUNSETIFF, ifreq)
        fcntl.ioctl(fd, TUNSETVNETHDRSZ, struct.pack("i", VNET_HDR_SIZE))
        fcntl.ioctl(fd, TUNSETOFFLOAD, OFFLOADS if offload else 0)
    except OSError:
        os.close(fd)
        raise
    return fd


def clamp_gso_max_size(name: str, size: int = GSO_MAX_SIZE) -> None:
    """Lower `name`'s gso_max_size so no super-frame outgrows one UDP datagram."""
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("set", index=found[0], gso_max_size=size)
