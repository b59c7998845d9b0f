"""The router process: arguments, state directory, pid file, logging, signals.

Theory of operation: `weave launch` starts `python -m pyweave.router ...` detached, with
stdout/stderr going to `$WEAVE_STATE_DIR/weave.log`.  The process takes an exclusive
lock on `$WEAVE_STATE_DIR/weave.pid` (so two routers never share a state directory),
loads or creates its persistent peer name, runs the router until SIGTERM/SIGINT, then
stops it cleanly and removes the pid file.  The password comes from the environment
(WEAVE_PASSWORD), never from argv, so it does not show in `ps`.
"""

from __future__ import annotations

import argparse
import asyncio
import fcntl
import logging
import os
import signal
import socket
import sys

from pyweave.router.api_types import API_PORT, CONTROL_PORT
from pyweave.router.core.names import BadPeerName, parse_peer_name, random_peer_name
from pyweave.router.router import Router, RouterConfig

log = logging.getLogger("pyweave.router")

PID_FILE = "weave.pid"
NAME_FILE = "peer-name"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="pyweave-router")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name", default="")
    p.add_argument("--nickname", default=socket.gethostname())
    p.add_argument("--port", type=int, default=CONTROL_PORT)
    p.add_argument("--api-port", type=int, default=API_PORT)
    p.add_argument("--mtu", type=int, default=None)  # None: from the underlay
    p.add_argument("--ipalloc-range", default="10.128.0.0/10")
    p.add_argument("--ipalloc-default-subnet", default="")  # IPAM
    p.add_argument("--ipalloc-init", default="")  # IPAM
    p.add_argument("--no-discovery", action="store_true")
    p.add_argument("--conn-limit", type=int, default=100)
    p.add_argument("--trusted-subnets", default="")
    # -- docker (router/docker_containers.py) --
    p.add_argument("--docker-api", default="", help="Docker engine URL; empty: no Docker")
    p.add_argument("--docker-proxy", default="", help="proxy listen address; empty: none")
    p.add_argument("--container-release-delay", type=float, default=30.0)
    # -- end docker --
    p.add_argument("peers", nargs="*")
    return p.parse_args(argv)


def load_or_create_name(state_dir: str, explicit: str) -> int:
    path = os.path.join(state_dir, NAME_FILE)
    if explicit:
        name = parse_peer_name(explicit)
    else:
        try:
            with open(path) as f:
                return parse_peer_name(f.read())
        except (OSError, BadPeerName):
            name = random_peer_name(os.urandom(6))
    with open(path, "w") as f:
        f.write(f"{name:012x}\n")
    return name


def lock_pid_file(state_dir: str) -> int:
    """Lock and write the pid file; exit with a message if another router holds it."""
    fd = os.open(os.path.join(state_dir, PID_FILE), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        sys.exit(f"weave router already running (state dir {state_dir})")
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


async def serve(config: RouterConfig) -> None:
    router = Router(config)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, router.stopping.set)
    await router.start()
    print(f"router ready: {router.describe()}", flush=True)
    await router.stopping.wait()
    log.info("stopping")
    await router.stop()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    os.makedirs(args.state_dir, exist_ok=True)
    pid_fd = lock_pid_file(args.state_dir)
    password = os.environ.get("WEAVE_PASSWORD") or None
    config = RouterConfig(
        name=load_or_create_name(args.state_dir, args.name),
        nickname=args.nickname,
        state_dir=args.state_dir,
        port=args.port,
        api_port=args.api_port,
        peers=list(args.peers),
        mtu=args.mtu,
        ipalloc_range=args.ipalloc_range,
        ipalloc_default_subnet=args.ipalloc_default_subnet,
        ipalloc_init=args.ipalloc_init,
        password=password.encode() if password else None,
        discovery=not args.no_discovery,
        conn_limit=args.conn_limit,
        trusted_subnets=[s for s in args.trusted_subnets.split(",") if s],
        docker_api=args.docker_api,
        docker_proxy=args.docker_proxy,
        container_release_delay=args.container_release_delay,
    )
    try:
        asyncio.run(serve(config))
    finally:
        os.unlink(os.path.join(args.state_dir, PID_FILE))
        os.close(pid_fd)
    return 0
