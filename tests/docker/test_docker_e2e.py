"""End to end with real Docker engines: two hosts, the router as a container, the proxy.

Every `docker` call here goes through the weave proxy (`host.docker`) unless it is
`host.engine`, which talks to the engine directly to observe what happened.  The tests
share one two-host mesh per module and so use distinct container names and addresses.
The mesh's routers were started by plain `weave launch` (conftest.py); tests that launch
h1 differently (`--local`, another image, proxy address or release delay) put it back as
it was before they end.  `client`, a container on h2, is there for the whole module, so
every cross-host check runs.
"""

from __future__ import annotations

import hashlib
import ipaddress
import json
from collections.abc import Iterator

import pytest
from docker_hosts import DockerMesh
from helpers import wait_until
from pyweave.cli import docker_launch

pytestmark = pytest.mark.docker

RANGE = ipaddress.ip_network("10.128.0.0/10")  # weave launch's default --ipalloc-range
# explicit WEAVE_CIDR addresses lie outside the IPAM range, so no peer's range is claimed
MISSING_IMAGE = "pyweave/weave:no-such-tag"


def _run_d(mesh: DockerMesh, host: int, name: str, cidr: str, *cmd: str) -> str:
    """`docker run -d` through the proxy (cidr "" = IPAM); the container's address."""
    h = mesh.hosts[host - 1]
    env = ["-e", f"WEAVE_CIDR={cidr}"] if cidr else []
    h.docker("run", "-d", "--name", name, *env, mesh.base, *cmd)
    cidrs = h.ethwe_cidrs(name)  # no waiting: the proxy answered after attaching
    assert len(cidrs) == 1, cidrs
    return cidrs[0]


def _in_range(cidr: str) -> bool:
    return ipaddress.ip_interface(cidr).ip in RANGE


def _attachments(mesh: DockerMesh, host: int) -> dict[str, list[str]]:
    out = mesh.hosts[host - 1].sh(
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:6784/attachments').read().decode())\""
    )
    doc = json.loads(out.stdout)
    return {a["container"]: a["cidrs"] for a in doc["attachments"]}


@pytest.fixture(scope="module")
def client(docker_mesh: DockerMesh) -> Iterator[str]:
    """The container `client` on h2 (IPAM address), for the module's cross-host checks."""
    yield _run_d(docker_mesh, 2, "client", "", "sleep", "infinity")
    docker_mesh.hosts[1].engine("rm", "-f", "client", check=False)


def _h2_reaches(mesh: DockerMesh, cidr: str, what: str, timeout: float = 30) -> None:
    ip = cidr.split("/")[0]
    h2 = mesh.hosts[1]
    wait_until(
        lambda: h2.engine("exec", "client", "ping", "-c1", "-W1", ip, check=False).returncode == 0,
        timeout,
        what,
    )


def _no_router_container(mesh: DockerMesh, host: int = 1) -> bool:
    return mesh.hosts[host - 1].engine("ps", "-a", "-q", "-f", "name=^weave$").stdout.strip() == ""


def test_router_runs_as_a_container(docker_mesh: DockerMesh) -> None:
    """Plain `weave launch` (no --container), DOCKER_HOST at the host's dockerd: the
    router runs as the container `weave` on both hosts, from the default image."""
    for host in docker_mesh.hosts:
        info = json.loads(host.engine("inspect", "weave").stdout)[0]
        assert info["State"]["Running"]
        assert info["Config"]["Image"] == docker_launch.image_name()
        host_config = info["HostConfig"]
        assert host_config["NetworkMode"] == "host"
        assert host_config["PidMode"] == "host"
        assert not host_config["Privileged"]
        caps = {c.removeprefix("CAP_") for c in host_config["CapAdd"]}
        assert {"NET_ADMIN", "SYS_ADMIN"} <= caps
        assert host_config["RestartPolicy"]["Name"] == "always"
        record = json.loads((host.lab.state_dir(host.index) / "launch.json").read_text())
        assert record["mode"] == "container" and record["engine"] == host.dockerd.url
        assert "Name: " in host.weave("status")
    h1 = docker_mesh.hosts[0]
    env = h1.weave("proxy-env").strip()
    assert env.startswith("export DOCKER_HOST=tcp://127.0.0.1:12375 ORIG_DOCKER_HOST=")
    assert h1.weave("env").strip() == env
    restore = h1.sh('eval "$(weave proxy-env)"; weave proxy-env --restore').stdout.strip()
    assert restore == f"export DOCKER_HOST={h1.dockerd.url}; unset ORIG_DOCKER_HOST"


def test_ethwe_is_there_before_the_command_starts(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    script = (
        'eval "$(weave proxy-env)" && docker run --rm -e WEAVE_CIDR=10.2.1.3/16 '
        f"{docker_mesh.base} ip -4 -o addr show dev ethwe"
    )
    assert "10.2.1.3/16" in h1.sh(script).stdout
    ipam = h1.docker("run", "--rm", docker_mesh.base, "ip", "-4", "-o", "addr", "show", "ethwe")
    assert ipaddress.ip_interface(ipam.stdout.split()[3]).ip in RANGE
    none = h1.docker(
        "run", "--rm", "-e", "WEAVE_CIDR=none", docker_mesh.base, "ls", "/sys/class/net"
    )
    assert none.stdout.split() == ["lo"]
    host_net = h1.docker("run", "--rm", "--network", "host", docker_mesh.base, "true")
    assert host_net.returncode == 0


def test_cross_host_ping_and_http(docker_mesh: DockerMesh, client: str) -> None:
    web = _run_d(docker_mesh, 1, "web", "", "python3", "-m", "http.server", "8080")
    assert _in_range(web) and _in_range(client) and web != client
    web_ip = web.split("/")[0]
    h2 = docker_mesh.hosts[1]
    _h2_reaches(docker_mesh, web, "client on h2 pinging web on h1")
    fetch = (
        f"import urllib.request as u; print(u.urlopen('http://{web_ip}:8080/', timeout=5).status)"
    )
    out = wait_until(
        lambda: (
            h2.engine("exec", "client", "python3", "-c", fetch, check=False).stdout.strip() == "200"
        ),
        20,
        "an HTTP 200 answer from web",
    )
    assert out


def test_restart_keeps_the_address(docker_mesh: DockerMesh, client: str) -> None:
    h1 = docker_mesh.hosts[0]
    address = _run_d(docker_mesh, 1, "keeper", "", "sleep", "infinity")
    h1.docker("restart", "-t", "1", "keeper")  # through the proxy: answered once attached
    assert h1.ethwe_cidrs("keeper") == [address]
    h1.engine("restart", "-t", "1", "keeper")  # past the proxy: the start event re-attaches
    wait_until(lambda: h1.ethwe_cidrs("keeper") == [address], 20, "keeper re-attached")
    _h2_reaches(docker_mesh, address, "h2 reaching the restarted container", 20)


def test_rm_frees_the_address(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    address = _run_d(docker_mesh, 1, "doomed", "", "sleep", "infinity")
    short = h1.engine("inspect", "-f", "{{.Id}}", "doomed").stdout.strip()[:12]
    assert short in _attachments(docker_mesh, 1)
    h1.docker("rm", "-f", "doomed")
    wait_until(lambda: short not in _attachments(docker_mesh, 1), 20, "the record to go")
    # IPAM released it: another container may claim exactly that address now
    assert _run_d(docker_mesh, 1, "heir", address, "sleep", "infinity") == address
    h1.docker("rm", "-f", "heir")


def test_streams_pass_through_unchanged(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    text = "".join(f"line {i} {'x' * (i % 70)}\n" for i in range(2000))
    out = h1.docker("run", "-i", "--rm", docker_mesh.base, "cat", input=text)
    assert out.stdout == text
    big = "import sys; sys.stdout.write(''.join(f'{i:08d}\\n' for i in range(600000)))"
    out = h1.docker("run", "--rm", "-e", "WEAVE_CIDR=none", docker_mesh.base, "python3", "-c", big)
    expected = "".join(f"{i:08d}\n" for i in range(600000))
    assert (
        hashlib.sha256(out.stdout.encode()).hexdigest()
        == hashlib.sha256(expected.encode()).hexdigest()
    )
    _run_d(
        docker_mesh,
        1,
        "talker",
        "10.2.1.14/16",
        "sh",
        "-c",
        "for i in 1 2 3; do echo out$i; echo err$i >&2; done; sleep 1",
    )
    wait_until(
        lambda: (
            h1.engine("inspect", "-f", "{{.State.Running}}", "talker").stdout.strip() == "false"
        ),
        20,
        "talker to finish",
    )
    via_proxy = h1.docker("logs", "talker")
    direct = h1.engine("logs", "talker")
    assert (via_proxy.stdout, via_proxy.stderr) == (direct.stdout, direct.stderr)
    assert via_proxy.stdout == "out1\nout2\nout3\n"
    follow = h1.docker("logs", "-f", "talker", timeout=30)
    assert follow.stdout == direct.stdout
    _run_d(docker_mesh, 1, "catbox", "10.2.1.15/16", "sleep", "infinity")
    echo = h1.docker("exec", "-i", "catbox", "cat", input=text)  # a hijacked exec stream
    assert echo.stdout == text
    tty = h1.sh(  # docker exec -it needs a terminal: script(1) gives it one
        'eval "$(weave proxy-env)"; '
        "script -qec 'docker exec -it catbox sh -c \"tty; echo $((6 * 7))\"' /dev/null"
    ).stdout
    assert "/dev/pts/" in tty and "42" in tty
    h1.docker("rm", "-f", "catbox")
    h1.docker("rm", "-f", "talker")


def test_router_restart_finds_containers_again(docker_mesh: DockerMesh, client: str) -> None:
    h1 = docker_mesh.hosts[0]
    survivor = _run_d(docker_mesh, 1, "survivor", "", "sleep", "infinity")
    sleeper = _run_d(docker_mesh, 1, "sleeper", "", "sleep", "infinity")
    h1.weave("stop")
    assert _no_router_container(docker_mesh)
    h1.engine("restart", "-t", "1", "sleeper")  # restarted while the router is away
    docker_mesh.relaunch(h1, "--container")  # (its `weave stop` finds nothing to stop)
    wait_until(lambda: h1.ethwe_cidrs("sleeper") == [sleeper], 30, "sleeper re-attached")
    ps = h1.weave("ps")
    for name in ("survivor", "sleeper"):
        short = h1.engine("inspect", "-f", "{{.Id}}", name).stdout.strip()[:12]
        assert short in ps
    _h2_reaches(docker_mesh, survivor, "h2 reaching survivor after the router restart")


def test_attach_and_detach_by_name_and_id(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    h1.docker(
        "run",
        "-d",
        "--name",
        "plain",
        "-e",
        "WEAVE_CIDR=none",
        docker_mesh.base,
        "sleep",
        "infinity",
    )
    # the CLI asks the engine (ORIG_DOCKER_HOST), never the proxy: with DOCKER_HOST at a
    # dead address, as `eval $(weave proxy-env)` would have it but with nothing there
    attach = f"DOCKER_HOST=tcp://127.0.0.1:9 ORIG_DOCKER_HOST={h1.dockerd.url} weave attach"
    assert h1.sh(f"{attach} 10.2.1.20/16 plain").stdout.strip() == "10.2.1.20"
    assert h1.ethwe_cidrs("plain") == ["10.2.1.20/16"]
    short = h1.engine("inspect", "-f", "{{.Id}}", "plain").stdout.strip()[:12]
    assert "10.2.1.20/16" in h1.sh(f'eval "$(weave proxy-env)"; weave ps {short}').stdout
    assert h1.weave("detach", short).strip() == "10.2.1.20"
    listing = h1.engine("exec", "plain", "ls", "/sys/class/net").stdout.split()
    assert listing == ["lo"]
    h1.docker("rm", "-f", "plain")


def test_local_mode_with_docker(docker_mesh: DockerMesh) -> None:
    """`--local`: a host process, still serving the proxy; `weave stop` stops it."""
    h1 = docker_mesh.hosts[0]
    h1.weave("stop")
    try:
        docker_mesh.launch(h1, "--local")
        assert _no_router_container(docker_mesh)
        assert "Name: " in h1.weave("status")
        assert _in_range(_run_d(docker_mesh, 1, "local1", "", "sleep", "infinity"))
        h1.docker("rm", "-f", "local1")
        h1.weave("stop")
        assert "not running" in h1.sh("weave status", check=False).stderr
    finally:
        docker_mesh.relaunch(h1)


def test_missing_image_and_stopping_twice(docker_mesh: DockerMesh) -> None:
    """`weave stop` twice in container mode; WEAVE_IMAGE naming a missing tag: plain
    launch warns and runs a host process, `--container` fails with one line."""
    h1 = docker_mesh.hosts[0]
    try:
        h1.weave("stop")  # the container, started by plain `weave launch`
        assert _no_router_container(docker_mesh)
        again = h1.sh("weave stop", check=False)
        assert (again.returncode, again.stderr) == (1, "weave: weave router is not running\n")
        missing = f"WEAVE_IMAGE={MISSING_IMAGE} weave launch --nickname h1"
        plain = h1.sh(missing)
        assert f"weave: image {MISSING_IMAGE} not found" in plain.stderr
        assert "running the router as a host process" in plain.stderr
        assert _no_router_container(docker_mesh)
        assert "Name: " in h1.weave("status")
        h1.weave("stop")
        forced = h1.sh(f"{missing} --container", check=False)
        assert forced.returncode == 1, forced
        assert forced.stdout == ""
        assert forced.stderr.count("\n") == 1, forced.stderr
        assert forced.stderr.startswith(f"weave: image {MISSING_IMAGE} not found"), forced.stderr
        assert _no_router_container(docker_mesh)
        assert "not running" in h1.sh("weave status", check=False).stderr
    finally:
        docker_mesh.relaunch(h1)


def test_docker_stop_frees_the_address_after_the_grace_period(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    docker_mesh.relaunch(h1, "--container", "--container-release-delay", "2")
    try:
        address = _run_d(docker_mesh, 1, "napper", "", "sleep", "infinity")
        short = h1.engine("inspect", "-f", "{{.Id}}", "napper").stdout.strip()[:12]
        h1.docker("stop", "-t", "0", "napper")
        assert short in _attachments(docker_mesh, 1)  # not at once: within the grace period
        wait_until(lambda: short not in _attachments(docker_mesh, 1), 20, "napper released")
        assert short not in h1.weave("ps")
        # IPAM released it: another container may claim exactly that address now
        assert _run_d(docker_mesh, 1, "napper2", address, "sleep", "infinity") == address
    finally:
        h1.engine("rm", "-f", "napper", "napper2", check=False)
        docker_mesh.relaunch(h1)


def test_proxy_on_a_unix_socket(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    sock = h1.lab.state_dir(1) / "proxy" / "weave.sock"
    docker_mesh.relaunch(h1, "--container", "--proxy-listen", f"unix://{sock}")
    try:
        assert sock.is_socket()  # made in the container, there on the host
        env = h1.weave("proxy-env").strip()
        assert env == f"export DOCKER_HOST=unix://{sock} ORIG_DOCKER_HOST={h1.dockerd.url}"
        run = (
            f'eval "$(weave proxy-env)" && docker run --rm {docker_mesh.base} '
            "ip -4 -o addr show dev ethwe"
        )
        assert _in_range(h1.sh(run).stdout.split()[3])
    finally:
        docker_mesh.relaunch(h1)
