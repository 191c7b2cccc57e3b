"""The published BK-SDM checkpoints and the block layouts they share.

Facts from the BK-SDM paper (arXiv 2305.15798), its repository and the model cards.
Weights are CreativeML Open RAIL-M: the pack links to them and downloads them on
request, it never redistributes them.
"""

from __future__ import annotations

from dataclasses import dataclass

from .unet_config import NO_MIDDLE, UNetSpec


@dataclass(frozen=True)
class Layout:
    """A U-Net block structure: res blocks per level and whether there is a middle block."""

    name: str
    num_res_blocks: tuple[int, ...]
    middle: bool
    summary: str


LAYOUTS = {
    layout.name: layout
    for layout in (
        Layout("teacher", (2, 2, 2, 2), True, "the full SD 1.x / 2.x U-Net"),
        Layout("base", (1, 1, 1, 1), True, "one res block per level removed (BK-Base)"),
        Layout("small", (1, 1, 1, 1), False, "BK-Base without the middle block (BK-Small)"),
        Layout("tiny", (1, 1, 1), False, "BK-Small without the lowest-resolution level (BK-Tiny)"),
    )
}


def classify_layout(spec: UNetSpec) -> str:
    """The layout name of a U-Net ('base', 'small', 'tiny', 'teacher') or 'custom'."""
    c = spec.unet_config
    for layout in LAYOUTS.values():
        levels = len(layout.num_res_blocks)
        # The SD attention pattern: cross-attention on every level but the lowest of four.
        attention = [1] * 3 + [0] * (levels - 3)
        if (tuple(c["num_res_blocks"]) == layout.num_res_blocks
                and (c["transformer_depth_middle"] != NO_MIDDLE) == layout.middle
                and c["channel_mult"] == [1, 2, 4, 4][:levels] and c["model_channels"] == 320
                and c["transformer_depth"] == [d for d, r in zip(attention, layout.num_res_blocks, strict=True)
                                               for _ in range(r)]
                and c["transformer_depth_output"] == [d for d, r in zip(attention, layout.num_res_blocks, strict=True)
                                                      for _ in range(r + 1)]):
            return layout.name
    return "custom"


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
