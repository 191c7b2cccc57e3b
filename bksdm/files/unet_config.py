"""Derive a U-Net's spec from a diffusers ``unet/config.json``.

ComfyUI's own ``UNetModel`` represents every block-removed BK-SDM layout exactly (a
per-level ``num_res_blocks``, per-block transformer depths, ``transformer_depth_middle
= -2`` for "no middle block"); what stock ComfyUI lacks is a way to get there from a
config it has never seen. This module is that way, for any SD-1.x/2.x-family
``UNet2DConditionModel``: the nine BK-SDM configs, Segmind's, and the full teachers.

The result is a :class:`~bksdm.unet_spec.UNetSpec`: the layout as per-level facts plus
the family (SD 1.x or 2.x), which decides the text encoder and ComfyUI's model class.
"""

from __future__ import annotations

import json
import os
from typing import Any

from ..errors import ELSEWHERE, FILE, FOLDER, InvalidConfigError, UnsupportedModelError
from ..layout.unet_spec import FAMILIES, Family, Level, UNetSpec

DOWN_BLOCKS = {"CrossAttnDownBlock2D": True, "DownBlock2D": False}  # type -> has attention
UP_BLOCKS = {"CrossAttnUpBlock2D": True, "UpBlock2D": False}
MID_BLOCK = "UNetMidBlock2DCrossAttn"

# Config keys whose value must be the SD default, with the default. A different value
# means a layer ComfyUI's SD U-Net does not have (or computes differently).
SD_DEFAULTS: dict[str, Any] = {
    "act_fn": "silu",
    "norm_num_groups": 32,
    "norm_eps": 1e-05,
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "time_embedding_type": "positional",
    "time_embedding_dim": None,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "time_cond_proj_dim": None,
    "class_embed_type": None,
    "num_class_embeds": None,
    "class_embeddings_concat": False,
    "projection_class_embeddings_input_dim": None,
    "addition_embed_type": None,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "resnet_time_scale_shift": "default",
    "resnet_skip_time_act": False,
    "resnet_out_scale_factor": 1.0,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "center_input_sample": False,
    "downsample_padding": 1,
    "dual_cross_attention": False,
    "mid_block_scale_factor": 1,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "attention_type": "default",
    "reverse_transformer_layers_per_block": None,
    "dropout": 0.0,
}

# How other diffusers models announce themselves, for a message that names them.
OTHER_ARCHITECTURES = {
    "SD3Transformer2DModel": "Stable Diffusion 3 (MMDiT)",
    "FluxTransformer2DModel": "Flux",
    "UNet2DModel": "an unconditional U-Net",
    "UNetSpatioTemporalConditionModel": "Stable Video Diffusion",
    "PixArtTransformer2DModel": "PixArt",
}

# A config.json is always part of a diffusers folder.
SEE_ALSO = ELSEWHERE[FOLDER]
# SDXL, the one family people often mistake for SD, by what ComfyUI's loaders read of it.
SDXL_ELSEWHERE = {
    FILE: "load SDXL files with ComfyUI's own Load Checkpoint (a whole checkpoint, in models/checkpoints) or "
          "Load Diffusion Model (a U-Net alone, in models/diffusion_models)",
    FOLDER: "load SDXL with ComfyUI's own loaders: Load Diffusers Model reads a whole SDXL pipeline folder in "
            "models/diffusers, Load Diffusion Model an SDXL U-Net's diffusion_pytorch_model.safetensors in "
            "models/diffusion_models, Load Checkpoint a single-file SDXL checkpoint",
}


def read_config(path: str | os.PathLike) -> dict:
    """Read a JSON config, turning every way it can be wrong into one clear error."""
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except FileNotFoundError:
        raise InvalidConfigError(path=path, expected="a JSON config file", found="no such file",
                                 fix="re-download the model folder; it is incomplete") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise InvalidConfigError(path=path, expected="valid JSON", found=f"unparsable content ({e})",
                                 fix="re-download this file; it is corrupt or not JSON") from None
    if not isinstance(config, dict):
        raise InvalidConfigError(path=path, expected="a JSON object", found=f"a JSON {type(config).__name__}",
                                 fix="re-download this file; it is not a diffusers config")
    return config


def family_for_context_dim(context_dim: int, source, origin: str) -> Family:
    """The family of a cross-attention width; ``origin`` (errors.FILE or FOLDER) picks the fix."""
    for family in FAMILIES.values():
        if family.context_dim == context_dim:
            return family
    if context_dim == 2048:
        raise UnsupportedModelError(path=source, expected="an SD 1.x or 2.x U-Net (cross-attention width 768 or 1024)",
                                    found="an SDXL U-Net (cross-attention width 2048)", fix=SDXL_ELSEWHERE[origin])
    raise UnsupportedModelError(path=source, expected="cross-attention width 768 (SD 1.x) or 1024 (SD 2.x)",
                                found=f"cross-attention width {context_dim}",
                                fix="this U-Net belongs to another model family; " + ELSEWHERE[origin])


def spec_from_diffusers_config(config: dict, source: str | os.PathLike | None = None) -> UNetSpec:
    """Derive the :class:`UNetSpec` of a diffusers ``UNet2DConditionModel`` config.

    Raises :class:`UnsupportedModelError` for anything ComfyUI's SD U-Net cannot
    represent exactly, rather than building a model that is subtly wrong.
    """
    _check_class(config, source)
    # The family first: an SDXL config fails many checks below, but this one names it.
    context_dim = config.get("cross_attention_dim", 1280)
    if not isinstance(context_dim, int) or isinstance(context_dim, bool):
        _unsupported_value(config, "cross_attention_dim", "one integer", source)
    family = family_for_context_dim(context_dim, source, FOLDER)
    channels = _int_list(config, "block_out_channels", source)
    n_levels = len(channels)
    down_types = _str_list(config, "down_block_types", n_levels, source)
    up_types = _str_list(config, "up_block_types", n_levels, source)
    down_attention = [_block_has_attention(t, DOWN_BLOCKS, "down_block_types", source) for t in down_types]
    up_attention = [_block_has_attention(t, UP_BLOCKS, "up_block_types", source) for t in up_types]
    num_res_blocks = _per_level(config, "layers_per_block", n_levels, source, default=2)
    transformer_layers = _per_level(config, "transformer_layers_per_block", n_levels, source, default=1)
    for key, value in SD_DEFAULTS.items():
        _check_default(config, key, value, source)
    if any(_as_list(config.get("only_cross_attention", False))):
        _unsupported_value(config, "only_cross_attention", "false", source)

    if any(c % channels[0] for c in channels):
        raise UnsupportedModelError(path=source, expected="block_out_channels that are multiples of the first",
                                    found=f"block_out_channels {channels}",
                                    fix="this is not an SD-family U-Net; " + SEE_ALSO)
    in_channels = _int(config, "in_channels", source, default=4)
    out_channels = _int(config, "out_channels", source, default=4)
    if (in_channels, out_channels) != (4, 4):
        raise UnsupportedModelError(path=source, expected="a text-to-image U-Net with 4 latent channels in and out",
                                    found=f"in_channels {in_channels}, out_channels {out_channels} "
                                    "(an inpainting or image-conditioned U-Net)", fix=SEE_ALSO)

    linear = config.get("use_linear_projection", False)
    if linear is not family.linear_projection:
        _unsupported_value(config, "use_linear_projection",
                           f"{json.dumps(family.linear_projection)} for an {family.title} U-Net", source)

    middle = _middle_depth(config, transformer_layers[-1], source)
    if not any(down_attention) and not any(up_attention) and middle is None:
        raise UnsupportedModelError(path=source, expected="an SD U-Net with cross-attention (text conditioning)",
                                    found="no CrossAttn blocks and no middle block", fix=SEE_ALSO)
    _check_heads(config, family, channels, down_attention, up_attention, middle is not None, source)

    levels = tuple(
        Level(channels=channels[level], res_blocks=num_res_blocks[level],
              down_depth=transformer_layers[level] if down_attention[level] else 0,
              up_depth=transformer_layers[level] if up_attention[n_levels - 1 - level] else 0)
        for level in range(n_levels))
    sample_size = config.get("sample_size")
    resolution = sample_size * 8 if isinstance(sample_size, int) else None
    return UNetSpec(family=family, levels=levels, middle_depth=middle,
                    in_channels=in_channels, out_channels=out_channels, resolution=resolution)


def spec_from_config_file(path: str | os.PathLike) -> UNetSpec:
    return spec_from_diffusers_config(read_config(path), path)


# --- helpers -------------------------------------------------------------------------


def _check_class(config: dict, source) -> None:
    name = config.get("_class_name", "UNet2DConditionModel")
    if name == "UNet2DConditionModel":
        return
    what = OTHER_ARCHITECTURES.get(name, f"a '{name}' model")
    raise UnsupportedModelError(path=source, expected="a diffusers UNet2DConditionModel config (SD 1.x / 2.x family)",
                                found=f"{what} (_class_name '{name}')", fix=SEE_ALSO)


def _found(config: dict, key: str) -> str:
    return f"'{key}': {json.dumps(config[key])}" if key in config else f"no '{key}'"


def _unsupported_value(config: dict, key: str, expected: str, source):
    raise UnsupportedModelError(path=source, expected=f"'{key}' {expected}", found=_found(config, key),
                                fix="this U-Net has layers ComfyUI's SD U-Net does not; " + SEE_ALSO)


def _check_default(config: dict, key: str, default, source) -> None:
    value = config.get(key, default)
    same = value == default and type(value) is type(default) if isinstance(default, bool) else value == default
    if not same:
        _unsupported_value(config, key, json.dumps(default), source)


def _int(config: dict, key: str, source, default: int) -> int:
    value = config.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise InvalidConfigError(path=source, expected=f"'{key}' a positive integer", found=_found(config, key),
                                 fix="re-download the config; it is damaged")
    return value


def _int_list(config: dict, key: str, source) -> list[int]:
    value = config.get(key)
    if (not isinstance(value, list) or not value
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value)):
        raise InvalidConfigError(path=source, expected=f"'{key}' a non-empty list of positive integers",
                                 found=_found(config, key),
                                 fix="re-download the config; it is damaged or not a U-Net config")
    return value


def _str_list(config: dict, key: str, length: int, source) -> list[str]:
    value = config.get(key)
    if not isinstance(value, list) or len(value) != length or not all(isinstance(v, str) for v in value):
        raise InvalidConfigError(path=source, expected=f"'{key}' a list of {length} block type names (one per level)",
                                 found=_found(config, key), fix="re-download the config; it is damaged")
    return value


def _block_has_attention(block_type: str, known: dict[str, bool], key: str, source) -> bool:
    if block_type not in known:
        raise UnsupportedModelError(path=source, expected=f"'{key}' entries from {sorted(known)}",
                                    found=f"block type '{block_type}'",
                                    fix="this U-Net has blocks ComfyUI's SD U-Net does not; " + SEE_ALSO)
    return known[block_type]


def _as_list(value) -> list:
    return value if isinstance(value, list) else [value]


def _per_level(config: dict, key: str, levels: int, source, default: int) -> list[int]:
    value = config.get(key, default)
    values = [value] * levels if isinstance(value, int) and not isinstance(value, bool) else value
    if (not isinstance(values, list) or len(values) != levels
            or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in values)):
        raise UnsupportedModelError(path=source, expected=f"'{key}' a positive integer or one per level ({levels})",
                                    found=_found(config, key), fix=SEE_ALSO)
    return values


def _middle_depth(config: dict, depth: int, source) -> int | None:
    # diffusers: an absent key means the default middle block, null means none.
    mid_type = config.get("mid_block_type", MID_BLOCK)
    if mid_type is None:
        return None
    if mid_type != MID_BLOCK:
        _unsupported_value(config, "mid_block_type", f"'{MID_BLOCK}' or null", source)
    return depth


def _check_heads(config, family: Family, channels, down_attention, up_attention, has_middle, source) -> None:
    # diffusers' "attention_head_dim" is really the head count (a long-standing misnomer);
    # newer configs may say "num_attention_heads" instead.
    heads = config.get("num_attention_heads") or config.get("attention_head_dim", 8)
    key = "num_attention_heads" if config.get("num_attention_heads") else "attention_head_dim"
    per_level = _as_list(heads) * (len(channels) if not isinstance(heads, list) else 1)
    if len(per_level) != len(channels) or not all(isinstance(h, int) and not isinstance(h, bool) for h in per_level):
        raise InvalidConfigError(path=source, expected=f"'{key}' an integer or one per level ({len(channels)})",
                                 found=_found(config, key), fix="re-download the config; it is damaged")
    attended = [lvl for lvl in range(len(channels)) if down_attention[lvl] or up_attention[len(channels) - 1 - lvl]]
    if has_middle:
        attended.append(len(channels) - 1)
    for level in attended:
        if not family.heads_fit(channels[level], per_level[level]):
            convention = (f"{family.num_heads} heads" if family.num_heads != -1
                          else f"{family.head_channels}-channel heads")
            raise UnsupportedModelError(path=source, expected=f"{convention}, as every {family.title} U-Net has",
                                        found=f"{_found(config, key)} for block_out_channels {channels}",
                                        fix=f"ComfyUI's {family.title} model class fixes the attention heads; "
                                        + SEE_ALSO)
