"""Exact-text tests for cli/status_format.py: Weave Net 2.x `weave status` / `weave ps` layouts.

Where each expected layout comes from (weaveworks/weave, 2.x):

* prog/weaver/http.go, ``statusTemplate``: labels right-aligned in 15 columns + ":";
  "Protocol: weave 1..2"; Connections/Peers counts via printConnectionCounts /
  printPeerConnectionCounts; "TrustedSubnets: none" via printList.
* the ``weave`` script, ``status)``: an ``echo`` before and after the router's page
  when no sub-command is given.
* prog/weaver/http.go, ``connectionsTemplate``: ``%-21v`` address, ``%-11v`` state, Info,
  then Attrs (minus "name") as key=value without separators; mesh status.go builds Info
  as ``%-11v`` encrypted/unencrypted + ``%-6v`` overlay + remote peer.
  site/troubleshooting.md shows the same columns:
  ``<- 192.168.48.12:33866   established unencrypted fastdp 7e:21:4a:70:2f:45(host2)``.
* prog/weaver/http.go, ``peersTemplate``: 3 spaces, direction, ``%-21v``, ``%-37v``.
* prog/weaver/http.go, ``printIPAMRanges``: ``%-37v %8d IPs (%04.1f%% of total) %s``.
* prog/weaver/http.go, ``dnsEntriesTemplate``: ``%-12v %-15v %12.12v origin``.
* prog/weaveutil container-addrs + the script's ``echo_addresses`` (``echo $1 $3 $4``)
  for ``weave ps``; sample lines from site/troubleshooting.md.
* test/*_test.sh greps we must keep working: ``status connections | grep -P
  'encrypted *fastdp'``, ``grep -q 'mtu=1410'``, ``status connections | tr -s ' ' |
  cut -d ' ' -f 2`` giving the address, ``status | grep 'version check update disabled'``,
  ``ps <c> | grep -o <ip>``.
"""

from __future__ import annotations

import re

import pytest
from pyweave.cli.status_format import (
    format_connections,
    format_dns,
    format_ipam,
    format_peers,
    format_ps,
    format_status,
    format_targets,
)
from pyweave.router.api_types import (
    Attachment,
    ConnectionStatus,
    IpamStatus,
    PeerStatus,
    RouterStatus,
    Status,
)

HOST1 = "ce:31:e0:06:45:1a"
HOST2 = "ea:2d:b2:e6:e4:f5"
HOST3 = "ee:38:33:a7:d9:71"


def _peers() -> list[PeerStatus]:
    # The three-host mesh of site/troubleshooting.md ("weave status peers").
    return [
        {
            "name": HOST1,
            "nickname": "host1",
            "uid": "1",
            "version": 4,
            "connections": [
                {
                    "name": HOST2,
                    "nickname": "host2",
                    "address": "192.168.48.12:39634",
                    "outbound": False,
                    "established": True,
                },
                {
                    "name": HOST3,
                    "nickname": "host3",
                    "address": "192.168.48.13:49619",
                    "outbound": False,
                    "established": True,
                },
            ],
        },
        {
            "name": HOST2,
            "nickname": "host2",
            "uid": "2",
            "version": 3,
            "connections": [
                {
                    "name": HOST1,
                    "nickname": "host1",
                    "address": "192.168.48.11:6783",
                    "outbound": True,
                    "established": True,
                },
                {
                    "name": HOST3,
                    "nickname": "host3",
                    "address": "192.168.48.13:58181",
                    "outbound": False,
                    "established": False,
                },
            ],
        },
        {
            "name": HOST3,
            "nickname": "host3",
            "uid": "3",
            "version": 3,
            "connections": [],
        },
    ]


def _connections() -> list[ConnectionStatus]:
    # One of each state, as in site/troubleshooting.md ("weave status connections").
    return [
        {
            "address": "192.168.48.12:33866",
            "outbound": False,
            "state": "established",
            "info": "",
            "peer": {"name": "7e:21:4a:70:2f:45", "nickname": "host2"},
            "encrypted": False,
            "overlay": "fastdp",
            "mtu": 1376,
        },
        {
            "address": "192.168.48.13:60773",
            "outbound": False,
            "state": "pending",
            "info": "",
            "peer": {"name": "7e:ae:cd:d5:23:8d", "nickname": "host3"},
            "encrypted": True,
            "overlay": "sleeve",
            "mtu": 1438,
        },
        {
            "address": "192.168.48.14:6783",
            "outbound": True,
            "state": "retrying",
            "info": "dial tcp4 192.168.48.14:6783: no route to host",
        },
        {
            "address": "192.168.48.15:6783",
            "outbound": True,
            "state": "failed",
            "info": "dial tcp4 192.168.48.15:6783: no route to host, retry: 2026-11-27 23:41:02",
        },
        {"address": "192.168.48.16:6783", "outbound": True, "state": "connecting", "info": ""},
    ]


def _router(**overrides: object) -> RouterStatus:
    router: RouterStatus = {
        "protocol": "weave",
        "protocol_min_version": 1,
        "protocol_max_version": 2,
        "name": HOST1,
        "nickname": "host1",
        "port": 6783,
        "encryption": True,
        "peer_discovery": True,
        "trusted_subnets": [],
        "targets": ["192.168.48.14", "192.168.48.15", "192.168.48.16"],
        "connections": _connections(),
        "peers": _peers(),
    }
    router.update(overrides)  # type: ignore[typeddict-item]
    return router


def _ipam() -> IpamStatus:
    return {
        "status": "ready",
        "range": "10.32.0.0/12",
        "default_subnet": "10.32.0.0/12",
        "range_num_ips": 1048576,
        "active_ips": 3,
        "owners": [
            {"peer": HOST2, "nickname": "host2", "ips": 262144, "reachable": True},
            {"peer": HOST1, "nickname": "host1", "ips": 524288, "reachable": True},
            {"peer": HOST3, "nickname": "host3", "ips": 262144, "reachable": False},
        ],
    }


def _status() -> Status:
    return {"version": "2.8.1", "router": _router(), "ipam": _ipam()}


# --- weave status -------------------------------------------------------------------------


def test_status_full_page() -> None:
    expected = (
        "\n"
        "        Version: 2.8.1 (version check update disabled)\n"
        "\n"
        "        Service: router\n"
        "       Protocol: weave 1..2\n"
        "           Name: ce:31:e0:06:45:1a(host1)\n"
        "     Encryption: enabled\n"
        "  PeerDiscovery: enabled\n"
        "        Targets: 3\n"
        "    Connections: 5 (1 established, 1 pending, 1 retrying, 1 failed, 1 connecting)\n"
        "          Peers: 3 (with 3 established, 1 pending connections)\n"
        " TrustedSubnets: none\n"
        "\n"
        "        Service: ipam\n"
        "         Status: ready\n"
        "          Range: 10.32.0.0/12\n"
        "  DefaultSubnet: 10.32.0.0/12\n"
        "\n"
    )
    assert format_status(_status()) == expected


def test_status_router_only_alone_fresh_peer() -> None:
    # A freshly launched lone peer: no counts in parentheses at all (the template's
    # {{with}} drops them), min == max protocol prints a single version.
    status: Status = {
        "version": "2.8.1",
        "version_check": "up to date; next check at 2026/11/28 10:00:00",
        "router": _router(
            protocol_min_version=2,
            encryption=False,
            peer_discovery=False,
            targets=[],
            connections=[],
            peers=[
                {"name": HOST1, "nickname": "host1", "uid": "1", "version": 1, "connections": []}
            ],
            trusted_subnets=["10.0.0.0/8", "192.168.0.0/16"],
        ),
    }
    expected = (
        "\n"
        "        Version: 2.8.1 (up to date; next check at 2026/11/28 10:00:00)\n"
        "\n"
        "        Service: router\n"
        "       Protocol: weave 2\n"
        "           Name: ce:31:e0:06:45:1a(host1)\n"
        "     Encryption: disabled\n"
        "  PeerDiscovery: disabled\n"
        "        Targets: 0\n"
        "    Connections: 0\n"
        "          Peers: 1\n"
        " TrustedSubnets: 10.0.0.0/8, 192.168.0.0/16\n"
        "\n"
    )
    assert format_status(status) == expected


@pytest.mark.parametrize(
    ("states", "line"),
    [
        # failed listed first: the count still comes out established first
        (["failed", "established"], "Connections: 2 (1 established, 1 failed)"),
        (
            ["failed", "established", "failed", "established", "established"],
            "Connections: 5 (3 established, 2 failed)",
        ),
        # pending and retrying are empty and skipped; connecting comes last
        (
            ["connecting", "failed", "established"],
            "Connections: 3 (1 established, 1 failed, 1 connecting)",
        ),
        (
            ["connecting", "retrying", "pending"],
            "Connections: 3 (1 pending, 1 retrying, 1 connecting)",
        ),
        ([], "Connections: 0"),
    ],
)
def test_status_counts_skip_empty_states_in_fixed_order(states: list[str], line: str) -> None:
    by_state = {conn["state"]: conn for conn in _connections()}
    router = _router(connections=[by_state[state] for state in states])
    text = format_status({"version": "2.8.1", "router": router})
    shown = [row.strip() for row in text.splitlines() if row.strip().startswith("Connections:")]
    assert shown == [line]


def test_status_dns_block() -> None:
    status = _status()
    status["dns"] = {
        "domain": "weave.local.",
        "upstream": ["8.8.8.8", "8.8.4.4"],
        "ttl": 1,
        "entries": [
            {
                "hostname": "one.weave.local.",
                "address": "10.32.0.1",
                "container_id": "eebd81120ee4" + "0" * 52,
                "origin": HOST1,
            }
        ],
    }
    assert format_status(status).endswith(
        "  DefaultSubnet: 10.32.0.0/12\n"
        "\n"
        "        Service: dns\n"
        "         Domain: weave.local.\n"
        "       Upstream: 8.8.8.8, 8.8.4.4\n"
        "            TTL: 1\n"
        "        Entries: 1\n"
        "\n"
    )


def test_status_grep_for_version_check() -> None:
    # test/140_weave_local_test.sh: status | grep 'version check update disabled'
    assert "version check update disabled" in format_status(_status())


# --- weave status connections -------------------------------------------------------------


def test_connections_all_states() -> None:
    expected = (
        "<- 192.168.48.12:33866   established unencrypted fastdp 7e:21:4a:70:2f:45(host2) "
        "mtu=1376\n"
        "<- 192.168.48.13:60773   pending     encrypted   sleeve 7e:ae:cd:d5:23:8d(host3) "
        "encrypted=truemtu=1438\n"
        "-> 192.168.48.14:6783    retrying    dial tcp4 192.168.48.14:6783: no route to host \n"
        "-> 192.168.48.15:6783    failed      dial tcp4 192.168.48.15:6783: no route to host, "
        "retry: 2026-11-27 23:41:02 \n"
        "-> 192.168.48.16:6783    connecting   \n"  # 10 chars + 1 pad + 2 separators
    )
    assert format_connections(_status()) == expected


def test_connections_without_password_have_no_encryption_column() -> None:
    conn = _connections()[0]
    conn["attrs"] = {"name": "fastdp"}
    del conn["overlay"]
    status: Status = {"version": "2.8.1", "router": _router(encryption=False, connections=[conn])}
    # Matches site/fastdp/viewing-connections.md: "... established fastdp a6:...(ubuntu1204)"
    assert format_connections(status) == (
        "<- 192.168.48.12:33866   established fastdp 7e:21:4a:70:2f:45(host2) mtu=1376\n"
    )


def test_connections_verbatim_info_and_unknown_overlay() -> None:
    given = _connections()[0]
    given["info"] = "custom text"
    unknown = _connections()[0]
    del unknown["overlay"]
    status: Status = {
        "version": "2.8.1",
        "router": _router(encryption=False, connections=[given, unknown]),
    }
    lines = format_connections(status).splitlines()
    assert lines[0] == "<- 192.168.48.12:33866   established custom text mtu=1376"
    assert (
        lines[1] == "<- 192.168.48.12:33866   established none   7e:21:4a:70:2f:45(host2) mtu=1376"
    )


def test_connections_script_greps() -> None:
    text = format_connections(_status())
    # test/111_fastdp_encryption_2_test.sh style
    assert re.search(r"encrypted *sleeve", text)
    # test/140_weave_local_test.sh: grep -q 'mtu=...'
    assert "mtu=1376" in text
    # status connections | tr -s ' ' | cut -d ' ' -f 2
    second_fields = [re.sub(" +", " ", line).split(" ")[1] for line in text.splitlines()]
    assert second_fields[2:] == ["192.168.48.14:6783", "192.168.48.15:6783", "192.168.48.16:6783"]


def test_connections_empty() -> None:
    assert format_connections({"version": "2.8.1", "router": _router(connections=[])}) == ""


# --- weave status peers / targets ---------------------------------------------------------


def test_peers() -> None:
    pad = " " * (37 - len("ea:2d:b2:e6:e4:f5(host2)"))
    expected = (
        "ce:31:e0:06:45:1a(host1)\n"
        f"   <- 192.168.48.12:39634   ea:2d:b2:e6:e4:f5(host2){pad} established\n"
        f"   <- 192.168.48.13:49619   ee:38:33:a7:d9:71(host3){pad} established\n"
        "ea:2d:b2:e6:e4:f5(host2)\n"
        f"   -> 192.168.48.11:6783    ce:31:e0:06:45:1a(host1){pad} established\n"
        f"   <- 192.168.48.13:58181   ee:38:33:a7:d9:71(host3){pad} pending\n"
        "ee:38:33:a7:d9:71(host3)\n"
    )
    assert len(pad) == 13
    assert format_peers(_status()) == expected


def test_targets() -> None:
    assert format_targets(_status()) == "192.168.48.14\n192.168.48.15\n192.168.48.16\n"
    assert format_targets({"version": "2.8.1", "router": _router(targets=[])}) == ""


# --- weave status ipam --------------------------------------------------------------------


def test_ipam_ourself_first_then_others() -> None:
    pad = " " * (37 - len("ce:31:e0:06:45:1a(host1)"))
    expected = (
        f"ce:31:e0:06:45:1a(host1){pad}   524288 IPs (50.0% of total) (3 active)\n"
        f"ea:2d:b2:e6:e4:f5(host2){pad}   262144 IPs (25.0% of total) \n"
        f"ee:38:33:a7:d9:71(host3){pad}   262144 IPs (25.0% of total) - unreachable!\n"
    )
    assert format_ipam(_status()) == expected


def test_ipam_percentage_is_zero_padded_to_four() -> None:
    ipam = _ipam()
    ipam["range_num_ips"] = 65536
    ipam["owners"] = [{"peer": HOST1, "nickname": "host1", "ips": 4096, "reachable": True}]
    ipam["active_ips"] = 0
    status: Status = {"version": "2.8.1", "router": _router(), "ipam": ipam}
    # 4096/65536 = 6.25% -> Go "%04.1f" -> "06.2" (round-half-even on the exact binary value)
    assert format_ipam(status).endswith("     4096 IPs (06.2% of total) (0 active)\n")


def test_ipam_absent_or_unowned() -> None:
    assert format_ipam({"version": "2.8.1", "router": _router()}) == ""
    ipam = _ipam()
    del ipam["owners"]
    assert format_ipam({"version": "2.8.1", "router": _router(), "ipam": ipam}) == ""


# --- weave status dns ---------------------------------------------------------------------


def test_dns_entries() -> None:
    status = _status()
    status["dns"] = {
        "domain": "weave.local.",
        "upstream": [],
        "ttl": 1,
        "entries": [
            {
                "hostname": "one.weave.local.",
                "address": "10.32.0.1",
                "container_id": "eebd81120ee4a1b2c3d4",
                "origin": "4a:0f:f6:ec:1c:93",
            },
            {
                "hostname": "web.example.com.",
                "address": "10.43.255.255",
                "container_id": "weave:extern",
                "origin": "66:c4:47:c6:65:bf",
            },
            {
                "hostname": "x.weave.local.",
                "address": "10.32.0.3",
                "container_id": "abc",
                "origin": "4a:0f:f6:ec:1c:93",
            },
        ],
    }
    # Sample in site/troubleshooting.md: "one          10.32.0.1       eebd81120ee4 4a:..."
    assert format_dns(status) == (
        "one          10.32.0.1       eebd81120ee4 4a:0f:f6:ec:1c:93\n"
        "web.example.com. 10.43.255.255   weave:extern 66:c4:47:c6:65:bf\n"
        "x            10.32.0.3                abc 4a:0f:f6:ec:1c:93\n"
    )
    assert format_dns(_status()) == ""


# --- weave ps -----------------------------------------------------------------------------


def test_ps() -> None:
    expose: Attachment = {"container": "", "mac": "7a:c4:8b:a1:e6:ad", "cidrs": ["10.2.5.2/24"]}
    attachments: list[Attachment] = [
        {"container": "b07565b06c53" + "f" * 52, "mac": "ae:e3:07:9c:8c:d4", "cidrs": []},
        {"container": "5245643870f1", "mac": "ce:15:34:a9:b5:6d", "cidrs": ["10.2.5.1/24"]},
        {
            "container": "caa1d4ee2570aa",
            "mac": "ba:8c:b9:dc:e1:c9",
            "cidrs": ["10.2.1.1/24", "10.2.2.1/24"],
        },
        {"container": "netns:red", "mac": "ee:00:00:00:00:01", "cidrs": ["10.2.9.9/24"]},
    ]
    # site/troubleshooting.md "Listing Attached Containers"
    assert format_ps(attachments, expose) == (
        "weave:expose 7a:c4:8b:a1:e6:ad 10.2.5.2/24\n"
        "b07565b06c53 ae:e3:07:9c:8c:d4\n"
        "5245643870f1 ce:15:34:a9:b5:6d 10.2.5.1/24\n"
        "caa1d4ee2570 ba:8c:b9:dc:e1:c9 10.2.1.1/24 10.2.2.1/24\n"
        "netns:red ee:00:00:00:00:01 10.2.9.9/24\n"
    )


def test_ps_no_bridge_and_unexposed_bridge() -> None:
    assert format_ps([], None) == ""
    bridge: Attachment = {"container": "weave:expose", "mac": "7a:c4:8b:a1:e6:ad", "cidrs": []}
    # An unexposed bridge still gets its line, without a trailing blank.
    assert format_ps([], bridge) == "weave:expose 7a:c4:8b:a1:e6:ad\n"
