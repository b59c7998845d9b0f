"""Simulated hosts with a dockerd each, as the Docker tests drive them.

Theory of operation: `DockerHost` is host `h<i>` of a `weave lab` plus its `Dockerd`.
`sh` runs a shell command inside the host namespace with the real engine as DOCKER_HOST,
WEAVE_STATE_DIR set to the host's state dir and this interpreter's `weave` on PATH;
`docker` runs the docker CLI *through the weave proxy* (DOCKER_HOST as `weave proxy-env`
printed it), `engine` against the engine itself.  `DockerMesh` is the set of hosts with
the base image's tag, and knows how to launch a host's router (h2.. join h1).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

from docker_env import Dockerd
from helpers import Lab, wait_until

BIN = str(Path(sys.executable).parent)


class DockerHost:
    """Host `h<i>` of a lab, with its dockerd."""

    def __init__(self, lab: Lab, index: int, dockerd: Dockerd) -> None:
        self.lab = lab
        self.index = index
        self.name = f"h{index}"
        self.netns = lab.netns(self.name)
        self.dockerd = dockerd
        self.proxy_host = ""

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.pop("ORIG_DOCKER_HOST", None)
        env["DOCKER_HOST"] = self.dockerd.url
        env["WEAVE_STATE_DIR"] = str(self.lab.state_dir(self.index))
        env["PATH"] = f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}"
        return env

    def sh(
        self, script: str, timeout: float = 60, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["ip", "netns", "exec", self.netns, "sh", "-c", script],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            input=input,
        )
        if check and result.returncode != 0:
            raise AssertionError(
                f"[{self.name}] `{script}` exited {result.returncode}\n"
                f"--- stdout\n{result.stdout}--- stderr\n{result.stderr}"
            )
        return result

    def weave(self, *args: str, check: bool = True, timeout: float = 60) -> str:
        return self.sh(shlex.join(["weave", *args]), timeout=timeout, check=check).stdout

    def docker(
        self, *args: str, check: bool = True, timeout: float = 60, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI through the weave proxy."""
        if not self.proxy_host:
            line = self.weave("proxy-env").strip()
            self.proxy_host = line.split()[1].removeprefix("DOCKER_HOST=")
        script = f"DOCKER_HOST={shlex.quote(self.proxy_host)} exec {shlex.join(['docker', *args])}"
        return self.sh(script, timeout=timeout, check=check, input=input)

    def engine(
        self, *args: str, check: bool = True, timeout: float = 60
    ) -> subprocess.CompletedProcess[str]:
        """The docker CLI against the engine itself, bypassing the proxy."""
        return self.sh(shlex.join(["docker", *args]), timeout=timeout, check=check)

    def ethwe_cidrs(self, container: str) -> list[str]:
        out = self.engine("exec", container, "ip", "-4", "-o", "addr", "show", "dev", "ethwe")
        return [line.split()[3] for line in out.stdout.splitlines() if " inet " in line]


class DockerMesh:
    def __init__(self, lab: Lab, hosts: list[DockerHost], base: str) -> None:
        self.lab = lab
        self.hosts = hosts
        self.base = base

    def launch(self, host: DockerHost, *extra: str, peers: list[str] | None = None) -> str:
        if peers is None:
            peers = [] if host.index == 1 else [self.lab.underlay_addr(1)]
        return host.weave("launch", "--nickname", host.name, *extra, *peers).strip()

    def relaunch(self, host: DockerHost, *extra: str) -> str:
        """`weave stop` whatever router runs on `host`, `launch` it with `extra` and the
        other hosts as peers (their retry back-off grows with each outage, so the new
        router dials them), and wait for h1 and h2 to be connected again."""
        host.weave("stop", check=False)
        others = [self.lab.underlay_addr(h.index) for h in self.hosts if h is not host]
        name = self.launch(host, *extra, peers=others)
        self.wait_established()
        return name

    def wait_established(self) -> None:
        wait_until(
            lambda: "established" in self.hosts[0].weave("status", "connections", check=False),
            30,
            "h1 and h2 establishing their connection",
        )
