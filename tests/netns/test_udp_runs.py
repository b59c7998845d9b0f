"""Runs of small UDP datagrams cross the overlay as UDP GSO super-frames, intact and in order.

Theory of operation: the sending router merges a run of one flow's equal-sized datagrams
into one GSO_UDP_L4 record (router/core/wire/uso.py); the receiving router writes it to
its TAP whole and the kernel cuts it (at the container's socket by default; here at the
container's bridge port, whose checksum offload the test turns off).  The source here sends
with UDP_SEGMENT, as QUIC stacks do, so each `sendmsg` puts 40 datagrams into the router's
TAP queue at once and a wake-up of the router certainly drains a run.  Every datagram
carries a sequence number and a digest: a wrong cut, a mixed-up payload or a reordering
shows.  Checksums are checked too: the container's bridge port has transmit checksumming
off, so the kernel completes every checksum in software before the container's socket,
which verifies it and drops the datagram if it is wrong (a partial checksum delivered
locally would never be verified).  The second test feeds a real kernel a record it
refuses (EINVAL, as Linux < 6.2 answers every UDP GSO write) and checks the software
fallback delivers every datagram, and that a record of too many datagrams is dropped; it
needs a TAP that takes GSO_UDP_L4 writes (Linux >= 6.2) and refuses one without NEEDS_CSUM
(the stricter validation of Linux 6.8).  On a kernel before 6.2 the first test checks the
software fallback end to end instead (every run cut by the receiving router).
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
from collections.abc import Callable

import pytest
from helpers import Lab, reap, start_in

KERNEL = tuple(int(part) for part in platform.release().split("-")[0].split(".")[:2])
TAP_TAKES_UDP_GSO = KERNEL >= (6, 2)
TAP_VALIDATES_UDP_GSO = KERNEL >= (6, 8)  # "net: more strict VIRTIO_NET_HDR_GSO_UDP_L4 ..."
TAP = "vethwe-tap"  # the router's TAP port on the bridge (router/router.py)
pytestmark = [pytest.mark.netns, pytest.mark.timeout(180)]
LabFactory = Callable[..., Lab]
PORT = 5302
SENDS, PER_SEND = 250, 40

SINK = """
import hashlib, socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, 33, 16 << 20)  # SO_RCVBUFFORCE: every burst fits
s.bind(("0.0.0.0", int(sys.argv[1])))
s.settimeout(30)
good = bad = reordered = 0
last = -1
print("ready", flush=True)
try:
    while True:
        d = s.recv(65535)
        s.settimeout(3)
        if len(d) == 64 and hashlib.sha256(d[:32]).digest() == d[32:]:
            good += 1
            (seq,) = struct.unpack_from("!Q", d)
            reordered += seq <= last
            last = seq
        else:
            bad += 1
except socket.timeout:
    pass
print(good, bad, reordered, flush=True)
"""

CHECKSUMS_IN_SOFTWARE = """
import subprocess
from pyroute2.ethtool import Ethtool
links = subprocess.run(["ip", "-o", "link", "show", "master", "weave"], capture_output=True,
                       text=True, check=True).stdout
(port,) = [line.split(": ")[1].split("@")[0] for line in links.splitlines() if ": vethwl" in line]
ethtool = Ethtool()
features = ethtool.get_features(port)
for name, feature in features.features.items():
    if name.startswith("tx-checksum") and feature.enable:
        feature.enable = False
ethtool.set_features(port, features)
left = [n for n, f in ethtool.get_features(port).features.items()
        if n.startswith("tx-checksum") and f.enable]
assert not left, f"transmit checksumming still on: {left}"
print(port)
"""

SOURCE = """
import hashlib, os, socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.connect((sys.argv[1], int(sys.argv[2])))
seq = 0
for _ in range(int(sys.argv[3])):
    burst = bytearray()
    for _ in range(int(sys.argv[4])):
        head = struct.pack("!Q", seq) + os.urandom(24)
        burst += head + hashlib.sha256(head).digest()
        seq += 1
    s.sendmsg([burst], [(17, 103, struct.pack("=H", 64))])  # UDP_SEGMENT: 64-byte datagrams
    time.sleep(0.003)  # ~13 k datagrams/s: far below what the routers forward
"""


@pytest.mark.parametrize("password", [None, "uso-secret"], ids=["plain", "encrypted"])
def test_runs_of_small_datagrams_arrive_intact_and_in_order(
    lab: LabFactory, password: str | None
) -> None:
    net = lab(hosts=2, containers=1, password=password)
    net.wait_until(lambda: net.ping("h1c1", net.addr(2, 1)), 30, "h1c1 reaching h2c1")
    net.exec("h2", sys.executable, "-c", CHECKSUMS_IN_SOFTWARE)
    # Room for a stall of the sending router on this shared machine: what is measured here
    # is merging and cutting, not the TAP's default queue of 500 frames.
    net.exec("h1", "ip", "link", "set", TAP, "txqueuelen", "20000")
    sink = start_in(net.netns("h2c1"), [sys.executable, "-u", "-c", SINK, str(PORT)])
    try:
        assert sink.stdout is not None
        assert sink.stdout.readline().strip() == b"ready"
        argv = [sys.executable, "-c", SOURCE, net.addr(2, 1), str(PORT)]
        net.exec("h1c1", *argv, str(SENDS), str(PER_SEND))
        out, _ = sink.communicate(timeout=60)
    finally:
        reap(sink)
    good, bad, reordered = (int(x) for x in out.decode().split())
    assert (bad, reordered) == (0, 0)
    dropped = net.exec("h1", "cat", f"/sys/class/net/{TAP}/statistics/tx_dropped").stdout
    assert good == SENDS * PER_SEND, (
        f"only {good} of {SENDS * PER_SEND} datagrams arrived (h1's TAP dropped {dropped.strip()})"
    )
    sent = json.loads(net.weave("h1", "report").stdout)["router"]["stats"]
    received = json.loads(net.weave("h2", "report").stdout)["router"]["stats"]
    # Most datagrams travelled inside super-frames ...
    assert sent["udp_frames_merged"] > good // 2
    if TAP_TAKES_UDP_GSO:  # ... which this kernel took whole
        assert received["udp_gso_cut"] == 0
        assert received["tap_frames_out"] < good // 2
    else:  # ... which the receiving router had to cut (Linux < 6.2)
        assert received["udp_gso_cut"] > 0


REFUSED = """
import hashlib, os, socket, struct, subprocess, sys
from pyweave.router.io.datapath import DataPlaneCounters, after_failed_write
from pyweave.router.io.tap import open_tap

fd = open_tap("uso0", offload=True)
subprocess.run(["ip", "addr", "add", "10.9.0.2/24", "dev", "uso0"], check=True)
subprocess.run(["ip", "link", "set", "uso0", "up"], check=True)
mac = bytes.fromhex(open("/sys/class/net/uso0/address").read().strip().replace(":", ""))
sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
sock.bind(("10.9.0.2", 5000))
sock.settimeout(2)

def fold(x):
    while x > 0xFFFF:
        x = (x & 0xFFFF) + (x >> 16)
    return x

def datagram(i):
    body = struct.pack("!Q", i) + os.urandom(24)
    return body + hashlib.sha256(body).digest()

def super_frame(first, count, flags=1):
    # A GSO_UDP_L4 record of `count` 64-byte datagrams, as a sending router makes one
    # (flags 1: NEEDS_CSUM; without it this kernel refuses the write).
    payload = b"".join(datagram(i) for i in range(first, first + count))
    length = 8 + len(payload)
    src, dst = bytes([10, 9, 0, 1]), bytes([10, 9, 0, 2])
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + length, first, 0x4000, 64, 17, 0, src, dst)
    ip = bytearray(ip)
    struct.pack_into("!H", ip, 10, ~fold(sum(struct.unpack("!10H", ip))) & 0xFFFF)
    pseudo = fold(sum(struct.unpack("!4H", src + dst)) + 17 + length)
    udp = struct.pack("!HHHH", 4000, 5000, length, pseudo)
    vnet = struct.pack("<BBHHHH", flags, 5, 42, 64, 34, 6)  # GSO_UDP_L4
    return vnet + mac + bytes(6) + b"\\x08\\x00" + bytes(ip) + udp + payload

def receive():
    got = []
    try:
        while True:
            d = sock.recv(2048)
            ok = len(d) == 64 and hashlib.sha256(d[:32]).digest() == d[32:]
            got.append(struct.unpack_from("!Q", d)[0] if ok else -1)
    except socket.timeout:
        return got

def write(record, counters):
    try:
        os.write(fd, record)
        return "taken"
    except OSError as exc:
        after_failed_write(fd, record, exc, counters)  # what the data plane does then
        return "refused" if exc.errno == 22 else str(exc)  # EINVAL

counters = DataPlaneCounters()
print("whole", write(super_frame(0, 10), counters), receive() == list(range(10)))
outcome = write(super_frame(100, 20, flags=0), counters)
print("cut", outcome, receive() == list(range(100, 120)), counters.udp_gso_cut)
outcome = write(super_frame(300, 130), counters)  # more than 128: not cut either
print("too many", outcome, receive() == [], counters.drops_malformed, counters.tap_frames_out)
"""


@pytest.mark.skipif(
    not TAP_VALIDATES_UDP_GSO, reason="a TAP refuses a UDP GSO write without NEEDS_CSUM from 6.8"
)
def test_a_refused_udp_gso_record_is_cut_in_software() -> None:
    netns = "hus-refused"
    subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        subprocess.run(["ip", "-n", netns, "link", "set", "lo", "up"], check=True)
        result = subprocess.run(
            ["ip", "netns", "exec", netns, sys.executable, "-c", REFUSED],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        subprocess.run(["ip", "netns", "del", netns], capture_output=True, check=False)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split("\n")[:3] == [
        "whole taken True",
        "cut refused True 1",
        "too many refused True 1 20",
    ]
