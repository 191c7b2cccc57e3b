#!/usr/bin/env bash
# Put beside this checkout what benchmarks/gpu.py needs on a bare GPU machine that reaches no
# package registry: a copy of the ComfyUI checkout and the wheels its Python image lacks.
#
#     benchmarks/device_bundle.sh            # writes .bench-device/ (ignored through .git/info/exclude)
#     BENCH_DEVICE_DIR=/tmp/x benchmarks/device_bundle.sh   # elsewhere (then nothing is added to the exclude file)
#
# The GPU image (see BENCHMARKS.md) has python3 3.12 with torch, transformers, safetensors,
# accelerate, einops, psutil, scipy, aiohttp, yarl, tokenizers, sentencepiece, Pillow, ...
# It lacks: diffusers (the comparison), torchsde + trampoline (imported by ComfyUI's samplers)
# and av (imported by ComfyUI's node API); for ComfyUI 0.33 also comfy-aimdo (DynamicVRAM),
# comfy-kitchen, simpleeval and blake3 (its requirements.txt), and a torchaudio matching the
# image's torch (comfy.sd imports it), which only the image's own index can say: not bundled.
# ComfyUI's other optional imports (kornia, spandrel, pydantic) only disable a few unrelated
# built-in nodes when missing.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
DEST="${BENCH_DEVICE_DIR:-$ROOT/.bench-device}"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
COMFY="${COMFYUI_PATH:-$(python3 -m cli.provision_comfyui)}"
[ -n "$COMFY" ] && [ -f "$COMFY/comfy/sd.py" ] || { echo "no ComfyUI checkout found: set COMFYUI_PATH" >&2; exit 1; }
# What the GPU image runs (python3 3.12, x86-64); versions pinned to what was checked.
PY_VERSION="${DEVICE_PYTHON_VERSION:-3.12}"
DIFFUSERS_VERSION="${DIFFUSERS_VERSION:-$("$PY" -c 'import importlib.metadata as m; print(m.version("diffusers"))')}"
WHEELS=("diffusers==$DIFFUSERS_VERSION" "torchsde==0.2.6" "trampoline==0.1.2" "av==18.1.0")
if [ -f "$COMFY/requirements.txt" ]; then  # ComfyUI's own pins of the packages the image lacks
    while read -r pin; do WHEELS+=("$pin"); done < <(grep -E '^(comfy-aimdo|comfy-kitchen|simpleeval|blake3)' \
        "$COMFY/requirements.txt")
fi

cd "$ROOT"
if [ "$DEST" = "$ROOT/.bench-device" ] && ! grep -qxF '/.bench-device/' "$(git rev-parse --git-dir)/info/exclude" \
        2>/dev/null; then  # keep it out of git status; it still travels to the device machine via 'carry'
    mkdir -p "$(git rev-parse --git-dir)/info"
    echo '/.bench-device/' >> "$(git rev-parse --git-dir)/info/exclude"
fi
rm -rf "$DEST"
mkdir -p "$DEST/ComfyUI" "$DEST/whl"
# ComfyUI's source as it is checked out here, without its history, caches, tests or user files.
tar -C "$COMFY" --exclude=.git --exclude=__pycache__ --exclude=./tests --exclude=./tests-unit \
    --exclude=./output --exclude=./input --exclude=./user --exclude='./models/*/*.safetensors' \
    --exclude='./models/*/*.ckpt' --exclude='./custom_nodes/*' -cf - . | tar -x -C "$DEST/ComfyUI"
describe() { git -C "$1" rev-parse --short=10 HEAD 2>/dev/null | tr -d '\n' &&
             { [ -z "$(git -C "$1" status --porcelain --untracked-files=no 2>/dev/null)" ] || echo -n "+dirty"; }; }
describe "$COMFY" > "$DEST/ComfyUI/.bench-commit" || true  # the copy has no .git: the header reads these
describe "$ROOT" > "$DEST/pack-commit" || true
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
    --python-version "$PY_VERSION" --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST/whl" "${WHEELS[@]}"
du -sh "$DEST/ComfyUI" "$DEST/whl"
echo "total that travels with the tree: $(du -sm "$ROOT" --exclude=.venv --exclude=.git | cut -f1) MB (limit 64 MiB)"
