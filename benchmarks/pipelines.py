"""The layouts the benchmarks measure, and their random-weight pipeline folders: written once
under the workdir (by this file, run as a worker) and reused by later runs; the weight files
in them, their page cache, and how diffusers is asked to load them.

The weights come from ``random_models`` (the real U-Net configs, random values), as the
tests' do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from workers import is_worker, run_worker, worker_main


@dataclass(frozen=True)
class Layout:
    name: str  # what the command line takes
    family: str  # sd1 / sd2
    config: str  # random_models/unet_configs/<config>.json

    @property
    def is_teacher(self) -> bool:
        return "teacher" in self.config


LAYOUTS = {layout.name: layout for layout in (
    Layout("sd1-base", "sd1", "v1_bk_base"),
    Layout("sd1-small", "sd1", "v1_bk_small"),
    Layout("sd1-tiny", "sd1", "v1_bk_tiny"),
    Layout("sd1-teacher", "sd1", "sd-v1-4_teacher"),
    Layout("sd2-base", "sd2", "v2-base-512_bk_base"),
    Layout("sd2-small", "sd2", "v2-base-512_bk_small"),
    Layout("sd2-tiny", "sd2", "v2-base-512_bk_tiny"),
    Layout("sd2-teacher", "sd2", "sd-v2-1-base_teacher"),
)}


def teacher_of(layout: Layout, layouts: Sequence[Layout]) -> Layout | None:
    """The teacher of ``layout``'s family among ``layouts``, for speed-ups over it (None: not
    measured, or ``layout`` is that teacher)."""
    return next((t for t in layouts if t.is_teacher and t.family == layout.family and t != layout), None)


def layout_list(text: str) -> list[Layout]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in LAYOUTS]
    if unknown:
        raise SystemExit(f"unknown layout(s) {', '.join(unknown)}; choose from {', '.join(LAYOUTS)}")
    return [LAYOUTS[n] for n in names]


# --------------------------------------------------------------------------- cached pipeline folders

def ensure_pipeline(workdir: Path, layout: Layout, comfy_path: Path, log: Callable[[str], None]) -> Path:
    """A random-weight pipeline folder (fp32 + fp16 files, tokenizer) for ``layout``, written
    once in a subprocess and reused by later runs."""
    target = workdir / "diffusers" / f"bench-{layout.name}"
    if (target / ".complete").is_file():
        return target
    log(f"writing random-weight pipeline {target} (once; reused by later runs)")
    start = time.perf_counter()
    run_worker(Path(__file__), {"action": "write_pipeline", "layout": layout.name, "target": str(target),
                                "tokenizer": str(comfy_path / "comfy" / "sd1_tokenizer")},
               log_path=workdir / "logs" / f"write-{layout.name}.log", timeout=3600)
    log(f"  written in {time.perf_counter() - start:.0f} s")
    return target


def _write_pipeline(spec: dict) -> dict:
    import shutil

    from random_models import write_pipeline

    layout, target = LAYOUTS[spec["layout"]], Path(spec["target"])
    partial = target.parent / f".{target.name}.partial"  # hidden: never listed as a model folder
    shutil.rmtree(partial, ignore_errors=True)
    shutil.rmtree(target, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    write_pipeline(partial, layout.family, layout.config, seed=0, fp16_variants=True,
                   tokenizer_source=Path(spec["tokenizer"]))
    for root, _, names in os.walk(partial):  # on disk before the folder is declared complete
        for name in names:
            with open(os.path.join(root, name), "rb") as f:
                os.fsync(f.fileno())
    (partial / ".complete").write_text(layout.config)
    partial.rename(target)
    return {"path": str(target)}


# --------------------------------------------------------------------------- the weight files

WEIGHT_FILES = {  # component -> (fp32 file, fp16 variant file), as nota-ai names them
    "unet": ("unet/diffusion_pytorch_model.safetensors", "unet/diffusion_pytorch_model.fp16.safetensors"),
    "text_encoder": ("text_encoder/model.safetensors", "text_encoder/model.fp16.safetensors"),
    "vae": ("vae/diffusion_pytorch_model.safetensors", "vae/diffusion_pytorch_model.fp16.safetensors"),
}


def weight_files(folder: Path) -> list[Path]:
    return [folder / f for pair in WEIGHT_FILES.values() for f in pair]


def set_page_cache(paths: Sequence[Path], warm: bool) -> None:
    """Warm: read the files once so they sit in the page cache. Cold: ask the kernel to
    drop their cached pages (POSIX_FADV_DONTNEED; needs no root and touches no other file)."""
    for path in paths:
        with open(path, "rb") as f:
            if warm:
                while f.read(64 << 20):
                    pass
            else:
                os.fsync(f.fileno())
                os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)


def diffusers_dtype(torch_dtype) -> dict:
    """``from_pretrained``'s dtype argument: ``dtype`` from diffusers 0.42 on (``torch_dtype`` is
    deprecated there and warns), ``torch_dtype`` before."""
    import diffusers
    from packaging.version import Version

    return {"dtype" if Version(diffusers.__version__) >= Version("0.42") else "torch_dtype": torch_dtype}


if __name__ == "__main__" and is_worker():  # the pipeline writer runs here, in its own process
    worker_main({"write_pipeline": _write_pipeline})
