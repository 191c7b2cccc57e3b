#!/usr/bin/env bash
# The test command: the main job's environment (see env.sh) plus the test stack, the pinned
# third-party node packs the tests mix with, then lint and the whole suite from the checkout
# (pytest arguments pass through). The front-end test needs Chromium on PATH (Debian and
# Ubuntu: apt-get install chromium) or BKSDM_CHROMIUM.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
setup_environment "$ROOT/tests/requirements.txt"
cd "$ROOT"
python3 -m tests.thirdparty >/dev/null
"$VENV/bin/ruff" check .
exec "$PY" -m pytest "$@"
