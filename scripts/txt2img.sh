#!/usr/bin/env bash
# The main job: a prompt in, a PNG out, through a ComfyUI workflow with a BK-SDM loader.
#   scripts/txt2img.sh "a red fox in the snow" --model bk-sdm-small -o fox.png
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
exec "$PY" -m cli.txt2img "$@"
