#!/usr/bin/env bash
# Install everything pyweave and its tests need on a fresh Debian 12, into ./.venv.
# Idempotent: safe to run again; skips apt when every tool is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(iproute2 iputils-ping iperf3 dnsutils tcpdump procps psmisc kmod
              python3 python3-venv python3-pip ca-certificates)
APT_PACKAGES+=(docker.io debootstrap)   # tests/docker: one dockerd per simulated host
APT_PACKAGES+=(iptables)                # tests/netns: random underlay loss (statistic match)
missing=()
for tool in ip ping iperf3 dig tcpdump ps dockerd debootstrap iptables; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
# The router's per-packet loops are Python: run them on the distribution's interpreter
# (Debian builds it with PGO and LTO, linked statically, as the router image runs it), not
# on whatever python3 comes first in PATH (a plain source build measured 1.5x slower per
# Python operation here, 10 % less TCP throughput: docs/performance.md, 2026-12-05).
PYTHON=/usr/bin/python3
if [ ! -x "$PYTHON" ]; then missing+=(python3); fi
if ! "$PYTHON" -c "import venv, ensurepip" >/dev/null 2>&1; then missing+=(venv); fi
if ((${#missing[@]})); then
    echo "installing system packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${APT_PACKAGES[@]}" >/dev/null
fi
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
    PYTHON=python3  # an older distribution: the python3 in PATH (pyweave needs 3.11+)
fi

if [ -z "${PIP_CERT:-}" ] && [ -f /etc/ssl/certs/ca-certificates.crt ]; then
    export PIP_CERT=/etc/ssl/certs/ca-certificates.crt
fi
interpreter() { "$1" -c 'import sys; print(sys.base_prefix, sys.version)'; }
if [ -x .venv/bin/python ] && [ "$(interpreter .venv/bin/python)" != "$(interpreter "$PYTHON")" ]; then
    echo "recreating .venv with $PYTHON (it was made with $(interpreter .venv/bin/python))"
    rm -rf .venv
fi
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
echo "pyweave installed in $(pwd)/.venv (weave: $(pwd)/.venv/bin/weave)"
