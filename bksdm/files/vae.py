"""VAE weights: check an SD VAE is complete before ComfyUI builds it.

BK-SDM uses its teacher's VAE unchanged (AutoencoderKL, channels 128/256/512/512, two
res blocks per level, 4 latent channels). ComfyUI converts diffusers names itself, but
a missing tensor there is only a warning and decodes garbage, so the set is checked here.
"""

from __future__ import annotations

from collections.abc import Mapping

from ..errors import WeightsMismatchError
from ..layout.unet_keys import check_tensors

CHANNELS = (128, 256, 512, 512)
LAYERS = 2
LATENT = 4

# Attention names diffusers used before 0.14; ComfyUI reads both.
OLD_ATTENTION_NAMES = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}


def _resnet(prefix: str, cin: int, cout: int, shortcut: str) -> dict:
    out = {f"{prefix}.norm1.weight": (cin,), f"{prefix}.norm1.bias": (cin,),
           f"{prefix}.conv1.weight": (cout, cin, 3, 3), f"{prefix}.conv1.bias": (cout,),
           f"{prefix}.norm2.weight": (cout,), f"{prefix}.norm2.bias": (cout,),
           f"{prefix}.conv2.weight": (cout, cout, 3, 3), f"{prefix}.conv2.bias": (cout,)}
    if cin != cout:
        out[f"{prefix}.{shortcut}.weight"], out[f"{prefix}.{shortcut}.bias"] = (cout, cin, 1, 1), (cout,)
    return out


def _conv(prefix: str, cin: int, cout: int, k: int = 3) -> dict:
    return {f"{prefix}.weight": (cout, cin, k, k), f"{prefix}.bias": (cout,)}


def _middle(prefix: str, naming: str) -> dict:
    c = CHANNELS[-1]
    if naming == "diffusers":
        names = ("resnets.0", "resnets.1", "attentions.0", "group_norm", ("to_q", "to_k", "to_v", "to_out.0"))
        proj = (c, c)
    else:
        names = ("block_1", "block_2", "attn_1", "norm", ("q", "k", "v", "proj_out"))
        proj = (c, c, 1, 1)
    first, second, attn, norm, projections = names
    out = {**_resnet(f"{prefix}.{first}", c, c, ""), **_resnet(f"{prefix}.{second}", c, c, "")}
    out[f"{prefix}.{attn}.{norm}.weight"] = out[f"{prefix}.{attn}.{norm}.bias"] = (c,)
    for p in projections:
        out[f"{prefix}.{attn}.{p}.weight"], out[f"{prefix}.{attn}.{p}.bias"] = proj, (c,)
    return out


def vae_tensors(naming: str) -> dict[str, tuple[int, ...]]:
    """Every tensor of the SD VAE, under diffusers or LDM (ComfyUI checkpoint) names."""
    diffusers = naming == "diffusers"
    mid = "mid_block" if diffusers else "mid"
    shortcut = "conv_shortcut" if diffusers else "nin_shortcut"
    out = {**_conv("encoder.conv_in", 3, CHANNELS[0]), **_conv("quant_conv", 2 * LATENT, 2 * LATENT, 1),
           **_conv("post_quant_conv", LATENT, LATENT, 1), **_conv("decoder.conv_in", LATENT, CHANNELS[-1])}
    ch = CHANNELS[0]
    for i, cout in enumerate(CHANNELS):
        for j in range(LAYERS):
            block = f"encoder.down_blocks.{i}.resnets.{j}" if diffusers else f"encoder.down.{i}.block.{j}"
            out.update(_resnet(block, ch, cout, shortcut))
            ch = cout
        if i < len(CHANNELS) - 1:
            down = f"encoder.down_blocks.{i}.downsamplers.0.conv" if diffusers else f"encoder.down.{i}.downsample.conv"
            out.update(_conv(down, ch, ch))
    out.update(_middle(f"encoder.{mid}", naming))
    for part, width, cout in (("encoder", CHANNELS[-1], 2 * LATENT), ("decoder", CHANNELS[0], 3)):
        norm = "conv_norm_out" if diffusers else "norm_out"
        out[f"{part}.{norm}.weight"] = out[f"{part}.{norm}.bias"] = (width,)
        out.update(_conv(f"{part}.conv_out", width, cout))
    out.update(_middle(f"decoder.{mid}", naming))
    ch = CHANNELS[-1]
    for i, cout in enumerate(reversed(CHANNELS)):
        level = len(CHANNELS) - 1 - i  # LDM numbers decoder levels from the bottom
        for j in range(LAYERS + 1):
            block = f"decoder.up_blocks.{i}.resnets.{j}" if diffusers else f"decoder.up.{level}.block.{j}"
            out.update(_resnet(block, ch, cout, shortcut))
            ch = cout
        if i < len(CHANNELS) - 1:
            up = f"decoder.up_blocks.{i}.upsamplers.0.conv" if diffusers else f"decoder.up.{level}.upsample.conv"
            out.update(_conv(up, ch, ch))
    return out


def _modern_names(sd: Mapping) -> dict:
    renamed = {}
    for k, v in sd.items():
        parts = k.split(".")
        if "attentions" in parts and len(parts) > 2 and parts[-2] in OLD_ATTENTION_NAMES:
            k = ".".join([*parts[:-2], OLD_ATTENTION_NAMES[parts[-2]], parts[-1]])
        renamed[k] = v
    return renamed


def check_vae(state_dict: Mapping, source) -> None:
    """Raise unless ``state_dict`` is a complete SD VAE (diffusers or LDM names)."""
    if "decoder.up_blocks.0.resnets.0.norm1.weight" in state_dict:
        naming, found = "diffusers", _modern_names(state_dict)
    elif "decoder.up.0.block.0.norm1.weight" in state_dict:
        naming, found = "ldm", state_dict
    else:
        raise WeightsMismatchError(path=source, expected="an SD VAE (AutoencoderKL)",
                                   found=f"{len(state_dict)} tensors of something else",
                                   fix="download the model again: its VAE is damaged or something else is in its "
                                   "place")
    expected = vae_tensors(naming)
    check_tensors({k: tuple(v.shape) for k, v in found.items() if k in expected}, expected, source, "the SD VAE")


def split_checkpoint_vae(checkpoint: Mapping) -> dict:
    prefix = "first_stage_model."
    return {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
