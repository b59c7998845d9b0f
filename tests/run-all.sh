#!/usr/bin/env bash
# Set up a fresh machine and run every test: lint, unit, simulation and the privileged
# namespace tests (real routers, real kernel devices).  Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
export PATH="$(pwd)/.venv/bin:$PATH"
bash .ci/lint
# As root, the privileged suites must run: a skip there would hide a failure.
if [ "$(id -u)" = 0 ]; then
    export PYWEAVE_REQUIRE_NETNS=1 PYWEAVE_REQUIRE_DOCKER=1
fi
python -m pytest -p no:cacheprovider -o addopts="" --timeout=600 -q -rs tests "$@"
