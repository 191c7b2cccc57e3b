"""Test-only model pieces: the conversion script's block numbering, and random ControlNet,
T2I-Adapter and IP-Adapter weights.

The random-weight reference models and pipeline folders the tests share with the
benchmarks are in ``random_models``; the names the tests import from here are re-exported.
"""

from __future__ import annotations

import re

import torch

from random_models import (  # noqa: F401  (re-exported: the tests import these from here)
    BK_CONFIGS,
    TEACHER_CONFIGS,
    TEXT_ENCODER_CONFIGS,
    random_text_encoder,
    random_unet,
    random_vae,
    randomize_,
    text_encoder_state_dict,
    unet_config,
    write_pipeline,
    write_unet_folder,
)

# The block numbering of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py,
# written out independently: it hard-codes the teacher (two res blocks per level).
SCRIPT_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
SCRIPT_STEM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def script_name(key: str) -> str:
    if (m := re.fullmatch(r"(.*)\.(weight|bias)", key)) and m.group(1) in SCRIPT_STEM:
        return f"{SCRIPT_STEM[m.group(1)]}.{m.group(2)}"
    if m := re.fullmatch(r"(down_blocks|up_blocks|mid_block)\.(?:(\d)\.)?resnets\.(\d)\.(\w+)\.(.*)", key):
        kind, i, j, layer, rest = m.groups()
        j, layer = int(j), SCRIPT_RESNET[layer]
        level = int(i or 0)
        block = {"down_blocks": f"input_blocks.{3 * level + j + 1}.0", "up_blocks": f"output_blocks.{3 * level + j}.0",
                 "mid_block": f"middle_block.{2 * j}"}[kind]
        return f"{block}.{layer}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.attentions\.(\d)\.(.*)", key):
        return f"input_blocks.{3 * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.attentions\.(\d)\.(.*)", key):
        return key if m[1] == "0" else f"output_blocks.{3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{3 * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.(.*)", key):
        return f"output_blocks.{3 * int(m[1]) + 2}.{1 if m[1] == '0' else 2}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    raise AssertionError(key)


def gapped_checkpoint(checkpoint: dict, spec) -> dict:
    """A contiguous single-file checkpoint renamed to the conversion script's numbering."""
    from bksdm.files.detect import LDM_PREFIX
    from bksdm.layout.unet_keys import unet_tensors

    to_diffusers = {LDM_PREFIX + t.ldm: t.diffusers for t in unet_tensors(spec)}
    return {LDM_PREFIX + script_name(to_diffusers[k]) if k in to_diffusers else k: v for k, v in checkpoint.items()}


def random_controlnet(family: str, seed: int = 3, conditioning_channels: int = 3):
    """An SD-1.x- or SD-2.x-shaped ControlNet (the teacher's layout), every tensor random; a hint of
    ``conditioning_channels`` (SparseCtrl's sketch model takes an image and its mask: 4)."""
    from diffusers import ControlNetModel

    teacher = unet_config(TEACHER_CONFIGS[family])
    keys = ("attention_head_dim", "block_out_channels", "cross_attention_dim", "down_block_types", "layers_per_block",
            "use_linear_projection", "in_channels", "upcast_attention")
    with torch.device("meta"):
        model = ControlNetModel.from_config({k: teacher[k] for k in keys if k in teacher}
                                           | {"conditioning_channels": conditioning_channels})
    assert not list(model.buffers())
    return randomize_(model.to_empty(device="cpu"), seed)


def random_t2i_adapter(seed: int = 4):
    """An SD-1.x/2.x-shaped T2I-Adapter (diffusers' full adapter, as TencentARC publishes them), random."""
    from diffusers import T2IAdapter

    adapter = T2IAdapter(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8,
                         adapter_type="full_adapter")
    return randomize_(adapter, seed)


# SD-1.5's cross-attention widths in the order IP-Adapter numbers them (input 1, 2, 4, 5, 7, 8;
# output 3-11; middle): ip_adapter.{1, 3, ..., 31}.
IP_ADAPTER_SD15_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]


def random_ip_adapter_sd15(seed: int = 5) -> dict:
    """Tensors shaped like h94's ip-adapter_sd15.safetensors (ViT-H image embeds, 4 tokens), random."""
    g = torch.Generator().manual_seed(seed)
    weights = {"image_proj.proj.weight": torch.randn(4 * 768, 1024, generator=g) * 0.02,
               "image_proj.proj.bias": torch.zeros(4 * 768), "image_proj.norm.weight": torch.ones(768),
               "image_proj.norm.bias": torch.zeros(768)}
    for n, width in enumerate(IP_ADAPTER_SD15_WIDTHS):
        for kind in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * n + 1}.{kind}.weight"] = torch.randn(width, 768, generator=g) * 0.05
    return weights
