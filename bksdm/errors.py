"""The pack's one error family.

Every message answers four questions a user asks when a loader fails: which file,
what the pack expected there, what it found, and what to do about it. The four are
keyword-only, so no raise site can swap them. ComfyUI shows
the message as the node's error; the server keeps running.
"""

from __future__ import annotations

import os


class BKSDMError(Exception):
    """Base class: a failure the user can act on."""

    title = "cannot use this model"

    def __init__(self, *, path: str | os.PathLike | None, expected: str, found: str, fix: str):
        self.path = os.fspath(path) if path is not None else None
        self.expected = expected
        self.found = found
        self.fix = fix
        super().__init__(str(self))

    def __str__(self) -> str:
        where = f" {self.path}" if self.path else ""
        return (
            f"BK-SDM: {self.title}:{where}\n"
            f"  expected: {self.expected}\n"
            f"  found:    {self.found}\n"
            f"  fix:      {self.fix}"
        )

    def __reduce__(self):  # keep the fields when the error crosses a process boundary
        return (_rebuild, (type(self), self.path, self.expected, self.found, self.fix))


class ModelNotFoundError(BKSDMError):
    title = "model not found"


class InvalidFileError(BKSDMError):
    """A file that cannot be read safely: truncated, corrupt, lying header, unsafe pickle."""

    title = "unreadable model file"


class InvalidConfigError(BKSDMError):
    title = "invalid model config"


class UnsupportedModelError(BKSDMError):
    """A readable model this pack does not handle (another architecture, unknown blocks)."""

    title = "unsupported model"


class WeightsMismatchError(BKSDMError):
    """Weights that do not fit the layout: missing, unexpected or misshapen tensors."""

    title = "weights do not match the model layout"


class PatchMisfitError(BKSDMError):
    """A model patch (another node's) whose weights do not fit the block it would run at."""

    title = "a model patch does not fit this U-Net"


class DownloadError(BKSDMError):
    title = "download failed"


class ExportError(BKSDMError):
    title = "cannot write the file"


# Where a model this pack refuses can load instead, by what the user gave the pack. ComfyUI's
# own loaders read single files; its one node for a diffusers folder, Load Diffusers Model
# (DiffusersLoader, deprecated), reads a pipeline folder's unet/ (never a transformer/) and only
# a U-Net its comfy/model_detection.py recognises (SD 1.x/2.x, SDXL and its distillations).
FILE, FOLDER, MODEL = "file", "folder", "model"
ELSEWHERE = {
    FILE: "if ComfyUI supports this model, load the file with ComfyUI's own Load Checkpoint (a whole checkpoint, "
          "in models/checkpoints) or Load Diffusion Model (a U-Net or transformer alone, in models/diffusion_models)",
    FOLDER: "if ComfyUI supports this model, use ComfyUI's own loaders: Load Diffusers Model reads a pipeline folder "
            "in models/diffusers whose unet/ ComfyUI recognises (SD 1.x/2.x, SDXL; not SD3 or Flux), Load Diffusion "
            "Model a U-Net or transformer file in models/diffusion_models, Load Checkpoint a single-file checkpoint",
    MODEL: "connect the MODEL of a BK-SDM loader (this node reads SD 1.x/2.x U-Net layouts only)",
}


def _rebuild(cls: type[BKSDMError], path, expected, found, fix) -> BKSDMError:
    return cls(path=path, expected=expected, found=found, fix=fix)


def summarize(names, limit: int = 6) -> str:
    """A short, stable listing of names for error messages ('a, b, c and 12 more')."""
    names = sorted(names)
    if len(names) <= limit:
        return ", ".join(names)
    return f"{', '.join(names[:limit])} and {len(names) - limit} more"
