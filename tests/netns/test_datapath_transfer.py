"""The fast data path end to end: bytes arrive intact at every size, on every path.

Theory of operation: the routers run with TAP offloads on (TSO/CSUM super-frames carried
with their virtio_net_hdr), so a container-to-container TCP stream crosses the overlay as
~60 KB super-frames with partial checksums, as trains of path-MTU pieces; UDP datagrams
larger than the MTU are IP-fragmented by the container.  Every test sends random bytes and
compares sha256 digests computed at both ends — a wrong checksum, a truncated or
mis-segmented super-frame or a lost fragment would show as a hash mismatch or a stall.
Paths: plain and encrypted between two hosts; relayed through h2 with h1<->h3 blocked on
the underlay; and under 1 % random underlay loss (`weave lab loss`, per packet),
where the routers must keep TCP going: encrypted links switch to path-MTU segments
(software GSO), plain ones salvage what arrived of a train that lost a piece.
The path MTU check: `ping -M do` with the largest payload passes, one byte more fails
loudly in the sender ("message too long"), never silently.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from collections.abc import Callable

import pytest
from helpers import Lab, reap, start_in, tcp_listening, weave_argv

pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
LabFactory = Callable[..., Lab]
PORT = 5301

TCP_SINK = """
import hashlib, socket, sys
with socket.create_server(("0.0.0.0", int(sys.argv[1]))) as srv:
    srv.settimeout(60)
    conn, _ = srv.accept()
    conn.settimeout(60)
    digest, size = hashlib.sha256(), 0
    with conn:
        while chunk := conn.recv(262144):
            digest.update(chunk)
            size += len(chunk)
print(size, digest.hexdigest(), flush=True)
"""

TCP_SOURCE = """
import socket, sys
data = sys.stdin.buffer.read()
with socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=60) as s:
    s.sendall(data)
"""

UDP_SINK = """
import hashlib, socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8 << 20)
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(30)  # for the first datagram: the source is still starting
good = bad = 0
print("ready", flush=True)
try:
    while True:
        d = s.recv(65535)
        s.settimeout(3)  # then: 3 s of silence ends the transfer
        if hashlib.sha256(d[32:]).digest() == d[:32]:
            good += 1
        else:
            bad += 1
except socket.timeout:
    pass
print(good, bad, flush=True)
"""

UDP_SOURCE = """
import hashlib, os, socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sizes = [1, 100, 1300, 1316, 1317, 1400, 2900, 8000, 30000, 65000]
for i in range(int(sys.argv[3])):
    body = os.urandom(sizes[i % len(sizes)])
    s.sendto(hashlib.sha256(body).digest() + body, (sys.argv[1], int(sys.argv[2])))
    time.sleep(0.002)
"""


def _up(lab: LabFactory, password: str | None) -> Lab:
    net = lab(hosts=2, containers=1, password=password)
    net.wait_until(lambda: net.ping("h1c1", net.addr(2, 1)), 30, "h1c1 reaching h2c1")
    return net


def tcp_transfer(net: Lab, src: str, dst: str, size: int, timeout: float = 90) -> None:
    """Send `size` random bytes src -> dst over TCP; the sink's sha256 must match."""
    payload = os.urandom(size)
    sink = start_in(net.netns(dst), [sys.executable, "-c", TCP_SINK, str(PORT)])
    try:
        net.wait_until(lambda: tcp_listening(net, dst, PORT), 10, "TCP sink listening")
        address = net.addr(int(dst[1]), int(dst[3]))
        source = [sys.executable, "-c", TCP_SOURCE, address, str(PORT)]
        subprocess.run(
            ["ip", "netns", "exec", net.netns(src), *source],
            input=payload,
            check=True,
            timeout=timeout,
        )
        out, _ = sink.communicate(timeout=timeout)
    finally:
        reap(sink)
    received, digest = out.decode().split()
    assert int(received) == size
    assert digest == hashlib.sha256(payload).hexdigest()


def udp_transfer(net: Lab, src: str, dst: str, count: int = 200) -> None:
    """Datagrams of 1 B .. 65 KB (fragmented by the container) arrive intact."""
    sink = start_in(net.netns(dst), [sys.executable, "-u", "-c", UDP_SINK, str(PORT)])
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        address = net.addr(int(dst[1]), int(dst[3]))
        net.exec(src, sys.executable, "-c", UDP_SOURCE, address, str(PORT), str(count))
        out, _ = sink.communicate(timeout=30)
    finally:
        reap(sink)
    good, bad = (int(x) for x in out.decode().split())
    assert bad == 0, f"{bad} datagrams arrived corrupted"
    # A lossless overlay, paced datagrams, an 8 MB receive buffer: every one must arrive.
    assert good == count, f"only {good} of {count} datagrams arrived"


def _offloads_on(net: Lab, host: str) -> None:
    """The containers' veths carry super-frames (gso_max_size clamped, TSO on)."""
    link = net.exec(f"{host}c1", "ip", "-d", "link", "show", "ethwe").stdout
    assert "gso_max_size 64000" in link


@pytest.mark.parametrize("password", [None, "datapath-secret"], ids=["plain", "encrypted"])
def test_tcp_and_udp_arrive_intact(lab: LabFactory, password: str | None) -> None:
    net = _up(lab, password)
    _offloads_on(net, "h1")
    tcp_transfer(net, "h1c1", "h2c1", 32 << 20)
    tcp_transfer(net, "h2c1", "h1c1", 4 << 20)
    udp_transfer(net, "h1c1", "h2c1")
    # The super-frames crossed the underlay as trains of pieces, joined on arrival.
    sent = json.loads(net.weave("h1", "report").stdout)["router"]["stats"]
    received = json.loads(net.weave("h2", "report").stdout)["router"]["stats"]
    assert sent["trains_sent"] > 0
    # ... most of them whole in one read (the copy path), not piece by piece.
    assert received["trains_joined"] > 2 * received["trains_joined_piecewise"]
    # While busy receiving the stream, h2's UDP thread forwarded the ACKs itself at times
    # (the hand-over), and the transfers above stayed intact.
    assert received["tap_handovers"] > 0


GRO_OFF = """
from pyroute2.ethtool import Ethtool
ethtool = Ethtool()
features = ethtool.get_features("eth0")
features.features["rx-gro"].enable = False
ethtool.set_features("eth0", features)
"""


def test_pieces_without_gro_are_joined_one_by_one(lab: LabFactory) -> None:
    """A receiving host without GRO hands every piece to its own read: the trains are
    joined piece by piece (the slow path), and every byte still arrives."""
    net = _up(lab, "pieces-secret")
    net.exec("h2", sys.executable, "-c", GRO_OFF)
    tcp_transfer(net, "h1c1", "h2c1", 16 << 20)
    received = json.loads(net.weave("h2", "report").stdout)["router"]["stats"]
    assert received["trains_joined_piecewise"] > 0


def ethwe_mtu(net: Lab, box: str) -> int:
    return int(net.exec(box, "cat", "/sys/class/net/ethwe/mtu").stdout)


def assert_mtu_edge_is_exact(net: Lab, mtu: int, src: str, dst: str) -> None:
    """`ping -M do` with the largest payload passes; one byte more fails loudly."""
    largest = mtu - 28  # IPv4 + ICMP headers
    ok = net.exec(src, "ping", "-c", "2", "-M", "do", "-s", str(largest), dst, check=False)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    big = net.exec(src, "ping", "-c", "1", "-M", "do", "-s", str(largest + 1), dst, check=False)
    assert big.returncode != 0
    assert "message too long" in (big.stdout + big.stderr).lower()


def test_path_mtu_is_derived_from_the_underlay_and_exact(lab: LabFactory) -> None:
    net = _up(lab, None)
    mtu = ethwe_mtu(net, "h1c1")
    # 1500-byte underlay - 99 bytes (IPv4 20, UDP 8, header 16, tag 16, frames prefix 13,
    # record 12, Ethernet 14): the largest that never fragments, even encrypted.
    assert mtu == 1500 - 99 == ethwe_mtu(net, "h2c1")
    assert_mtu_edge_is_exact(net, mtu, "h1c1", net.addr(2, 1))


def test_jumbo_underlay_raises_the_mtu(lab: LabFactory) -> None:
    net = lab(hosts=2, containers=1, launch=False)
    jumbo = "for d in /sys/class/net/*; do ip link set ${d##*/} mtu 9000 2>/dev/null; done"
    for _ in range(2):  # a bridge takes a larger MTU only once its ports have it
        net.exec("ul", "sh", "-c", jumbo + "; true")
    mtus = net.exec("ul", "sh", "-c", "cat /sys/class/net/*/mtu").stdout.split()
    assert set(mtus) == {"9000"}, f"the underlay did not take MTU 9000: {mtus}"
    for host in ("h1", "h2"):
        net.exec(host, "ip", "link", "set", "eth0", "mtu", "9000")
    net.weave("h1", "launch", "--nickname", "h1", "--password", "jumbo")  # no peer: eth0
    net.weave("h2", "launch", "--nickname", "h2", "--password", "jumbo", net.underlay_addr(1))
    for i in (1, 2):
        net.weave(f"h{i}", "attach", f"{net.addr(i, 1)}/10", f"netns:{net.netns(f'h{i}c1')}")
    net.wait_until(lambda: net.ping("h1c1", net.addr(2, 1)), 30, "h1c1 reaching h2c1")
    assert ethwe_mtu(net, "h1c1") == ethwe_mtu(net, "h2c1") == 9000 - 99
    assert_mtu_edge_is_exact(net, 9000 - 99, "h2c1", net.addr(1, 1))
    tcp_transfer(net, "h1c1", "h2c1", 8 << 20)
    udp_transfer(net, "h2c1", "h1c1")


def test_weave_mtu_overrides_the_underlay(lab: LabFactory) -> None:
    net = lab(hosts=1, containers=1, launch=False)
    net.exec("h1", "env", "WEAVE_MTU=1300", *weave_argv(), "launch")
    net.weave("h1", "attach", f"{net.addr(1, 1)}/10", f"netns:{net.netns('h1c1')}")
    assert ethwe_mtu(net, "h1c1") == 1300
    bad = net.exec("h1", "env", "WEAVE_MTU=jumbo", *weave_argv(), "launch", check=False)
    assert bad.returncode != 0
    assert bad.stderr.strip().count("\n") == 0 and "invalid MTU 'jumbo'" in bad.stderr


def test_relayed_transfer_is_intact(lab: LabFactory) -> None:
    net = lab(hosts=3, containers=1, launch=False)
    for me, other in ((1, 3), (3, 1)):
        net.exec(f"h{me}", "ip", "route", "add", "prohibit", f"{net.underlay_addr(other)}/32")
    env_password = ("--password", "relay-secret")
    net.weave("h1", "launch", "--nickname", "h1", *env_password)
    net.weave("h2", "launch", "--nickname", "h2", *env_password, net.underlay_addr(1))
    net.weave("h3", "launch", "--nickname", "h3", *env_password, net.underlay_addr(2))
    for i in (1, 2, 3):
        net.weave(f"h{i}", "attach", f"{net.addr(i, 1)}/10", f"netns:{net.netns(f'h{i}c1')}")
    net.wait_until(lambda: net.ping("h1c1", net.addr(3, 1)), 40, "h1c1 reaching h3c1 via h2")
    tcp_transfer(net, "h1c1", "h3c1", 16 << 20)
    udp_transfer(net, "h3c1", "h1c1")


@pytest.mark.parametrize("password", [None, "loss-secret"], ids=["plain", "encrypted"])
def test_tcp_survives_one_percent_loss(lab: LabFactory, password: str | None) -> None:
    net = _up(lab, password)
    net.loss(1)

    def h1_link() -> dict[str, object]:
        router = json.loads(net.weave("h1", "report").stdout)["router"]
        (connection,) = router["connections"]
        return dict(connection, **router["stats"])

    # Transfers until h2 has reported the loss to h1 (a heartbeat a second; a plain
    # transfer may take less), then one more: its content must arrive intact.
    net.wait_until(
        lambda: tcp_transfer(net, "h1c1", "h2c1", 8 << 20, timeout=120) or h1_link()["lossy"],
        120,
        "h2 reporting the loss to h1",
    )
    before = h1_link()
    tcp_transfer(net, "h1c1", "h2c1", 24 << 20, timeout=120)
    after = h1_link()
    receiver = json.loads(net.weave("h2", "report").stdout)["router"]["stats"]
    # The path taken.  Encrypted: h1 cuts its super-frames into path-MTU datagrams
    # (segment mode), sealed through a scratch buffer into the UDP_SEGMENT batch, and h2
    # merges the segments again before its TAP.  Plain: h1 keeps sending super-frames as
    # trains, and h2 delivers the intact parts of the trains that lost a piece (salvage).
    assert after["lossy"] and after["peer_loss_ppm"] != 0xFFFFFFFF
    segmented = after["frames_segmented"] - before["frames_segmented"]  # type: ignore[operator]
    if password:
        assert after["segmented"] and segmented > 0
        assert receiver["segments_merged"] > 0 and receiver["trains_salvaged"] == 0
    else:
        assert not after["segmented"] and segmented == 0
        assert receiver["trains_salvaged"] > 0
