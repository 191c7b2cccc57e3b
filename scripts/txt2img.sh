#!/usr/bin/env bash
# The main job: a prompt in, a PNG out, through a ComfyUI workflow with a BK-SDM loader.
#   scripts/txt2img.sh "a red fox in the snow" --model bk-sdm-small -o fox.png
# Paths are taken as typed, from the folder the command is run in.
source "$(dirname "${BASH_SOURCE[0]}")/env.sh"
setup_environment
exec "$PY" "$ROOT" txt2img "$@"
