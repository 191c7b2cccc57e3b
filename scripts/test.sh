#!/usr/bin/env bash
# The test command: set up .venv and ComfyUI (see env.sh), lint, run the whole suite
# (pytest arguments pass through).
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
# The third-party node packs some tests load beside this one (pinned; standard library only).
python3 -m cli.provision_comfyui thirdparty >/dev/null
"$VENV/bin/ruff" check .
exec "$PY" -m pytest "$@"
