# Sourced by scripts/test.sh and scripts/txt2img.sh: create or refresh the project's .venv
# and find ComfyUI. Sets PY (the venv's python) and COMFY (a checkout, or empty).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${BKSDM_VENV:-$ROOT/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

pip_install -r tests/requirements.txt
# Chromium for the front-end test, from Debian's packages (the test skips, and says so, without it).
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "could not install Chromium: the front-end test will skip"
fi
COMFY="$("$PY" -m cli.comfy_host)"
if [ -n "$COMFY" ]; then
    # ComfyUI's own requirements, minus the torch stack installed above.
    grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
    pip_install -r "$VENV/comfyui-requirements.txt"
else
    # No checkout: ComfyUI's model code alone (an old, partial copy) keeps the U-Net parity tests running.
    pip_install --no-deps notcomfy==0.1.0
fi
