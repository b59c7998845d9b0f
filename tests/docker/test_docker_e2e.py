"""End to end with real Docker engines: two hosts, the router as a container, the proxy.

Every `docker` call here goes through the weave proxy (`host.docker`) unless it is
`host.engine`, which talks to the engine directly to observe what happened.  The tests
share one two-host mesh per module and so use distinct container names and addresses.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from docker_hosts import DockerMesh
from helpers import wait_until

pytestmark = pytest.mark.docker

WEB = "10.128.1.10"
CLIENT = "10.128.2.10"


def _run_d(mesh: DockerMesh, host: int, name: str, cidr: str, *cmd: str) -> None:
    h = mesh.hosts[host - 1]
    env = ["-e", f"WEAVE_CIDR={cidr}"] if cidr else []
    h.docker("run", "-d", "--name", name, *env, mesh.base, *cmd)


def _attachments(mesh: DockerMesh, host: int) -> dict[str, list[str]]:
    out = mesh.hosts[host - 1].sh(
        'python3 -c "import urllib.request as u; '
        "print(u.urlopen('http://127.0.0.1:6784/attachments').read().decode())\""
    )
    doc = json.loads(out.stdout)
    return {a["container"]: a["cidrs"] for a in doc["attachments"]}


def test_router_runs_as_a_container(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    info = json.loads(h1.engine("inspect", "weave").stdout)[0]
    assert info["State"]["Running"]
    host_config = info["HostConfig"]
    assert host_config["NetworkMode"] == "host"
    assert host_config["PidMode"] == "host"
    assert not host_config["Privileged"]
    assert {"NET_ADMIN", "SYS_ADMIN"} <= {c.removeprefix("CAP_") for c in host_config["CapAdd"]}
    assert host_config["RestartPolicy"]["Name"] == "always"
    assert "Name: " in h1.weave("status")
    env = h1.weave("proxy-env").strip()
    assert env.startswith("export DOCKER_HOST=tcp://127.0.0.1:12375 ORIG_DOCKER_HOST=")
    assert h1.weave("env").strip() == env
    restore = h1.sh('eval "$(weave proxy-env)"; weave proxy-env --restore').stdout.strip()
    assert restore == f"export DOCKER_HOST={h1.dockerd.url}; unset ORIG_DOCKER_HOST"


def test_ethwe_is_there_before_the_command_starts(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    script = (
        'eval "$(weave proxy-env)" && docker run --rm -e WEAVE_CIDR=10.128.1.3/10 '
        f"{docker_mesh.base} ip -4 -o addr show dev ethwe"
    )
    out = h1.sh(script).stdout
    assert "10.128.1.3/10" in out
    none = h1.docker(
        "run", "--rm", "-e", "WEAVE_CIDR=none", docker_mesh.base, "ls", "/sys/class/net"
    )
    assert none.stdout.split() == ["lo"]


def test_cross_host_ping_and_http(docker_mesh: DockerMesh) -> None:
    _run_d(docker_mesh, 1, "web", f"{WEB}/10", "python3", "-m", "http.server", "8080")
    _run_d(docker_mesh, 2, "client", f"{CLIENT}/10", "sleep", "infinity")
    h2 = docker_mesh.hosts[1]
    wait_until(
        lambda: h2.engine("exec", "client", "ping", "-c1", "-W1", WEB, check=False).returncode == 0,
        30,
        "client on h2 pinging web on h1",
    )
    fetch = f"import urllib.request as u; print(u.urlopen('http://{WEB}:8080/', timeout=5).status)"
    out = wait_until(
        lambda: h2.engine("exec", "client", "python3", "-c", fetch, check=False).stdout.strip(),
        20,
        "an HTTP answer from web",
    )
    assert out == "200"


def test_restart_keeps_the_address(docker_mesh: DockerMesh) -> None:
    h1, h2 = docker_mesh.hosts
    _run_d(docker_mesh, 1, "keeper", "10.128.1.11/10", "sleep", "infinity")
    assert h1.ethwe_cidrs("keeper") == ["10.128.1.11/10"]
    h1.docker("restart", "-t", "1", "keeper")
    assert h1.ethwe_cidrs("keeper") == ["10.128.1.11/10"]  # the wrapper waited for it
    h1.engine("restart", "-t", "1", "keeper")  # not through the proxy: the events re-attach
    wait_until(lambda: h1.ethwe_cidrs("keeper") == ["10.128.1.11/10"], 20, "re-attach")
    if "client" in h2.engine("ps", "--format", "{{.Names}}").stdout:
        wait_until(
            lambda: (
                h2.engine(
                    "exec", "client", "ping", "-c1", "-W1", "10.128.1.11", check=False
                ).returncode
                == 0
            ),
            20,
            "h2 reaching the restarted container",
        )


def test_rm_frees_the_address(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    _run_d(docker_mesh, 1, "doomed", "10.128.1.12/10", "sleep", "infinity")
    short = h1.engine("inspect", "-f", "{{.Id}}", "doomed").stdout.strip()[:12]
    wait_until(lambda: short in _attachments(docker_mesh, 1), 10, "the attachment record")
    h1.docker("rm", "-f", "doomed")
    wait_until(lambda: short not in _attachments(docker_mesh, 1), 20, "the record to go")
    # the address is free again: another container can take it
    _run_d(docker_mesh, 1, "heir", "10.128.1.12/10", "sleep", "infinity")
    assert h1.ethwe_cidrs("heir") == ["10.128.1.12/10"]
    h1.docker("rm", "-f", "heir")


def test_streams_pass_through_unchanged(docker_mesh: DockerMesh) -> None:
    h1 = docker_mesh.hosts[0]
    text = "".join(f"line {i} {'x' * (i % 70)}\n" for i in range(2000))
    out = h1.docker(
        "run", "-i", "--rm", "-e", "WEAVE_CIDR=10.128.1.13/10", docker_mesh.base, "cat", input=text
    )
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
        "10.128.1.14/10",
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
    echo = h1.docker(
        "exec",
        "-i",
        "keeper" if _running(h1, "keeper") else "web",
        "cat",
        input="round trip\n",
        check=False,
    )
    if echo.returncode == 0:
        assert echo.stdout == "round trip\n"
    h1.docker("rm", "-f", "talker")


def _running(host: object, name: str) -> bool:
    out = host.engine("ps", "--format", "{{.Names}}").stdout  # type: ignore[attr-defined]
    return name in out.split()


def test_router_restart_finds_containers_again(docker_mesh: DockerMesh) -> None:
    h1, h2 = docker_mesh.hosts
    _run_d(docker_mesh, 1, "survivor", "10.128.1.15/10", "sleep", "infinity")
    _run_d(docker_mesh, 1, "sleeper", "10.128.1.16/10", "sleep", "infinity")
    h1.weave("stop")
    assert h1.engine("ps", "-a", "-q", "-f", "name=^weave$").stdout.strip() == ""
    h1.engine("restart", "-t", "1", "sleeper")  # restarted while the router is away
    docker_mesh.launch(h1, "--container")
    docker_mesh.wait_established()
    wait_until(lambda: h1.ethwe_cidrs("sleeper") == ["10.128.1.16/10"], 30, "sleeper re-attached")
    ps = h1.weave("ps")
    for name in ("survivor", "sleeper"):
        short = h1.engine("inspect", "-f", "{{.Id}}", name).stdout.strip()[:12]
        assert short in ps
    if _running(h2, "client"):
        wait_until(
            lambda: (
                h2.engine(
                    "exec", "client", "ping", "-c1", "-W1", "10.128.1.15", check=False
                ).returncode
                == 0
            ),
            30,
            "h2 reaching survivor after the router restart",
        )
