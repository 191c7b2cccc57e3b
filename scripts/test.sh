#!/usr/bin/env bash
# The test command: set up .venv and ComfyUI (see env.sh), lint, run the whole suite
# (pytest arguments pass through).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
"$VENV/bin/ruff" check .
exec "$PY" -m pytest "$@"
