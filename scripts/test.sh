#!/usr/bin/env bash
# The test command: set up .venv, find ComfyUI, lint, run the whole suite (pytest args pass through).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
echo "ComfyUI: ${COMFY:-none found (set COMFYUI_PATH); host tests will skip}"
"$VENV/bin/ruff" check .
exec "$PY" -m pytest "$@"
