"""The `weave` command: parse arguments, dispatch, print one-line errors.

Theory of operation: each sub-command is a small function that talks to the local router
(HTTP API on 127.0.0.1:6784), to the kernel (netlink for attach/detach), or to both.
Commands, flags and output formats follow Weave Net's.  Every failure — a malformed
argument included — is a `CliError`, printed as `weave: <message>` on one line with exit
status 1; argparse's multi-line usage errors are folded into the same shape.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import sys
from typing import NoReturn, cast

from pyweave.cli import api_client
from pyweave.cli.errors import CliError
from pyweave.cli.ipam_cmds import (  # IPAM
    IPAM_COMMANDS,
    add_ipam_parsers,
    ipam_router_args,
    validate_ipam_options,
)
from pyweave.cli.status_format import (
    format_connections,
    format_dns,
    format_ipam,
    format_peers,
    format_status,
    format_targets,
)
from pyweave.router.api_types import Status

STATUS_VIEWS = {
    "peers": format_peers,
    "connections": format_connections,
    "targets": format_targets,
    "ipam": format_ipam,
    "dns": format_dns,
}


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        command = self.prog.removeprefix("weave").strip()
        raise CliError(f"{command}: {message}" if command else message)


def _launch_parser(sub: argparse._SubParsersAction[Parser]) -> None:
    p = sub.add_parser("launch", help="start the router in this network namespace")
    p.add_argument("--name", default="", help="peer name (aa:bb:cc:dd:ee:ff)")
    p.add_argument("--nickname", default=socket.gethostname())
    p.add_argument("--port", type=int, default=6783)
    p.add_argument("--ipalloc-range", default="10.128.0.0/10")
    p.add_argument("--ipalloc-default-subnet", default="")  # IPAM (cli/ipam_cmds.py)
    p.add_argument("--ipalloc-init", default="")  # IPAM: consensus[=N] | seed=NAME,... | observer
    p.add_argument("--password", default=os.environ.get("WEAVE_PASSWORD"))
    p.add_argument("--no-discovery", action="store_true")
    p.add_argument("--conn-limit", type=int, default=100)
    p.add_argument("--trusted-subnets", default="")
    p.add_argument("--mtu", default=os.environ.get("WEAVE_MTU") or None)  # None: underlay
    # -- docker (cli/docker_launch.py) --
    where = p.add_mutually_exclusive_group()
    where.add_argument(
        "--local",
        action="store_const",
        dest="where",
        const="local",
        help="run the router as a host process even if Docker is there",
    )
    where.add_argument(
        "--container",
        action="store_const",
        dest="where",
        const="container",
        help="run the router as the Docker container 'weave'",
    )
    p.add_argument(
        "--proxy-listen",
        default=None,
        help="Docker API proxy address (default tcp://127.0.0.1:12375)",
    )
    p.add_argument("--no-proxy", action="store_true", help="no Docker API proxy")
    p.add_argument(
        "--container-release-delay",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="free a stopped container's addresses after this long (default 30)",
    )
    # -- end docker --
    p.add_argument("peers", nargs="*", metavar="PEER")


def build_parser() -> Parser:
    parser = Parser(prog="weave", description="pyweave: a Weave-compatible mesh overlay")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _launch_parser(sub)
    sub.add_parser("stop", help="stop the router")
    st = sub.add_parser("status", help="show the router's status")
    st.add_argument("view", nargs="?", choices=sorted(STATUS_VIEWS))
    sub.add_parser("report", help="the router's full status as JSON")
    ps = sub.add_parser("ps", help="list attached containers")
    ps.add_argument("containers", nargs="*")
    for name in ("attach", "detach"):
        p = sub.add_parser(name, help=f"{name} a container")
        p.add_argument("args", nargs="+", metavar="[ADDR...] CONTAINER")
    conn = sub.add_parser("connect", help="add peers to connect to")
    conn.add_argument("--replace", action="store_true")
    conn.add_argument("peers", nargs="*", metavar="PEER")
    forget = sub.add_parser("forget", help="stop connecting to peers")
    forget.add_argument("peers", nargs="+", metavar="PEER")
    for name in ("proxy-env", "env"):  # docker (cli/proxy_env.py)
        penv = sub.add_parser(name, help="DOCKER_HOST for the weave Docker API proxy")
        penv.add_argument("--restore", action="store_true")
    from pyweave.cli.lab import add_lab_parser

    add_lab_parser(sub)  # type: ignore[arg-type]
    add_ipam_parsers(sub)  # IPAM: rmpeer, prime, reset, expose, hide
    return parser


def _router_args(args: argparse.Namespace) -> list[str]:
    argv = [
        "--nickname",
        args.nickname,
        "--port",
        str(args.port),
        "--ipalloc-range",
        args.ipalloc_range,
        "--conn-limit",
        str(args.conn_limit),
    ]
    if args.mtu:
        argv += ["--mtu", str(args.mtu)]
    if args.name:
        argv += ["--name", args.name]
    if args.no_discovery:
        argv.append("--no-discovery")
    if args.trusted_subnets:
        argv += ["--trusted-subnets", args.trusted_subnets]
    argv += ipam_router_args(args)  # IPAM
    argv += ["--container-release-delay", str(args.container_release_delay)]  # docker
    return [*argv, "--", *args.peers]


def _validate_launch(args: argparse.Namespace) -> None:
    from pyweave.router.core.connector import split_address
    from pyweave.router.core.names import BadPeerName, parse_peer_name

    if args.name:
        try:
            parse_peer_name(args.name)
        except BadPeerName as exc:
            raise CliError(str(exc)) from exc
    if args.conn_limit < 0:
        raise CliError(f"invalid --conn-limit {args.conn_limit}: expected 0 (no limit) or more")
    if not 0 < args.port < 65536:
        raise CliError(f"invalid --port {args.port}")
    if not args.container_release_delay >= 0:  # also refuses nan
        raise CliError(f"invalid --container-release-delay {args.container_release_delay}")
    if args.mtu is not None and (not str(args.mtu).isdigit() or not 576 <= int(args.mtu) <= 65535):
        raise CliError(f"invalid MTU {args.mtu!r} (--mtu or WEAVE_MTU): expected 576..65535")
    import ipaddress

    for cidr in filter(None, args.trusted_subnets.split(",")):
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            raise CliError(f"invalid --trusted-subnets entry {cidr!r}: {exc}") from exc
    validate_ipam_options(args)  # IPAM
    for peer in args.peers:
        try:
            split_address(peer)
        except ValueError as exc:
            raise CliError(f"invalid peer address {peer!r}: {exc}") from exc


def cmd_launch(args: argparse.Namespace) -> int:
    from pyweave.cli.docker_launch import launch

    _validate_launch(args)
    proxy = "" if args.no_proxy else args.proxy_listen
    print(launch(_router_args(args), args.password, args.where or "auto", proxy))
    return 0


def cmd_proxy_env(args: argparse.Namespace) -> int:
    from pyweave.cli.proxy_env import proxy_env

    print(proxy_env(args.restore))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    status = cast(Status, api_client.call("GET", "/status"))
    text = STATUS_VIEWS[args.view](status) if args.view else format_status(status)
    sys.stdout.write(text)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    import json

    print(json.dumps(api_client.call("GET", "/report"), indent=4))
    return 0


def cmd_attach(args: argparse.Namespace) -> int:
    from pyweave.cli.attach import attach, detach
    from pyweave.cli.netns import resolve

    *addresses, spec = args.args
    container = resolve(spec)
    action = attach if args.command == "attach" else detach
    print(" ".join(action(container, addresses)))
    return 0


def cmd_ps(args: argparse.Namespace) -> int:
    from pyweave.cli.ps import show_ps

    sys.stdout.write(show_ps(args.containers))
    return 0


def cmd_connect(args: argparse.Namespace) -> int:
    api_client.call("POST", "/connect", {"peers": args.peers, "replace": args.replace})
    return 0


def cmd_forget(args: argparse.Namespace) -> int:
    api_client.call("POST", "/forget", {"peers": args.peers})
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    from pyweave.cli.docker_launch import stop

    stop()
    return 0


def cmd_lab(args: argparse.Namespace) -> int:
    from pyweave.cli.lab import run_lab

    return run_lab(args)


COMMANDS = {
    "launch": cmd_launch,
    "stop": cmd_stop,
    "status": cmd_status,
    "report": cmd_report,
    "ps": cmd_ps,
    "attach": cmd_attach,
    "detach": cmd_attach,
    "connect": cmd_connect,
    "forget": cmd_forget,
    "lab": cmd_lab,
    **IPAM_COMMANDS,  # IPAM
    "proxy-env": cmd_proxy_env,
    "env": cmd_proxy_env,
}


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
        return COMMANDS[args.command](args)
    except CliError as exc:
        print(f"weave: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `weave report | head`: the reader went away, nothing to say
        with contextlib.suppress(OSError):
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - silence the flush at exit
        return 0


if __name__ == "__main__":
    sys.exit(main())
