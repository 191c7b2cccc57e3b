"""Random-weight SD-1.5 AnimateDiff motion-module files, with the real files' tensor names and shapes.

The layout is the original AnimateDiff one (guoyww/AnimateDiff, ``motion_module.py``: a
``VanillaTemporalModule`` per res block of the teacher, one temporal transformer block, two
temporal self-attentions with 8 heads, a GEGLU feed-forward four times as wide), which every SD-1.5
motion-module file for ComfyUI shares. What tells the kinds apart is which tensors are there:

- ``v1``: mm_sd_v14 / mm_sd_v15: no middle module, positional encodings for 24 frames;
- ``v2``: mm_sd_v15_v2: a middle module, encodings for 32 frames (v3_sd15_mm is ``v1``-shaped
  with 32);
- ``animatelcm``: AnimateLCM's t2v module: ``v2``-shaped without positional encodings.

AnimateDiff-Evolved checks a loaded file against its own modules (missing and unexpected tensors
are errors there), which holds these names to its reading of the real files.

Also here, with the same names: AnimateLCM-I2V's image encoder (an adapter of two res blocks per
level, ``img_encoder.*``, beside the ``animatelcm`` modules), a motion LoRA (the AnimateDiff v2
LoRAs' layout: a low-rank pair per temporal attention projection) and the motion modules of a
SparseCtrl file (AnimateDiff v3's SparseCtrl: the encoder's modules only, encodings for 32 frames).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

KINDS = {"v1": (False, 24), "v2": (True, 32), "animatelcm": (True, None)}  # middle module, frames encoded
SD15_LEVELS = (320, 640, 1280, 1280)
DOWN_MODULES, UP_MODULES = 2, 3  # per level: one per res block of SD-1.5's encoder and decoder
PROJECTION = re.compile(r"(?P<attention>.+\.attention_blocks\.\d+)\.(?P<projection>to_[qkv]|to_out)(\.0)?\.weight")


def module_shapes(channels: int, frames: int | None) -> dict[str, tuple[int, ...]]:
    """One VanillaTemporalModule's tensors, named as in the files."""
    c = channels
    shapes = {"norm.weight": (c,), "norm.bias": (c,), "proj_in.weight": (c, c), "proj_in.bias": (c,)}
    block = "transformer_blocks.0"
    for attention in (0, 1):
        prefix = f"{block}.attention_blocks.{attention}"
        shapes |= {f"{prefix}.{name}.weight": (c, c) for name in ("to_q", "to_k", "to_v", "to_out.0")}
        shapes[f"{prefix}.to_out.0.bias"] = (c,)
        if frames is not None:
            shapes[f"{prefix}.pos_encoder.pe"] = (1, frames, c)
        shapes |= {f"{block}.norms.{attention}.weight": (c,), f"{block}.norms.{attention}.bias": (c,)}
    shapes |= {f"{block}.ff.net.0.proj.weight": (8 * c, c), f"{block}.ff.net.0.proj.bias": (8 * c,),
               f"{block}.ff.net.2.weight": (c, 4 * c), f"{block}.ff.net.2.bias": (c,),
               f"{block}.ff_norm.weight": (c,), f"{block}.ff_norm.bias": (c,),
               "proj_out.weight": (c, c), "proj_out.bias": (c,)}
    return {f"temporal_transformer.{name}": shape for name, shape in shapes.items()}


def motion_module_shapes(kind: str) -> dict[str, tuple[int, ...]]:
    middle, frames = KINDS[kind]
    return _shapes(middle, frames, decoder=True)


def _shapes(middle: bool, frames: int | None, decoder: bool) -> dict[str, tuple[int, ...]]:
    places = [(f"down_blocks.{lvl}", c, DOWN_MODULES) for lvl, c in enumerate(SD15_LEVELS)]
    if decoder:
        places += [(f"up_blocks.{lvl}", c, UP_MODULES) for lvl, c in enumerate(reversed(SD15_LEVELS))]
    places += [("mid_block", SD15_LEVELS[-1], 1)] if middle else []
    return {f"{place}.motion_modules.{i}.{name}": shape
            for place, channels, count in places for i in range(count)
            for name, shape in module_shapes(channels, frames).items()}


def random_motion_tensors(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Random tensors of the given names and shapes in half precision, as the published files are.
    Norms are near one and the rest small, so a module changes its block's output without
    drowning it."""
    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in shapes.items():
        value = torch.randn(shape, generator=g) * 0.02
        if name.endswith("norm.weight") or (".norms." in name and name.endswith(".weight")):
            value += 1
        tensors[name] = value.half()
    return tensors


def image_encoder_shapes() -> dict[str, tuple[int, ...]]:
    """AnimateLCM-I2V's image encoder: a 3x3 convolution from the 4 latent channels, then two res
    blocks per SD level (the first of a new width with a 1x1 convolution into it, none with a skip
    convolution), each a 3x3 and a 1x1 convolution."""
    shapes = {"img_encoder.conv_in.weight": (SD15_LEVELS[0], 4, 3, 3), "img_encoder.conv_in.bias": (SD15_LEVELS[0],)}
    previous = SD15_LEVELS[0]
    for level, width in enumerate(SD15_LEVELS):
        for block in range(2):
            prefix = f"img_encoder.body.{level * 2 + block}"
            if block == 0 and previous != width:
                shapes |= {f"{prefix}.in_conv.weight": (width, previous, 1, 1), f"{prefix}.in_conv.bias": (width,)}
            shapes |= {f"{prefix}.block1.weight": (width, width, 3, 3), f"{prefix}.block1.bias": (width,),
                       f"{prefix}.block2.weight": (width, width, 1, 1), f"{prefix}.block2.bias": (width,)}
        previous = width
    return shapes


def write_motion_module(path: Path, kind: str, seed: int, image_encoder: bool = False) -> Path:
    """A random motion-module file of ``kind``; with ``image_encoder``, AnimateLCM-I2V's."""
    from safetensors.torch import save_file

    shapes = motion_module_shapes(kind) | (image_encoder_shapes() if image_encoder else {})
    save_file(random_motion_tensors(shapes, seed), str(path))
    return path


def sparsectrl_motion_tensors(seed: int) -> dict[str, torch.Tensor]:
    """The motion modules of a SparseCtrl file: the encoder's eight, v3's 32 encoded frames, named
    as the ControlNet's own down blocks (the file holds both)."""
    return random_motion_tensors(_shapes(middle=False, frames=32, decoder=False), seed)


def motion_lora_prefix(name: str) -> str | None:
    """The name a motion LoRA gives the low-rank pair for motion-module tensor ``name``; None for a
    tensor no motion LoRA touches."""
    found = PROJECTION.fullmatch(name)
    return found and f"{found['attention']}.processor.{found['projection']}_lora"


def write_motion_lora(path: Path, kind: str, rank: int, seed: int) -> Path:
    """A random motion LoRA for a ``kind`` motion model: for every temporal attention projection a
    ``<prefix>.{down,up}.weight`` pair of ``rank``, as the AnimateDiff v2 LoRAs name them."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in motion_module_shapes(kind).items():
        if (prefix := motion_lora_prefix(name)) is not None:
            rows, columns = shape
            tensors[f"{prefix}.down.weight"] = (torch.randn(rank, columns, generator=g) * 0.1).half()
            tensors[f"{prefix}.up.weight"] = (torch.randn(rows, rank, generator=g) * 0.1).half()
    save_file(tensors, str(path))
    return path
