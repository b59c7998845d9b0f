"""Real Docker engines for the tests: one dockerd per simulated host, and cached images.

Theory of operation:

* **Dockerd.** Each simulated host gets its own `dockerd` with its own `--data-root`,
  `--exec-root`, `--pidfile` and socket, started inside the host's network namespace with
  `nsenter --net=...` (`ip netns exec` would also remount /sys, hiding the cgroup
  mounts dockerd needs).  `--bridge=none --iptables=false`: containers get only `lo`
  unless weave attaches them, and the host's firewall is left alone; `--network host`
  containers (the weave router) share the host namespace as usual.  Stopping removes every
  container first (fast, no restart-policy surprises), SIGTERMs the daemon by its PID,
  unmounts anything left under its roots and deletes them.
* **Images.** The base image is a debootstrap `minbase` bookworm rootfs (python3, venv,
  iproute2, ping, CA certificates — the machine's bundle, so pip works behind an
  intercepting proxy) and the router image is `docker build` of the repository's
  Dockerfile on top of it.  Both are cached under $PYWEAVE_TEST_CACHE
  (/var/cache/pyweave-test): the rootfs tar keyed by the package list and CA bundle, and
  a `docker save` of both images keyed by that plus a hash of the Dockerfile and the
  sources.  Building needs PyPI (pip), so it runs in a builder dockerd in the root
  namespace whose data root is kept in the cache: its layer cache holds the dependency
  layer, so a rebuild after a source change is quick and needs no network.  A warm cache
  is one `docker load` per host.  A file lock serialises concurrent builders.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import hashlib
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("PYWEAVE_TEST_CACHE", "/var/cache/pyweave-test"))
RUN_ROOT = Path(os.environ.get("PYWEAVE_DOCKER_RUN", "/tmp/pyweave-dockerd"))
BASE_PACKAGES = ["python3", "python3-venv", "iproute2", "iputils-ping", "ca-certificates"]
SUITE = "bookworm"
CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")
BASE_REPO = "pyweave-test/base"
DOCKERD_START_TIMEOUT = 60.0


def router_image() -> str:
    from pyweave.cli.docker_launch import image_name

    return image_name()


def dockerd_unavailable_reason() -> str | None:
    if os.geteuid() != 0:
        return "docker tests need root"
    for tool in ("dockerd", "docker", "nsenter", "ip"):
        if shutil.which(tool) is None:
            return f"docker tests need `{tool}` (bash tests/install-deps.sh installs docker.io)"
    return None


def _run(argv: list[str], timeout: float = 600, **kw: object) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, **kw)  # type: ignore[call-overload]
    if result.returncode != 0:
        raise RuntimeError(
            f"`{' '.join(argv)}` exited {result.returncode}: {result.stderr.strip()[-2000:]}"
        )
    return result  # type: ignore[no-any-return]


class Dockerd:
    """One dockerd; `netns` None means the root network namespace (the image builder)."""

    def __init__(self, name: str, netns: str | None, data_root: Path | None = None) -> None:
        self.name = name
        self.netns = netns
        self.root = RUN_ROOT / name
        self.data_root = data_root or self.root / "data"
        self.sock = self.root / "docker.sock"
        self.url = f"unix://{self.sock}"
        self.proc: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env["DOCKER_HOST"] = self.url
        env.pop("ORIG_DOCKER_HOST", None)
        return env

    def docker(
        self, *args: str, timeout: float = 120, check: bool = True, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            ["docker", *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(),
            input=input,
        )
        if check and result.returncode != 0:
            output = (result.stdout.strip()[-3000:] + "\n" + result.stderr.strip()).strip()
            raise AssertionError(f"docker {' '.join(args)}: {output}")
        return result

    def start(self) -> None:
        self.cleanup_leftovers()
        self.root.mkdir(parents=True, exist_ok=True)
        argv = [
            "dockerd",
            f"--data-root={self.data_root}",
            f"--exec-root={self.root / 'exec'}",
            f"--pidfile={self.root / 'dockerd.pid'}",
            f"--host={self.url}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-masq=false",
            f"--cgroup-parent=/{self.name}",
            "--userland-proxy=false",
        ]
        if self.netns is not None:
            argv = ["nsenter", f"--net=/run/netns/{self.netns}", *argv]
        log = open(self.root / "dockerd.log", "ab")  # noqa: SIM115 - handed to the daemon
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + DOCKERD_START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dockerd {self.name} exited: {self.log_tail()}")
            if self.docker("version", check=False, timeout=10).returncode == 0:
                return
            time.sleep(0.2)
        raise RuntimeError(f"dockerd {self.name} did not answer: {self.log_tail()}")

    def log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.root / "dockerd.log").read_text(errors="replace")
        except OSError:
            return "no log"
        wanted = [line for line in text.splitlines() if "level=error" in line or "failed" in line]
        return "\n".join((wanted or text.splitlines())[-lines:])

    def load(self, tar: Path) -> None:
        self.docker("load", "-i", str(tar), timeout=300)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            ids = self.docker("ps", "-aq", check=False, timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, check=False, timeout=120)
            _terminate(self.proc.pid)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None
        self._remove_root()

    def cleanup_leftovers(self) -> None:
        """A dockerd of a crashed earlier run with our name: stop it by its pid file."""
        pidfile = self.root / "dockerd.pid"
        with contextlib.suppress(OSError, ValueError):
            pid = int(pidfile.read_text().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            if b"dockerd" in cmdline and str(self.root).encode() in cmdline:
                _terminate(pid)
                for _ in range(300):
                    if not _alive(pid):
                        break
                    time.sleep(0.1)
        self._remove_root()

    def _remove_root(self) -> None:
        remove_tree(self.root)


def remove_tree(root: Path) -> None:
    """rm -rf, after lazily unmounting whatever is mounted below `root`."""
    prefix = str(root) + "/"
    with open("/proc/self/mounts") as f:
        mounts = [line.split()[1] for line in f if line.split()[1].startswith(prefix)]
    for mount in sorted(mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mount], capture_output=True, check=False)
    shutil.rmtree(root, ignore_errors=True)


def _alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie (an orphan may never be reaped here)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _terminate(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)


# -- images ------------------------------------------------------------------------------


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(hashlib.sha256(part).digest())
    return h.hexdigest()[:16]


def base_key() -> str:
    ca = CA_BUNDLE.read_bytes() if CA_BUNDLE.exists() else b""
    return _digest([SUITE.encode(), " ".join(BASE_PACKAGES).encode(), ca])


def image_key() -> str:
    files = ["Dockerfile", ".dockerignore", "pyproject.toml", "setup.py", "README.md"]
    files += sorted(
        str(p.relative_to(REPO))
        for top in ("router", "cli")
        for p in (REPO / top).rglob("*.py")
        if "__pycache__" not in p.parts
    )
    parts = [base_key().encode()]
    for name in files:
        path = REPO / name
        parts += [name.encode(), path.read_bytes() if path.exists() else b""]
    return _digest(parts)


def debian_mirror() -> str:
    if os.environ.get("PYWEAVE_DEBIAN_MIRROR"):
        return os.environ["PYWEAVE_DEBIAN_MIRROR"]
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        for line in Path(path).read_text().splitlines():
            if line.startswith("URIs:") and line.rstrip().endswith("/debian"):
                return line.split()[1]
    with contextlib.suppress(OSError):
        for line in Path("/etc/apt/sources.list").read_text().splitlines():
            words = line.split()
            if len(words) >= 3 and words[0] == "deb" and words[1].endswith("/debian"):
                return words[1]
    return "http://deb.debian.org/debian"


def _build_base_rootfs(tar: Path) -> None:
    work = CACHE / f"rootfs-{os.getpid()}"
    remove_tree(work)
    try:
        _run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(work),
                debian_mirror(),
            ],
            timeout=1200,
        )
        if CA_BUNDLE.exists():
            shutil.copyfile(CA_BUNDLE, work / "etc/ssl/certs/ca-certificates.crt")
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for entry in (work / junk).glob("*"):
                if entry.is_file():
                    entry.unlink()
        _run(["tar", "-C", str(work), "-cf", str(tar) + ".tmp", "."], timeout=600)
        os.replace(str(tar) + ".tmp", tar)
    finally:
        remove_tree(work)


def ensure_images() -> tuple[Path, str]:
    """(tar to `docker load`, base image tag); builds and caches what is missing."""
    CACHE.mkdir(parents=True, exist_ok=True)
    bkey, ikey = base_key(), image_key()
    base_tag = f"{BASE_REPO}:{bkey}"
    images_tar = CACHE / f"images-{ikey}.tar"
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if images_tar.exists():
            return images_tar, base_tag
        base_tar = CACHE / f"base-{bkey}.tar"
        if not base_tar.exists():
            print(f"building base rootfs {base_tar} (debootstrap)", file=sys.stderr)
            _build_base_rootfs(base_tar)
        # the builder keeps its data root in the cache: its layer cache makes a rebuild
        # after a source change quick and offline (see the Dockerfile's layer order)
        builder = Dockerd(f"{_prefix()}build", None, data_root=CACHE / "builder")
        builder.start()
        try:
            with open(base_tar, "rb") as f:
                subprocess.run(
                    ["docker", "import", "-", base_tag],
                    stdin=f,
                    env=builder.env(),
                    check=True,
                    capture_output=True,
                    timeout=600,
                )
            image = router_image()
            builder.docker(
                "build",
                "--network",
                "host",
                "--build-arg",
                f"BASE={base_tag}",
                "-t",
                image,
                str(REPO),
                timeout=1200,
            )
            builder.docker("save", "-o", str(images_tar) + ".tmp", image, base_tag, timeout=600)
            os.replace(str(images_tar) + ".tmp", images_tar)
            builder.docker("image", "prune", "-f", check=False)  # superseded router images
        finally:
            builder.stop()
        for old in CACHE.glob("images-*.tar"):
            if old != images_tar:
                old.unlink()
        return images_tar, base_tag


def _prefix() -> str:
    return os.environ.get("PYWEAVE_DOCKER_TEST_PREFIX", "h10")
