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
"""

from __future__ import annotations

from pathlib import Path

import torch

KINDS = {"v1": (False, 24), "v2": (True, 32), "animatelcm": (True, None)}  # middle module, frames encoded
SD15_LEVELS = (320, 640, 1280, 1280)
DOWN_MODULES, UP_MODULES = 2, 3  # per level: one per res block of SD-1.5's encoder and decoder


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
    places = [(f"down_blocks.{lvl}", c, DOWN_MODULES) for lvl, c in enumerate(SD15_LEVELS)]
    places += [(f"up_blocks.{lvl}", c, UP_MODULES) for lvl, c in enumerate(reversed(SD15_LEVELS))]
    places += [("mid_block", SD15_LEVELS[-1], 1)] if middle else []
    return {f"{place}.motion_modules.{i}.{name}": shape
            for place, channels, count in places for i in range(count)
            for name, shape in module_shapes(channels, frames).items()}


def write_motion_module(path: Path, kind: str, seed: int) -> Path:
    """A random motion-module file of ``kind`` in half precision, as the published files are.
    Norms are near one and the rest small, so a module changes its block's output without
    drowning it."""
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(seed)
    tensors = {}
    for name, shape in motion_module_shapes(kind).items():
        value = torch.randn(shape, generator=g) * 0.02
        if name.endswith("norm.weight") or (".norms." in name and name.endswith(".weight")):
            value += 1
        tensors[name] = value.half()
    save_file(tensors, str(path))
    return path
