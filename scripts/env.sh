# Sourced by scripts/txt2img.sh and scripts/test.sh. `setup_environment [REQUIREMENTS...]` finds or
# fetches ComfyUI, then creates or refreshes a virtual environment with what running the pack
# needs: torch, ComfyUI's own requirements and the pack's requirements.txt. Its arguments are
# further requirement files, installed first (scripts/test.sh passes the test stack, whose pinned
# torch then stands). It changes no directory and installs nothing outside the environment and
# the cache. It sets COMFY (exported as COMFYUI_PATH), VENV and PY (the environment's python).
#   COMFYUI_PATH           a ComfyUI checkout to use as it is
#   BKSDM_COMFYUI_VERSION  else the pinned release to fetch: 0.33.0 (default) or 0.3.64
#   COMFYUI_SOURCE         where to fetch it from: a git URL (default: ComfyUI's public
#                          repository) or a ComfyUI source .tar.gz
#   BKSDM_VENV             the environment to use (default: .venv in this folder)
#   BKSDM_TORCH_INDEX_URL  the PyTorch wheel index for a new environment, as ComfyUI's README
#                          names them (…/whl/cpu, …/whl/rocm6.4, …/whl/xpu; default: PyPI's torch)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"

pip_install() { "$PY" -m pip install -q --disable-pip-version-check "$@"; }

setup_environment() {
    # Standard library only, so it runs before the environment exists.
    COMFY="$(cd "$ROOT" && python3 -m cli.provision_comfyui)"
    export COMFYUI_PATH="$COMFY"
    VENV="${BKSDM_VENV:-$ROOT/.venv}"
    [ -x "$VENV/bin/python" ] || python3 -m venv "$VENV"
    PY="$VENV/bin/python"
    local requirements
    for requirements in "$@"; do
        pip_install -r "$requirements"
    done
    if ! "$PY" -c "import torch, torchvision, torchaudio" 2>/dev/null; then
        pip_install torch torchvision torchaudio ${BKSDM_TORCH_INDEX_URL:+--index-url "$BKSDM_TORCH_INDEX_URL"}
    fi
    # ComfyUI's own requirements (its front end included), less the torch stack installed above.
    grep -vE '^(torch|torchvision|torchaudio)[[:space:]]*$' "$COMFY/requirements.txt" > "$VENV/comfyui-requirements.txt"
    pip_install -r "$VENV/comfyui-requirements.txt" -r "$ROOT/requirements.txt"
    # ComfyUI 0.3.64 imports requests (app/frontend_management.py) without listing it: it came
    # with huggingface_hub 0.x, which today's transformers no longer pull in. 0.33.0 lists it.
    "$PY" -c "import requests" 2>/dev/null || pip_install requests
}
