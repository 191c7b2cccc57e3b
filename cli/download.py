"""Download a BK-SDM model into ComfyUI's diffusers models folder.

    python path/to/ComfyUI-BK-SDM download bk-sdm-small [--weights fp16|fp32|both] [--dest DIR] [--comfyui PATH]

The model is a registry name (``bk-sdm-small``, ``nota-ai/bk-sdm-v2-tiny``) or a Hugging
Face repo id ``owner/name``. Without ``--dest`` it goes to the first ``diffusers`` folder
of the ComfyUI found (``--comfyui``, else as :data:`comfy_host.DEFAULT_COMFYUI` says),
extra_model_paths.yaml included. HF_TOKEN and HF_ENDPOINT
are honoured. An interrupted download resumes when the command is run again. The folder's
path is written to stdout; errors go to the log, progress to a bar on a terminal (else to the log).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import TextIO

from huggingface_hub.utils import tqdm as hub_tqdm

from ..bksdm import download
from ..bksdm.errors import BKSDMError
from . import comfy_host

log = logging.getLogger("bksdm.download.cli")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python ComfyUI-BK-SDM download", description=__doc__.split("\n\n")[0])
    p.add_argument("model", help="registry name (bk-sdm-small, nota-ai/bk-sdm-v2-tiny) or Hugging Face repo id")
    p.add_argument("--weights", choices=download.WEIGHT_CHOICES, default="fp16",
                   help="fp16: half-precision U-Net and VAE files where the repo has them (smallest); "
                        "fp32: full precision; both (default: %(default)s)")
    p.add_argument("--dest", type=Path, help="models folder to download into (default: ComfyUI's first "
                                             "diffusers folder)")
    p.add_argument("--comfyui", type=Path, help="ComfyUI checkout whose diffusers folder to use (default: "
                                                f"{comfy_host.DEFAULT_COMFYUI})")
    return p.parse_args(argv)


def comfyui_diffusers_folder(comfy_path: Path | None) -> str:
    """The first diffusers folder of a ComfyUI checkout, as ComfyUI itself would set it up."""
    path = comfy_host.locate_comfyui(comfy_path, "pass --comfyui PATH, or --dest DIR to download anywhere")
    folder_paths = comfy_host.import_folder_paths(path)
    return folder_paths.get_folder_paths("diffusers")[0]


class ProgressLog:
    """Logs a download's progress every 5 % (for logs and pipes, where a bar would be noise)."""

    def __init__(self, name: str, every: int = 5):
        self.name = name
        self.every = every
        self.next = 0

    def __call__(self, done: int, total: int) -> None:
        percent = 100 * done // total if total else 100
        if percent >= self.next:
            log.info("%s: %3d %% (%.1f of %.1f MB)", self.name, percent, done / 1e6, total / 1e6)
            self.next = (percent // self.every + 1) * self.every


class ProgressBar:
    """One terminal bar for the whole request; huggingface_hub's tqdm, so HF_HUB_DISABLE_PROGRESS_BARS counts."""

    def __init__(self, name: str, file: TextIO | None = None):
        self.name, self.file, self.bar = name, file, None

    def __call__(self, done: int, total: int) -> None:
        if self.bar is None:
            self.bar = hub_tqdm(desc=self.name, total=total, initial=done, unit="B", unit_scale=True,
                                unit_divisor=1024, file=self.file or sys.stderr)
        self.bar.update(done - self.bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for noisy in ("httpx", "httpx2"):  # one line per HTTP request otherwise
        logging.getLogger(noisy).setLevel(logging.WARNING)
    progress = ProgressBar(args.model) if sys.stderr.isatty() else ProgressLog(args.model)
    try:
        root = str(args.dest.expanduser().resolve()) if args.dest else comfyui_diffusers_folder(args.comfyui)
        path = download.download_model(args.model, root, weights=args.weights, progress=progress)
    except (BKSDMError, comfy_host.HostError, OSError) as e:
        log.error("%s", e)
        return 1
    except KeyboardInterrupt:
        log.error("interrupted: run the same command again to resume the download")
        return 130
    finally:
        if isinstance(progress, ProgressBar):
            progress.close()
    sys.stdout.write(f"{path}\n")
    return 0

