"""The shape of an SD-family U-Net as one frozen, hashable value.

:class:`UNetSpec` holds a U-Net's structure as per-level facts (width, res blocks,
attention depth down and up) plus its family and middle block. Everything the pack
derives from a layout (the tensor walk, key map, parameter count, block map, LoRA map,
control map, teacher addresses) is a function of this value, cached with
``functools.cache`` on it. ComfyUI's own form, the ``unet_config`` dict its ``UNetModel``
takes, is derived from it when a model is built, and read back into it from a MODEL.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from ..errors import ELSEWHERE, MODEL, UnsupportedModelError

NO_MIDDLE = -2  # ComfyUI's transformer_depth_middle for "no middle block"


@dataclass(frozen=True)
class Family:
    """An SD U-Net family: its conditioning and the attention-head convention ComfyUI uses."""

    name: str
    title: str
    context_dim: int
    linear_projection: bool
    num_heads: int  # fixed head count, or -1
    head_channels: int  # fixed head width, or -1
    text_encoder: str

    def heads_fit(self, channels: int, heads: int) -> bool:
        if self.num_heads != -1:
            return heads == self.num_heads
        return heads > 0 and channels == heads * self.head_channels

    def heads(self, channels: int) -> int:
        """The head count of an attention block of this width."""
        return self.num_heads if self.num_heads != -1 else channels // self.head_channels


SD1 = Family("sd1", "SD 1.x", 768, False, 8, -1, "CLIP ViT-L/14")
SD2 = Family("sd2", "SD 2.x", 1024, True, -1, 64, "OpenCLIP ViT-H/14")
FAMILIES = {f.name: f for f in (SD1, SD2)}


@dataclass(frozen=True)
class Level:
    """One resolution level: its width, its res blocks and the attention after each of them."""

    channels: int
    res_blocks: int  # in the down stage; the up stage has one more
    down_depth: int  # transformer blocks after each down res block (0: no attention)
    up_depth: int  # the same in the up stage


@dataclass(frozen=True)
class UNetSpec:
    """An SD 1.x/2.x U-Net's structure. Equal specs build the same module tree."""

    family: Family
    levels: tuple[Level, ...]  # shallowest first
    middle_depth: int | None  # transformer blocks in the middle block; None: no middle block
    in_channels: int = 4
    out_channels: int = 4
    resolution: int | None = field(default=None, compare=False)  # native image size, when a config says

    @property
    def model_channels(self) -> int:
        return self.levels[0].channels

    @property
    def has_middle(self) -> bool:
        return self.middle_depth is not None

    def up_level(self, up_stage: int) -> Level:
        """The level of diffusers' ``up_blocks.<up_stage>`` (the up path starts at the deepest level)."""
        return self.levels[len(self.levels) - 1 - up_stage]

    def describe(self) -> str:
        middle = "middle block" if self.has_middle else "no middle block"
        res_blocks = [level.res_blocks for level in self.levels]
        return f"{self.family.title} U-Net, {len(self.levels)} levels, res blocks per level {res_blocks}, {middle}"

    @property
    def unet_config(self) -> dict:
        """ComfyUI's U-Net config, keyed and ordered as ``detect_unet_config`` returns it (a new dict:
        ComfyUI's model classes keep and extend the one they are given)."""
        mc = self.model_channels
        return {
            "use_checkpoint": False,
            "image_size": 32,
            "use_spatial_transformer": True,
            "legacy": False,
            "adm_in_channels": None,
            "in_channels": self.in_channels,
            "out_channels": self.out_channels,
            "model_channels": mc,
            "num_res_blocks": [level.res_blocks for level in self.levels],
            "transformer_depth": [level.down_depth for level in self.levels for _ in range(level.res_blocks)],
            # ComfyUI lists output depths level by level, shallowest first
            "transformer_depth_output": [level.up_depth for level in self.levels for _ in range(level.res_blocks + 1)],
            "channel_mult": [level.channels // mc for level in self.levels],
            "transformer_depth_middle": NO_MIDDLE if self.middle_depth is None else self.middle_depth,
            "use_linear_in_transformer": self.family.linear_projection,
            "context_dim": self.family.context_dim,
            "use_temporal_resblock": False,
            "use_temporal_attention": False,
        }


def spec_from_unet_config(family: Family, unet_config: Mapping, source=None, origin: str = MODEL) -> UNetSpec:
    """The spec of a ComfyUI SD U-Net config (``detect_unet_config``'s form, or a MODEL's own);
    ``origin`` (errors.FILE, FOLDER or MODEL) picks what a refusal tells the user to do."""
    c = unet_config
    mc, mults = c["model_channels"], list(c["channel_mult"])
    res_blocks = c["num_res_blocks"]
    res_blocks = [res_blocks] * len(mults) if isinstance(res_blocks, int) else list(res_blocks)
    down, up = list(c["transformer_depth"]), list(c["transformer_depth_output"])
    levels = []
    for mult, n in zip(mults, res_blocks, strict=True):
        down_depths, up_depths = down[:n], up[:n + 1]
        del down[:n], up[:n + 1]
        if len(set(down_depths)) != 1 or len(set(up_depths)) != 1:
            raise UnsupportedModelError(
                path=source, expected="the same attention depth for every block of a level, as SD U-Nets have",
                found=f"depths {down_depths} (down) and {up_depths} (up) on level {len(levels)}",
                fix=ELSEWHERE[origin])
        levels.append(Level(mult * mc, n, down_depths[0], up_depths[0]))
    middle = c["transformer_depth_middle"]
    return UNetSpec(family=family, levels=tuple(levels), middle_depth=None if middle == NO_MIDDLE else middle,
                    in_channels=c["in_channels"], out_channels=c["out_channels"])
