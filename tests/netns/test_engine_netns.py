"""`weave launch` asks whether the Docker engine behind a unix socket shares our network
namespace (SO_PEERCRED gives the engine's pid, its /proc/PID/ns/net is compared with ours).

Theory of operation: no dockerd is needed for the question itself: a unix socket served by
a thread of this process is an engine in our namespace; one served by a Python process
started with `unshare --net` (a fresh, anonymous namespace, ended by its PID) is an engine
elsewhere, as the machine's own dockerd is for a simulated host.
"""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from pyweave.cli.docker_launch import engine_shares_our_netns

pytestmark = [pytest.mark.netns, pytest.mark.timeout(60)]

SERVE = """
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.bind(sys.argv[1]); s.listen(4)
while True:
    s.accept()[0].close()
"""


def test_an_engine_in_our_namespace_shares_it(tmp_path: Path) -> None:
    path = str(tmp_path / "ours.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(path)
    server.listen(4)
    try:  # (connect needs no accept: the backlog holds it, with the listener's credentials)
        assert engine_shares_our_netns(f"unix://{path}")
    finally:
        server.close()


def test_an_engine_in_another_namespace_does_not(tmp_path: Path) -> None:
    path = tmp_path / "theirs.sock"
    engine = subprocess.Popen(["unshare", "--net", sys.executable, "-c", SERVE, str(path)])
    try:
        deadline = time.monotonic() + 20
        while not path.exists():
            assert engine.poll() is None, "the server in a new namespace exited"
            assert time.monotonic() < deadline, "the server in a new namespace never listened"
            time.sleep(0.05)
        assert not engine_shares_our_netns(f"unix://{path}")
    finally:
        engine.kill()
        engine.wait()


def test_an_engine_that_is_not_there_is_not_ours(tmp_path: Path) -> None:
    assert not engine_shares_our_netns(f"unix://{tmp_path / 'nobody.sock'}")


def test_a_tcp_engine_is_taken_to_be_local() -> None:
    assert engine_shares_our_netns("tcp://192.0.2.1:2375")
