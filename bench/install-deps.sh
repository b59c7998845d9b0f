#!/usr/bin/env bash
# Tools the data-path benchmark (python -m bench.datapath) needs on a fresh Debian 12,
# besides what tests/install-deps.sh installs: tinc 1.0 (the userspace baseline), iptables
# (loss and the blocked h1<->h3 path), iperf3, and optionally py-spy for profiling.
# Idempotent: apt runs only when a tool is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
for tool in tincd iptables iperf3 ip ping bridge; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
done
if ((${#missing[@]})); then
    echo "installing system packages (missing: ${missing[*]})"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends tinc iptables iperf3 iproute2 iputils-ping >/dev/null
fi
if [ "${WITH_PY_SPY:-0}" = 1 ]; then
    python3 -m pip install -q py-spy
fi
echo "bench dependencies present: $(tincd --version | head -1), $(iperf3 --version | head -1)"
