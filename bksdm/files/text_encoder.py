"""Text-encoder weights: normalise their names and check they are complete.

BK-SDM keeps its teacher's text encoder: CLIP ViT-L/14 for SD 1.x, OpenCLIP ViT-H/14
(23 layers in diffusers, 24 in original checkpoints) for SD 2.x. ComfyUI's loader
accepts both the transformers layout and the OpenCLIP one, but a missing tensor is
only a log warning there, and the encoder then produces NaN. So the set is checked
here and an incomplete one is refused.

Two traps are handled: transformers >= 5 saves ``CLIPTextModel`` without the
``text_model.`` prefix, and single-file checkpoints keep SD 1.x encoders under
``cond_stage_model.transformer.`` and SD 2.x ones under ``cond_stage_model.model.``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import WeightsMismatchError, summarize
from ..layout.unet_keys import check_tensors
from ..layout.unet_spec import Family

VOCAB, POSITIONS = 49408, 77


@dataclass(frozen=True)
class TextEncoderShape:
    family: str
    hidden: int
    intermediate: int
    layers: tuple[int, ...]  # layer counts seen in the wild


TEXT_ENCODERS = {
    "sd1": TextEncoderShape("sd1", 768, 3072, (12,)),
    "sd2": TextEncoderShape("sd2", 1024, 4096, (23, 24)),
}

def _hf_tensors(te: TextEncoderShape, layers: int) -> dict[str, tuple[int, ...]]:
    h, i = te.hidden, te.intermediate
    out = {"text_model.embeddings.token_embedding.weight": (VOCAB, h),
           "text_model.embeddings.position_embedding.weight": (POSITIONS, h),
           "text_model.final_layer_norm.weight": (h,), "text_model.final_layer_norm.bias": (h,)}
    for n in range(layers):
        p = f"text_model.encoder.layers.{n}."
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            out[f"{p}self_attn.{proj}.weight"], out[f"{p}self_attn.{proj}.bias"] = (h, h), (h,)
        for norm in ("layer_norm1", "layer_norm2"):
            out[f"{p}{norm}.weight"], out[f"{p}{norm}.bias"] = (h,), (h,)
        out[f"{p}mlp.fc1.weight"], out[f"{p}mlp.fc1.bias"] = (i, h), (i,)
        out[f"{p}mlp.fc2.weight"], out[f"{p}mlp.fc2.bias"] = (h, i), (h,)
    return out


def _openclip_tensors(te: TextEncoderShape, layers: int) -> dict[str, tuple[int, ...]]:
    h, i = te.hidden, te.intermediate
    out = {"token_embedding.weight": (VOCAB, h), "positional_embedding": (POSITIONS, h),
           "ln_final.weight": (h,), "ln_final.bias": (h,)}
    for n in range(layers):
        p = f"transformer.resblocks.{n}."
        out.update({f"{p}ln_1.weight": (h,), f"{p}ln_1.bias": (h,), f"{p}ln_2.weight": (h,), f"{p}ln_2.bias": (h,),
                    f"{p}attn.in_proj_weight": (3 * h, h), f"{p}attn.in_proj_bias": (3 * h,),
                    f"{p}attn.out_proj.weight": (h, h), f"{p}attn.out_proj.bias": (h,),
                    f"{p}mlp.c_fc.weight": (i, h), f"{p}mlp.c_fc.bias": (i,),
                    f"{p}mlp.c_proj.weight": (h, i), f"{p}mlp.c_proj.bias": (h,)})
    return out


LAYOUTS = {  # name -> (token embedding tensor, layer prefix, schema)
    "transformers": ("text_model.embeddings.token_embedding.weight", "text_model.encoder.layers.", _hf_tensors),
    "openclip": ("token_embedding.weight", "transformer.resblocks.", _openclip_tensors),
}


def normalize_text_encoder(state_dict: Mapping, family: Family, source) -> dict:
    """Check a text encoder against the U-Net's family; return it with ComfyUI-ready names.

    Accepts the transformers layout (with or without ``text_model.``) and OpenCLIP's.
    Tensors are not copied.
    """
    sd = dict(state_dict)
    if "embeddings.token_embedding.weight" in sd:  # transformers >= 5 drops the prefix
        sd = {f"text_model.{k}": v for k, v in sd.items()}
    layout = next((name for name, (marker, _, _) in LAYOUTS.items() if marker in sd), None)
    if layout is None:
        raise WeightsMismatchError(path=source, expected="a CLIP text encoder (transformers or OpenCLIP names)",
                                   found=f"{len(sd)} tensors such as {summarize(list(sd)[:3], 3)}",
                                   fix="download the model again: its text encoder is damaged or something else is "
                                   "in its place")
    marker, layer_prefix, schema = LAYOUTS[layout]
    hidden = sd[marker].shape[-1]
    te = TEXT_ENCODERS[family.name]
    if hidden != te.hidden:
        other = next((t for t in TEXT_ENCODERS.values() if t.hidden == hidden), None)
        found = f"a {other.family.upper()} text encoder (width {hidden})" if other else f"width {hidden}"
        expected = f"the {family.title} text encoder ({family.text_encoder}, width {te.hidden})"
        raise WeightsMismatchError(path=source, expected=expected, found=found,  # parts of two models
                                   fix="the text encoder belongs to another model than the U-Net: download the "
                                   "model folder again, all of it from the model's repository")
    layers = len({int(m.group(1)) for k in sd if (m := re.match(re.escape(layer_prefix) + r"(\d+)\.", k))})
    if layers not in te.layers:
        raise WeightsMismatchError(path=source,
                                   expected=f"{' or '.join(map(str, te.layers))} layers of {family.text_encoder}",
                                   found=f"{layers} layers", fix="the text encoder is incomplete: re-download it")
    # Extra tensors (position ids, projections, logit scale) are harmless; a missing or
    # misshapen one is not.
    expected = schema(te, layers)
    found = {k: tuple(v.shape) for k, v in sd.items() if k in expected}
    check_tensors(found, expected, source, f"the {layers}-layer {family.text_encoder} text encoder")
    return sd


def split_checkpoint_text_encoder(checkpoint: Mapping, family: Family) -> dict:
    """The text-encoder tensors of a single-file SD checkpoint, without their prefix."""
    prefix = "cond_stage_model.transformer." if family.name == "sd1" else "cond_stage_model.model."
    return {k[len(prefix):]: v for k, v in checkpoint.items() if k.startswith(prefix)}
