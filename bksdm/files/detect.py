"""Detect a U-Net's layout from its tensor names and shapes, when there is no config.

Works on diffusers names (``down_blocks.0.resnets.0...``) and on ComfyUI/LDM names
(``input_blocks.1.0...``), including the gapped numbering that diffusers'
``convert_diffusers_to_original_stable_diffusion.py`` writes for block-removed U-Nets:
that script assumes the teacher's two res blocks per level, so a BK U-Net comes out
with holes in ``input_blocks.N``, each up-sampler alone in a block of its own, and (for
Tiny) the first up stage's attentions left under their diffusers names. ComfyUI's own
detector counts blocks until the first hole and so misreads such files.

Detection reads the structure (levels, res blocks, attention depths, middle block),
builds the config, then checks the *whole* tensor set against it, so a file that only
looks like an SD U-Net is refused rather than half-loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from ..errors import ELSEWHERE, FILE, UnsupportedModelError, WeightsMismatchError
from ..layout.unet_keys import check_tensors, unet_tensors
from ..layout.unet_spec import NO_MIDDLE, UNetSpec, spec_from_unet_config
from .unet_config import family_for_context_dim

LDM_PREFIX = "model.diffusion_model."

# Tensor names that identify other architectures, for a refusal that names them.
FOREIGN_MARKERS = (
    ("joint_blocks.0.context_block.attn.qkv.weight", "Stable Diffusion 3 (MMDiT)"),
    ("transformer_blocks.0.attn.add_q_proj.weight", "Stable Diffusion 3 or Flux (diffusers)"),
    ("double_blocks.0.img_attn.qkv.weight", "Flux"),
    ("single_transformer_blocks.0.attn.to_q.weight", "Flux (diffusers)"),
    ("label_emb.0.0.weight", "SDXL (or another U-Net with extra conditioning)"),
    ("add_embedding.linear_1.weight", "SDXL (diffusers)"),
    ("input_blocks.1.0.time_stack.0.in_layers.0.weight", "Stable Video Diffusion"),
)


def unet_naming(keys: Iterable[str]) -> str | None:
    """'diffusers', 'ldm' or None, from the stem tensor each layout has."""
    keys = set(keys)
    if "conv_in.weight" in keys:
        return "diffusers"
    if "input_blocks.0.0.weight" in keys:
        return "ldm"
    return None


def refuse_foreign(keys: Iterable[str], source, origin: str) -> None:
    """Raise a clear error if the tensors belong to a known non-SD-1/2 architecture."""
    keys = {k[len(LDM_PREFIX):] if k.startswith(LDM_PREFIX) else k for k in keys}
    for marker, name in FOREIGN_MARKERS:
        if marker in keys:
            raise UnsupportedModelError(path=source, expected="an SD 1.x / 2.x U-Net (BK-SDM or a full teacher)",
                                        found=f"{name} weights (tensor '{marker}')", fix=ELSEWHERE[origin])


def _indices(keys: Iterable[str], prefix: str) -> list[int]:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return sorted({int(m.group(1)) for k in keys if (m := pattern.match(k))})


def _count(keys: set[str], prefix: str, source) -> int:
    found = _indices(keys, prefix)
    if found != list(range(len(found))):
        raise WeightsMismatchError(path=source, expected=f"'{prefix}N' numbered 0, 1, 2, ...", found=f"indices {found}",
                                   fix="the file is damaged, or a tool renumbered its blocks in a way the pack cannot "
                                   "repair: download it again, or convert the model folder with Convert BK-SDM Folder "
                                   "to Checkpoint")
    return len(found)


def _depth(keys: set[str], prefix: str, source) -> int:
    """Transformer depth of the attention module at ``prefix`` (0 if there is none)."""
    return _count(keys, f"{prefix}.transformer_blocks.", source) if f"{prefix}.proj_in.weight" in keys else 0


def _spec(shapes: Mapping[str, tuple], source, origin: str, *, attention_key: str, stem: tuple[str, str],
          **structure) -> UNetSpec:
    if attention_key is None:
        raise UnsupportedModelError(path=source, expected="an SD U-Net with cross-attention",
                                    found="no attention layers at all", fix=ELSEWHERE[origin])
    context_dim = shapes[attention_key.replace("proj_in.weight", "transformer_blocks.0.attn2.to_k.weight")][1]
    family = family_for_context_dim(context_dim, source, origin)
    linear = len(shapes[attention_key]) == 2
    if linear is not family.linear_projection:
        kind = "linear" if linear else "convolutional"
        raise UnsupportedModelError(path=source, expected=f"{family.title} attention projections",
                                    found=f"{kind} projections with {context_dim}-wide cross-attention",
                                    fix=ELSEWHERE[origin])
    conv_in, conv_out = stem
    # A block without the attention the rest of its level has is a block with missing tensors:
    # each level takes its deepest attention, and the check of the whole tensor set names them.
    res_blocks = structure["num_res_blocks"]
    structure["transformer_depth"] = _deepest_per_level(structure["transformer_depth"], res_blocks)
    structure["transformer_depth_output"] = _deepest_per_level(structure["transformer_depth_output"],
                                                               [n + 1 for n in res_blocks])
    unet_config = dict(in_channels=shapes[conv_in][1], out_channels=shapes[conv_out][0],
                       model_channels=shapes[conv_in][0], **structure)  # ComfyUI's form, as its detector gives it
    return spec_from_unet_config(family, unet_config, source, origin)


def _deepest_per_level(depths: list[int], blocks_per_level: list[int]) -> list[int]:
    out = []
    for n in blocks_per_level:
        level, depths = depths[:n], depths[n:]
        out += [max(level)] * n
    return out


def _check_middle(keys: set[str], resnet: str, attention: str, source, origin: str) -> int:
    if f"{attention}.proj_in.weight" in keys:
        return _depth(keys, attention, source)
    if any(k.startswith(resnet) for k in keys):
        raise UnsupportedModelError(path=source, expected="a middle block with cross-attention, or none",
                                    found="a middle block without attention", fix=ELSEWHERE[origin])
    return NO_MIDDLE


def _levels_multiple(channels: list[int], source, origin: str) -> list[int]:
    if any(c % channels[0] for c in channels):
        raise UnsupportedModelError(path=source, expected="level widths that are multiples of the first",
                                    found=f"level widths {channels}", fix=ELSEWHERE[origin])
    return [c // channels[0] for c in channels]


def _detect_diffusers(shapes: Mapping[str, tuple], source, origin: str) -> UNetSpec:
    keys = set(shapes)
    levels = _count(keys, "down_blocks.", source)
    if levels == 0 or _count(keys, "up_blocks.", source) != levels:
        raise WeightsMismatchError(path=source, expected="as many up blocks as down blocks",
                                   found=f"{levels} down blocks",
                                   fix="the file is incomplete: re-download it")
    channels, num_res, depth_in, depth_out, attention_key = [], [], [], [], None
    for level in range(levels):
        prefix = f"down_blocks.{level}"
        num_res.append(_count(keys, f"{prefix}.resnets.", source))
        if num_res[-1] == 0:
            raise WeightsMismatchError(path=source, expected=f"res blocks in {prefix}", found="none",
                                       fix="the file is incomplete: re-download it")
        channels.append(shapes[f"{prefix}.resnets.0.conv1.weight"][0])
        depth_in += [_depth(keys, f"{prefix}.attentions.{i}", source) for i in range(num_res[-1])]
        if f"{prefix}.attentions.0.proj_in.weight" in keys:
            attention_key = attention_key or f"{prefix}.attentions.0.proj_in.weight"
    for level in range(levels):  # output depths are listed shallowest level first
        up = f"up_blocks.{levels - 1 - level}"
        depth_out += [_depth(keys, f"{up}.attentions.{i}", source) for i in range(num_res[level] + 1)]
        if attention_key is None and f"{up}.attentions.0.proj_in.weight" in keys:
            attention_key = f"{up}.attentions.0.proj_in.weight"
    middle = _check_middle(keys, "mid_block.resnets.", "mid_block.attentions.0", source, origin)
    if attention_key is None and middle > 0:
        attention_key = "mid_block.attentions.0.proj_in.weight"
    return _spec(shapes, source, origin, attention_key=attention_key, stem=("conv_in.weight", "conv_out.weight"),
                 channel_mult=_levels_multiple(channels, source, origin), num_res_blocks=num_res,
                 transformer_depth=depth_in, transformer_depth_output=depth_out, transformer_depth_middle=middle)


def _detect_ldm(shapes: Mapping[str, tuple], source, origin: str) -> UNetSpec:
    keys = set(shapes)
    channels, num_res, depth_in, attention_key = [], [0], [], None
    for n in range(1, _count(keys, "input_blocks.", source)):
        block = f"input_blocks.{n}"
        if f"{block}.0.op.weight" in keys:  # a downsampler closes the level
            num_res.append(0)
            continue
        if f"{block}.0.out_layers.3.weight" not in keys:
            raise WeightsMismatchError(path=source, expected=f"a res block or downsampler in {block}", found="neither",
                                       fix="the file is damaged: re-download it")
        width = shapes[f"{block}.0.out_layers.3.weight"][0]
        if num_res[-1] == 0:
            channels.append(width)
        num_res[-1] += 1
        depth_in.append(_depth(keys, f"{block}.1", source))
        if attention_key is None and depth_in[-1]:
            attention_key = f"{block}.1.proj_in.weight"
    outputs = _count(keys, "output_blocks.", source)
    depth_out = [_depth(keys, f"output_blocks.{n}.1", source) for n in reversed(range(outputs))]
    if attention_key is None:
        attention_key = next((f"output_blocks.{n}.1.proj_in.weight" for n in range(outputs)
                              if f"output_blocks.{n}.1.proj_in.weight" in keys), None)
    middle = _check_middle(keys, "middle_block.", "middle_block.1", source, origin)
    if attention_key is None and middle > 0:
        attention_key = "middle_block.1.proj_in.weight"
    if len(channels) != len(num_res) or 0 in num_res:
        raise WeightsMismatchError(path=source, expected="res blocks on every level",
                                   found=f"res blocks per level {num_res}",
                                   fix="the file is damaged: re-download it")
    return _spec(shapes, source, origin, attention_key=attention_key, stem=("input_blocks.0.0.weight", "out.2.weight"),
                 channel_mult=_levels_multiple(channels, source, origin), num_res_blocks=num_res,
                 transformer_depth=depth_in, transformer_depth_output=depth_out, transformer_depth_middle=middle)


def gapped_ldm_renames(keys: Iterable[str]) -> dict[str, str]:
    """Renames that turn diffusers-script (gapped) LDM names into contiguous ones.

    The identity on a contiguous layout. ``keys`` are U-Net names without prefix.
    """
    keys = list(keys)
    renames = {}
    # The script maps no attentions of up_blocks.0 (the teacher has none there), so a
    # Tiny U-Net keeps them under diffusers names, beside the block of their resnet.
    stray = re.compile(r"up_blocks\.0\.attentions\.(\d+)\.(.*)")
    for k in keys:
        if m := stray.fullmatch(k):
            renames[k] = f"output_blocks.{m.group(1)}.1.{m.group(2)}"
    named = {k: renames.get(k, k) for k in keys}

    block = re.compile(r"(input_blocks|output_blocks)\.(\d+)\.(\d+)\.(.*)")
    parts = {k: m.groups() for k, v in named.items() if (m := block.fullmatch(v))}
    new_input = {n: i for i, n in enumerate(sorted({int(p[1]) for p in parts.values() if p[0] == "input_blocks"}))}

    output_ids = sorted({int(p[1]) for p in parts.values() if p[0] == "output_blocks"})
    subs = {n: {int(p[2]) for p in parts.values() if p[0] == "output_blocks" and int(p[1]) == n} for n in output_ids}
    new_output, upsampler_home = {}, {}
    for n in output_ids:
        if 0 not in subs[n] and new_output:  # an up-sampler alone: it belongs to the block before
            previous = max(new_output, key=new_output.get)
            upsampler_home[n] = (new_output[previous], 2 if 1 in subs[previous] else 1)
        else:
            new_output[n] = len(new_output)

    for k, (kind, n, sub, rest) in parts.items():
        n = int(n)
        if kind == "input_blocks":
            renames[k] = f"input_blocks.{new_input[n]}.{sub}.{rest}"
        elif n in upsampler_home:
            home, slot = upsampler_home[n]
            renames[k] = f"output_blocks.{home}.{slot}.{rest}"
        else:
            renames[k] = f"output_blocks.{new_output[n]}.{sub}.{rest}"
    return {k: v for k, v in renames.items() if k != v}


def detect_unet(shapes: Mapping[str, tuple], source, origin: str = FILE) -> tuple[UNetSpec, str, dict[str, str]]:
    """Detect the layout of a U-Net from tensor names and shapes.

    ``shapes`` maps U-Net tensor names (no checkpoint prefix) to shapes. Returns the
    spec, the naming ('diffusers' or 'ldm') and, for LDM names, the renames that make
    a gapped layout contiguous (empty when it already is). The whole tensor set is
    checked against the detected layout. ``origin``, errors.FILE or FOLDER (a diffusers folder
    without config.json), picks what a refusal tells the user to load the model with instead.
    """
    refuse_foreign(shapes, source, origin)
    naming = unet_naming(shapes)
    if naming is None:
        raise UnsupportedModelError(path=source, expected="U-Net weights (diffusers 'conv_in.weight' or LDM "
                                    "'input_blocks.0.0.weight')", found="neither",
                                    fix="choose a Stable Diffusion checkpoint file" if origin == FILE
                                    else "put the model's U-Net weights here: download the model folder again")
    renames = gapped_ldm_renames(shapes) if naming == "ldm" else {}
    shapes = {renames.get(k, k): tuple(v) for k, v in shapes.items()}
    try:
        detect = _detect_diffusers if naming == "diffusers" else _detect_ldm
        spec = detect(shapes, source, origin)
    except (KeyError, IndexError) as e:  # a block without one of its defining tensors
        raise WeightsMismatchError(path=source, expected="complete U-Net blocks", found=f"a block without tensor {e}",
                                   fix="the file is damaged or incomplete: re-download it") from None
    names = {t.diffusers if naming == "diffusers" else t.ldm: t.shape for t in unet_tensors(spec)}
    check_tensors(shapes, names, source, spec.describe())
    return spec, naming, renames
