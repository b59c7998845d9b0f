"""Fixtures for the Docker tests: cached images, and simulated hosts each with a dockerd.

Theory of operation: `docker_images` (session) makes sure the base and router images are
built and cached (tests/docker/docker_env.py) and returns the tar to load.  `docker_mesh`
(module) builds a two-host lab without routers (`weave lab up --no-launch`, namespaces
`h10d<n>-h1`, `-h2` on the TEST-NET underlay 192.0.2.0/24), starts one dockerd inside each
host, loads the images, and runs plain `weave launch` on both (h2 joining h1) — no
`--container`: with DOCKER_HOST at the host's own dockerd, the router must become the
container `weave` by itself (tests/docker/test_docker_e2e.py checks that it did).
Tests talk to a host through `DockerHost`: `sh` runs a shell command inside the host with
the real engine as DOCKER_HOST, `docker` runs the docker CLI *through the weave proxy*
(DOCKER_HOST as `weave proxy-env` printed it), `engine` runs it against the engine itself.
Teardown stops the routers, removes every container, stops each dockerd by its PID,
removes the lab and fails if any of its namespaces remain.  Tests skip, with the reason,
only when no dockerd can run here — and fail instead when PYWEAVE_REQUIRE_DOCKER=1
(tests/run-all.sh as root), so a broken setup never passes as skipped.
"""

from __future__ import annotations

import itertools
import os
import sys
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "netns"))

from docker_env import Dockerd, dockerd_unavailable_reason, ensure_images
from docker_hosts import DockerHost, DockerMesh
from helpers import Lab, netns_unavailable_reason

_counter = itertools.count(1)
PREFIX = os.environ.get("PYWEAVE_DOCKER_TEST_PREFIX", "h10")


@pytest.fixture(scope="session")
def docker_images() -> tuple[Path, str]:
    required = os.environ.get("PYWEAVE_REQUIRE_DOCKER") == "1"  # CI: never skip silently
    give_up = pytest.fail if required else pytest.skip
    reason = dockerd_unavailable_reason() or netns_unavailable_reason()
    if reason:
        give_up(reason)
    probe = Dockerd(f"{PREFIX}probe", None)
    try:
        probe.start()
    except RuntimeError as exc:
        give_up(f"dockerd cannot start here: {exc}")
    finally:
        probe.stop()
    return ensure_images()


@pytest.fixture(scope="module")
def docker_mesh(docker_images: tuple[Path, str]) -> Iterator[DockerMesh]:
    tar, base = docker_images
    lab = Lab(f"{PREFIX}d{next(_counter)}-", 2, 0, None)
    lab.down()
    hosts: list[DockerHost] = []
    try:
        lab.up(launch=False)
        for i in (1, 2):
            hosts.append(DockerHost(lab, i, Dockerd(f"{lab.prefix}h{i}", lab.netns(f"h{i}"))))
        _on_each(hosts, lambda h: (h.dockerd.start(), h.dockerd.load(tar)))
        mesh = DockerMesh(lab, hosts, base)
        for host in hosts:
            mesh.launch(host)  # plain `weave launch`: Docker answers, so a container
        mesh.wait_established()
        yield mesh
    finally:
        _on_each(hosts, _tear_down)
        lab.down()
        assert not lab.namespaces(), f"namespaces left behind: {lab.namespaces()}"


def _tear_down(host: DockerHost) -> None:
    try:
        host.weave("stop", check=False, timeout=60)
    finally:
        host.dockerd.stop()


def _on_each(hosts: list[DockerHost], action: Callable[[DockerHost], object]) -> None:
    """Run `action` on every host at once (loading images and removing data roots take
    seconds each); re-raise the first failure after all have finished."""
    with ThreadPoolExecutor(max_workers=len(hosts) or 1) as pool:
        futures = [pool.submit(action, host) for host in hosts]
    for future in futures:
        future.result()
