"""Docker lifecycle bookkeeping with a fake engine client: no Docker needed.

Drives `DockerContainers` (router/docker_containers.py) with a stand-in for the Docker
SDK's APIClient and a minimal router: records of stopped containers are released after
the grace period, a destroyed container's record at once, and a router (re)start
releases records of containers that no longer exist.  IPAM release goes through the
router's own API route `DELETE /ip/<id>`, recorded here.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors
import pytest
from pyweave.router.attachments import AttachmentStore
from pyweave.router.docker_containers import DockerConfig, DockerContainers
from pyweave.router.io.api import ApiServer

GONE = "aaaaaaaaaaaa"
STOPPED = "bbbbbbbbbbbb"
RUNNING = "cccccccccccc"


class FakeClient:
    states: dict[str, dict[str, Any]] = {}

    def __init__(self, **kwargs: Any) -> None:
        pass

    def inspect_container(self, container: str) -> dict[str, Any]:
        for cid, state in self.states.items():
            if cid.startswith(container):
                return {"Id": cid, "State": state, "Config": {}, "HostConfig": {}}
        raise docker.errors.NotFound("no such container")

    def containers(self, **kwargs: Any) -> list[dict[str, Any]]:
        return []

    def events(self, **kwargs: Any) -> list[dict[str, Any]]:
        return []


@dataclass
class FakeConfig:
    state_dir: str
    name: int = 0x0A0B0C0D0E0F
    api_host: str = "127.0.0.1"
    api_port: int = 6784


@dataclass
class FakeRouter:
    config: FakeConfig
    attachments: AttachmentStore
    api: ApiServer = field(default_factory=ApiServer)
    freed: list[str] = field(default_factory=list)

    def loop_time(self) -> float:
        return asyncio.get_running_loop().time()


def _record(cid: str) -> dict[str, Any]:
    return {
        "container": cid,
        "mac": "aa:bb:cc:dd:ee:ff",
        "cidrs": ["10.128.0.1/10"],
        "netns": f"docker:{cid}{'0' * 52}",
    }


async def _scenario(state_dir: str) -> None:
    router = FakeRouter(FakeConfig(state_dir), AttachmentStore(f"{state_dir}/a.json"))

    async def delete_ip(rest: str, body: object) -> tuple[int, object]:
        router.freed.append(rest)
        return 200, {"released": []}

    router.api.route("DELETE", "/ip", delete_ip)
    for cid in (GONE, STOPPED, RUNNING):
        router.attachments.put(_record(cid))  # type: ignore[arg-type]
    FakeClient.states = {
        STOPPED + "0" * 52: {"Running": False, "Pid": 0},
        RUNNING + "0" * 52: {"Running": True, "Pid": 1},  # pid 1 has no ethwe: re-attach
    }
    containers = DockerContainers(router, DockerConfig("unix:///nonexistent", "", 0.3))  # type: ignore[arg-type]
    attached: list[tuple[str, list[str]]] = []

    async def fake_attach(short: str, addresses: list[str]) -> str | None:
        attached.append((short, addresses))
        return None

    containers._run_attach = fake_attach  # type: ignore[method-assign]
    await containers.start()
    try:
        await _until(lambda: GONE in router.freed and bool(attached))  # reconciled
        assert GONE not in router.attachments.items
        assert attached == [(RUNNING, ["10.128.0.1/10"])]  # re-attached, same address
        assert STOPPED in router.attachments.items  # dead, but within the grace period
        await _until(lambda: STOPPED in router.freed)  # the grace period (0.3 s) is over
        assert STOPPED not in router.attachments.items
        containers._on_event({"Action": "destroy", "id": RUNNING + "0" * 52})
        await _until(lambda: RUNNING in router.freed)
        assert RUNNING not in router.attachments.items
    finally:
        await containers.stop()


async def _until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll `condition` every 20 ms; fail after `timeout` seconds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.02)


def test_stopped_destroyed_and_vanished_containers_are_released(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(docker, "APIClient", FakeClient)
    with tempfile.TemporaryDirectory() as tmp:
        asyncio.run(_scenario(tmp))
