#!/usr/bin/env bash
# Set up a fresh machine and run every test: lint, unit, simulation and the privileged
# namespace tests (real routers, real kernel devices).  Must run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tests/install-deps.sh
export PATH="$(pwd)/.venv/bin:$PATH"
bash .ci/lint
python -m pytest -p no:cacheprovider -o addopts="" --timeout=600 -q tests "$@"
