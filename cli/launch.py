"""`weave launch` and `weave stop`: the router as a background process of this namespace.

Theory of operation: the router keeps its pid file, log and persisted state in
`$WEAVE_STATE_DIR` (default /var/lib/weave), so routers in different network namespaces
of one machine run side by side with different state directories.  `launch` refuses when
the pid file is locked by a live router, starts `python -m pyweave.router` in a new
session with its output in `weave.log`, and polls `GET /status` until it answers (or the
process dies, in which case the log's last line is the error).  `stop` sends SIGTERM to
the pid in the pid file — after checking that the pid really is a pyweave router — and
waits for it to exit, with SIGKILL as the last resort.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from typing import cast

from pyweave.cli import api_client
from pyweave.cli.errors import CliError
from pyweave.router.api_types import Status

DEFAULT_STATE_DIR = "/var/lib/weave"
LAUNCH_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
POLL = 0.05


def state_dir() -> str:
    return os.environ.get("WEAVE_STATE_DIR") or DEFAULT_STATE_DIR


def running_pid(directory: str) -> int | None:
    """The pid of the router owning `directory`, or None (judged by the pid-file lock)."""
    path = os.path.join(directory, "weave.pid")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            content = os.read(fd, 32).decode(errors="replace").strip()
            return int(content) if content.isdigit() else None
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def _is_router(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return b"pyweave.router" in f.read()
    except OSError:
        return False


def _log_tail(path: str) -> str:
    try:
        with open(path, errors="replace") as f:
            lines = [line.strip() for line in f if line.strip()]
    except OSError:
        return "no log"
    return lines[-1] if lines else "no log"


def prepare_state_dir() -> str:
    """The state directory, created; CliError if a router already runs here."""
    directory = os.path.abspath(state_dir())
    os.makedirs(directory, exist_ok=True)
    pid = running_pid(directory)
    if pid is not None:
        raise CliError(f"weave router is already running (pid {pid}, state dir {directory})")
    if api_client.is_up(timeout=0.5):
        raise CliError("another weave router already answers on this namespace's API port")
    return directory


def launch(router_args: list[str], password: str | None) -> str:
    directory = prepare_state_dir()
    log_path = os.path.join(directory, "weave.log")
    env = dict(os.environ)
    if password:
        env["WEAVE_PASSWORD"] = password
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "pyweave.router", "--state-dir", directory, *router_args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
            close_fds=True,
        )
    deadline = time.monotonic() + LAUNCH_TIMEOUT
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise CliError(f"weave router failed to start: {_log_tail(log_path)}")
        try:
            status = cast(Status, api_client.call("GET", "/status", timeout=1.0))
            return status["router"]["name"]
        except CliError:
            time.sleep(POLL)
    proc.terminate()
    raise CliError(f"weave router did not answer within {LAUNCH_TIMEOUT:.0f}s; see {log_path}")


def stop() -> None:
    directory = state_dir()
    pid = running_pid(directory)
    if pid is None or not _is_router(pid):
        raise CliError("weave router is not running")
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT
    while time.monotonic() < deadline:
        if not _is_router(pid):
            return
        time.sleep(POLL)
    os.kill(pid, signal.SIGKILL)
    while _is_router(pid) and time.monotonic() < deadline + STOP_TIMEOUT:
        time.sleep(POLL)
