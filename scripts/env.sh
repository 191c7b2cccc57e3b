# Sourced by scripts/test.sh and scripts/txt2img.sh: find or fetch ComfyUI, then create or
# refresh the project's .venv with ComfyUI's own requirements. Sets COMFY (exported as
# COMFYUI_PATH), VENV and PY (the venv's python).
#   COMFYUI_PATH           a ComfyUI checkout to use as it is
#   BKSDM_COMFYUI_VERSION  else the pinned release to fetch: 0.33.0 (default) or 0.3.64
#   COMFYUI_SOURCE         where to fetch it from: a git URL (default: ComfyUI's public
#                          repository) or a ComfyUI source .tar.gz
#   BKSDM_VENV             the environment to use (default: .venv)
#   BKSDM_THIRDPARTY_SOURCE  a folder of the pinned third-party node packs' .tar.gz files
#                          (default: their public repositories); scripts/test.sh only
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
# Standard library only, so it runs before the environment exists.
COMFY="$(python3 -m cli.provision_comfyui)"
export COMFYUI_PATH="$COMFY"
VENV="${BKSDM_VENV:-$ROOT/.venv}"
[ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

pip_install -r tests/requirements.txt
# ComfyUI's own requirements (its front end included), minus the torch stack installed above.
grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
pip_install -r "$VENV/comfyui-requirements.txt"
# Chromium for the front-end test, from Debian's packages.
if ! command -v chromium >/dev/null && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
        || echo "could not install Chromium: the front-end test will fail" >&2
fi
