#!/usr/bin/env bash
# Installs what the tests need on a fresh machine, then runs them all.
# Usage: bash scripts/test.sh [pytest args...]   (e.g. -m "not slow" for the quick loop)
set -euo pipefail
cd "$(dirname "$0")/.."

# A real Prometheus for the integration tests (Debian's package), and a real Chromium renders the HTML report in a test. Skipped (with a reason) where not root.
missing=()
command -v prometheus >/dev/null 2>&1 || missing+=(prometheus)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
if ((${#missing[@]})) && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  apt-get update -qq >/dev/null
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# torch pinned: the CPU build of this version installs from a local file; unpinned would
# pull several GB of CUDA packages.
python -m pip install -q --disable-pip-version-check torch==2.13.0
# The training stacks the capture tests run (tests/test_stacks.py), installed together
# with the pinned torch so that they do not pull a CUDA build.
python -m pip install -q --disable-pip-version-check torch==2.13.0 \
  transformers==5.24.0 accelerate==1.15.0 lightning==2.6.6
python -m pip install -q --disable-pip-version-check -e '.[test]'
python -m pytest "$@"
