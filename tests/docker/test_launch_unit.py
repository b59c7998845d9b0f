"""`weave launch` with Docker, the parts that need no engine: image name, engine URL, flags.

The image defaults to `pyweave/weave:<version>` and `WEAVE_IMAGE` overrides it; the CLI
talks to the engine itself (ORIG_DOCKER_HOST after `eval $(weave proxy-env)`), never to
the proxy — also when `weave attach`/`detach`/`ps` resolve a Docker container; and
`--container-release-delay` reaches the router.
"""

from __future__ import annotations

from typing import Any

import docker
import pytest
from pyweave.cli import docker_launch, netns
from pyweave.cli.errors import CliError
from pyweave.cli.main import _router_args, _validate_launch, build_parser
from pyweave.router.daemon import parse_args as parse_router_args

ENGINE = "unix:///run/engine.sock"
PROXY = "tcp://127.0.0.1:12375"


def test_default_image_is_pyweave_weave_at_the_version(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("WEAVE_IMAGE", raising=False)
    assert docker_launch.image_name() == f"pyweave/weave:{docker_launch.version()}"
    assert docker_launch.version().count(".") >= 2  # the package's version, e.g. 0.1.0
    monkeypatch.setenv("WEAVE_IMAGE", "example/weave:dev")
    assert docker_launch.image_name() == "example/weave:dev"


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, docker_launch.DEFAULT_SOCKET),
        ({"DOCKER_HOST": ENGINE}, ENGINE),
        ({"DOCKER_HOST": PROXY, "ORIG_DOCKER_HOST": ENGINE}, ENGINE),
        ({"DOCKER_HOST": PROXY, "ORIG_DOCKER_HOST": ""}, docker_launch.DEFAULT_SOCKET),
    ],
)
def test_engine_url_is_never_the_proxy(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], expected: str
) -> None:
    for name in ("DOCKER_HOST", "ORIG_DOCKER_HOST"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert docker_launch.engine_url() == expected


def test_container_lookup_uses_the_engine_not_the_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """After `eval $(weave proxy-env)`, `weave attach NAME` asks the engine itself."""
    seen: list[str] = []

    class FakeApi:
        def inspect_container(self, ref: str) -> dict[str, Any]:
            return {"Id": "f" * 64, "State": {"Pid": 4242, "Running": True}}

    class FakeClient:
        api = FakeApi()

    def from_env(environment: dict[str, str] | None = None, **kwargs: Any) -> FakeClient:
        seen.append((environment or {}).get("DOCKER_HOST", ""))
        return FakeClient()

    monkeypatch.setattr(docker, "from_env", from_env)
    monkeypatch.setenv("DOCKER_HOST", PROXY)
    monkeypatch.setenv("ORIG_DOCKER_HOST", ENGINE)
    container = netns.resolve("web")
    assert seen == [ENGINE]
    assert container == netns.Container("f" * 12, f"docker:{'f' * 64}", "/proc/4242/ns/net")


def test_release_delay_reaches_the_router() -> None:
    args = build_parser().parse_args(["launch", "--container-release-delay", "2", "192.0.2.1"])
    argv = _router_args(args)
    i = argv.index("--container-release-delay")
    assert argv[i + 1] == "2.0" and argv[-2:] == ["--", "192.0.2.1"]
    router = parse_router_args(["--state-dir", "/nonexistent", *argv])
    assert router.container_release_delay == 2.0 and router.peers == ["192.0.2.1"]
    default = _router_args(build_parser().parse_args(["launch"]))
    assert default[default.index("--container-release-delay") + 1] == "30.0"
    with pytest.raises(CliError, match="invalid --container-release-delay"):
        _validate_launch(build_parser().parse_args(["launch", "--container-release-delay=-1"]))
