"""The published BK-SDM checkpoints and the block layouts they share.

Facts from the BK-SDM paper (arXiv 2305.15798), its repository and the model cards.
Weights are CreativeML Open RAIL-M: the pack links to them and downloads them on
request, it never redistributes them.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .unet_spec import Family, Level, UNetSpec

SD_CHANNELS = (320, 640, 1280, 1280)  # every SD 1.x/2.x U-Net's level widths


@dataclass(frozen=True)
class Layout:
    """A U-Net block structure: res blocks per level and whether there is a middle block."""

    name: str
    num_res_blocks: tuple[int, ...]
    middle: bool
    summary: str

    def spec(self, family: Family) -> UNetSpec:
        """This layout's U-Net in ``family``, with SD's widths and SD's attention pattern:
        cross-attention on every level but the lowest of four."""
        levels = tuple(Level(SD_CHANNELS[lvl], res_blocks, int(lvl < 3), int(lvl < 3))
                       for lvl, res_blocks in enumerate(self.num_res_blocks))
        return UNetSpec(family=family, levels=levels, middle_depth=1 if self.middle else None)


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("teacher", (2, 2, 2, 2), True, "the full SD 1.x / 2.x U-Net"),
        Layout("base", (1, 1, 1, 1), True, "one res block per level removed (BK-Base)"),
        Layout("small", (1, 1, 1, 1), False, "BK-Base without the middle block (BK-Small)"),
        Layout("tiny", (1, 1, 1), False, "BK-Small without the lowest-resolution level (BK-Tiny)"),
    )
}


@cache
def classify_layout(spec: UNetSpec) -> str:
    """The layout name of a U-Net ('base', 'small', 'tiny', 'teacher') or 'custom'."""
    return next((layout.name for layout in LAYOUTS.values() if spec == layout.spec(spec.family)), "custom")


def teacher_spec(student: UNetSpec) -> UNetSpec:
    """The full SD U-Net of the student's family (SD-v1.4/1.5 or SD-v2.x)."""
    return LAYOUTS["teacher"].spec(student.family)


@dataclass(frozen=True)
class Variant:
    repo_id: str
    family: str  # "sd1" | "sd2"
    layout: str
    teacher: str
    prediction: str = "epsilon"
    resolution: int = 512
    unet_params: int | None = None  # exact, from the real config
    note: str = ""

    @property
    def folder_name(self) -> str:
        """The short folder name the pack downloads it to."""
        return self.repo_id.split("/", 1)[1]


_PARAMS = {("sd1", "base"): 579_384_964, ("sd1", "small"): 482_346_884, ("sd1", "tiny"): 323_384_964,
           ("sd2", "base"): 583_480_964, ("sd2", "small"): 485_787_524, ("sd2", "tiny"): 326_825_604}


def _nota(name: str, family: str, layout: str, note: str) -> Variant:
    teacher = "SD-v1.4" if family == "sd1" else "SD-v2.1-base"
    return Variant(f"nota-ai/{name}", family, layout, teacher, unet_params=_PARAMS[family, layout], note=note)


VARIANTS = {
    v.repo_id: v
    for v in (
        _nota("bk-sdm-base", "sd1", "base", "0.22 M training pairs"),
        _nota("bk-sdm-small", "sd1", "small", "0.22 M training pairs"),
        _nota("bk-sdm-tiny", "sd1", "tiny", "0.22 M training pairs"),
        _nota("bk-sdm-base-2m", "sd1", "base", "2.3 M training pairs"),
        _nota("bk-sdm-small-2m", "sd1", "small", "2.3 M training pairs"),
        _nota("bk-sdm-tiny-2m", "sd1", "tiny", "2.3 M training pairs"),
        _nota("bk-sdm-v2-base", "sd2", "base", "0.22 M training pairs"),
        _nota("bk-sdm-v2-small", "sd2", "small", "0.22 M training pairs"),
        _nota("bk-sdm-v2-tiny", "sd2", "tiny", "0.22 M training pairs"),
        Variant("segmind/small-sd", "sd1", "base", "an SD-1.5 fine-tune", unet_params=_PARAMS["sd1", "base"],
                note="Segmind's distillation, BK-Base layout"),
        Variant("segmind/tiny-sd", "sd1", "tiny", "an SD-1.5 fine-tune", unet_params=_PARAMS["sd1", "tiny"],
                note="Segmind's distillation, BK-Tiny layout"),
    )
}


def find_variant(name: str) -> Variant | None:
    """A registry entry by repo id ('nota-ai/bk-sdm-small') or short name ('bk-sdm-small')."""
    if name in VARIANTS:
        return VARIANTS[name]
    matches = [v for v in VARIANTS.values() if v.folder_name == name]
    return matches[0] if len(matches) == 1 else None
