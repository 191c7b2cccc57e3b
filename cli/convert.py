"""Convert a BK-SDM model folder (diffusers layout) into one single-file checkpoint.

    python path/to/ComfyUI-BK-SDM convert path/to/bk-sdm-small bk-sdm-small.safetensors --precision fp16

The file holds the U-Net, text encoder and VAE in the standard single-file key layout
(contiguous block numbering), written by ComfyUI's own checkpoint code, in process.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..bksdm.errors import BKSDMError
from ..bksdm.files import pipeline
from . import comfy_host

log = logging.getLogger("bksdm.convert")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python ComfyUI-BK-SDM convert", description=__doc__.split("\n\n")[0])
    p.add_argument("folder", type=Path, help="the model folder (model_index.json, unet/, text_encoder/, vae/)")
    p.add_argument("output", type=Path, help="the .safetensors file to write (never overwritten)")
    p.add_argument("--precision", choices=("fp16", "fp32"), default="fp16")
    p.add_argument("--comfyui", type=Path, help="ComfyUI checkout (default: as cli.txt2img finds it)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        comfy_host.start_for_tools(args.comfyui)
    except comfy_host.HostError as e:
        log.error("convert failed: %s", e)
        return 1
    from ..nodes.convert import write_checkpoint  # the node layer imports ComfyUI: only once it is started

    try:
        folder = pipeline.open_model_folder(str(args.folder.expanduser().resolve()))
        write_checkpoint(folder, str(args.output.expanduser().resolve()), args.precision)
    except (BKSDMError, OSError) as e:
        log.error("convert failed: %s", e)
        return 1
    return 0

