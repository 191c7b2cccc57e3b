"""Convert a BK-SDM model folder (diffusers layout) into one single-file checkpoint.

    python path/to/ComfyUI-BK-SDM convert path/to/bk-sdm-small bk-sdm-small.safetensors --precision fp16

The file holds the U-Net, text encoder and VAE in the standard single-file key layout
(contiguous block numbering), written by ComfyUI's own checkpoint code, in process.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

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
        host = comfy_host.start_for_tools(args.comfyui)
    except comfy_host.HostError as e:
        log.error("convert failed: %s", e)
        return 1
    pack_errors = host.pack_module("bksdm.errors").BKSDMError  # the pack as ComfyUI imported it
    try:
        folder = host.pack_module("bksdm.pipeline").open_model_folder(str(args.folder.expanduser().resolve()))
        host.pack_module("nodes.convert").write_checkpoint(folder, str(args.output.expanduser().resolve()),
                                                           args.precision)
    except (pack_errors, OSError) as e:
        log.error("convert failed: %s", e)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
