"""Every tensor of an SD-family U-Net, under both of its names.

:func:`unet_blocks` walks a U-Net spec block by block, in the order ComfyUI's
``UNetModel`` builds them, and gives each block its place in the structure and each
tensor its diffusers name, its ComfyUI/LDM name and its shape. That one walk is the key
map, the validator (the exact set of tensors a layout must have), the parameter counter
and what the block map is built from; nothing else in the pack spells out U-Net key
names. Results are cached on the spec, a frozen value.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from functools import cache

from ..errors import WeightsMismatchError, summarize
from .unet_spec import UNetSpec

MIDDLE = ("middle", 0)  # ComfyUI's address of the middle block, also where a removed one stood

# ResBlock parameters: (LDM name, diffusers name); shapes depend on in/out channels.
RESNET_NAMES = (
    ("in_layers.0", "norm1"),
    ("in_layers.2", "conv1"),
    ("emb_layers.1", "time_emb_proj"),
    ("out_layers.0", "norm2"),
    ("out_layers.3", "conv2"),
    ("skip_connection", "conv_shortcut"),
)


@dataclass(frozen=True)
class UNetTensor:
    diffusers: str
    ldm: str
    shape: tuple[int, ...]


@dataclass(frozen=True)
class Block:
    """One module of the U-Net under both names, e.g. the student's 'up_blocks.1.resnets.1', and
    its place in the structure: ``("up", 1, "resnet", 1)`` for that one."""

    diffusers: str
    ldm: str
    kind: str  # "resnet" | "attention" | "downsampler" | "upsampler" | "stem"
    path: str  # "stem" | "down" | "mid" | "up"
    stage: int  # diffusers' down_blocks.N / up_blocks.N (0 on the stem and the middle block)
    index: int  # position among the stage's blocks of its kind
    address: tuple[str, int] | None = None  # ComfyUI's transformer_options["block"] while it runs

    @property
    def position(self) -> tuple[str, int, str, int]:
        return self.path, self.stage, self.kind, self.index


def _resnet(d: str, ldm: str, cin: int, cout: int, emb: int) -> Iterator[UNetTensor]:
    shapes = {
        "norm1": ((cin,), (cin,)),
        "conv1": ((cout, cin, 3, 3), (cout,)),
        "time_emb_proj": ((cout, emb), (cout,)),
        "norm2": ((cout,), (cout,)),
        "conv2": ((cout, cout, 3, 3), (cout,)),
        "conv_shortcut": ((cout, cin, 1, 1), (cout,)),
    }
    for ldm_name, d_name in RESNET_NAMES:
        if d_name == "conv_shortcut" and cin == cout:
            continue
        weight, bias = shapes[d_name]
        yield UNetTensor(f"{d}.{d_name}.weight", f"{ldm}.{ldm_name}.weight", weight)
        yield UNetTensor(f"{d}.{d_name}.bias", f"{ldm}.{ldm_name}.bias", bias)


def _attention(d: str, ldm: str, ch: int, depth: int, context_dim: int, linear: bool) -> Iterator[UNetTensor]:
    # Names are identical in both layouts; inner width equals ch for every SD family.
    proj = (ch, ch) if linear else (ch, ch, 1, 1)
    params = [("norm.weight", (ch,)), ("norm.bias", (ch,)), ("proj_in.weight", proj), ("proj_in.bias", (ch,))]
    for t in range(depth):
        b = f"transformer_blocks.{t}."
        for norm in ("norm1", "norm2", "norm3"):
            params += [(f"{b}{norm}.weight", (ch,)), (f"{b}{norm}.bias", (ch,))]
        for attn, kv_in in (("attn1", ch), ("attn2", context_dim)):
            params += [(f"{b}{attn}.to_q.weight", (ch, ch)), (f"{b}{attn}.to_k.weight", (ch, kv_in)),
                       (f"{b}{attn}.to_v.weight", (ch, kv_in)), (f"{b}{attn}.to_out.0.weight", (ch, ch)),
                       (f"{b}{attn}.to_out.0.bias", (ch,))]
        params += [(f"{b}ff.net.0.proj.weight", (8 * ch, ch)), (f"{b}ff.net.0.proj.bias", (8 * ch,)),
                   (f"{b}ff.net.2.weight", (ch, 4 * ch)), (f"{b}ff.net.2.bias", (ch,))]
    params += [("proj_out.weight", proj), ("proj_out.bias", (ch,))]
    for name, shape in params:
        yield UNetTensor(f"{d}.{name}", f"{ldm}.{name}", shape)


def _conv(d: str, ldm: str, cin: int, cout: int, k: int = 3) -> Iterator[UNetTensor]:
    yield UNetTensor(f"{d}.weight", f"{ldm}.weight", (cout, cin, k, k))
    yield UNetTensor(f"{d}.bias", f"{ldm}.bias", (cout,))


@cache
def unet_blocks(spec: UNetSpec) -> tuple[tuple[Block, tuple[UNetTensor, ...]], ...]:
    """Each module of the U-Net with its tensors, in ComfyUI's construction order."""
    return tuple((block, tuple(tensors)) for block, tensors in _walk(spec))


def _walk(spec: UNetSpec) -> Iterator[tuple[Block, Iterator[UNetTensor]]]:
    mc, levels = spec.model_channels, spec.levels
    emb, ctx, linear = 4 * mc, spec.family.context_dim, spec.family.linear_projection

    yield Block("time_embedding", "time_embed", "stem", "stem", 0, 0), (
        UNetTensor("time_embedding.linear_1.weight", "time_embed.0.weight", (emb, mc)),
        UNetTensor("time_embedding.linear_1.bias", "time_embed.0.bias", (emb,)),
        UNetTensor("time_embedding.linear_2.weight", "time_embed.2.weight", (emb, emb)),
        UNetTensor("time_embedding.linear_2.bias", "time_embed.2.bias", (emb,)))
    yield Block("conv_in", "input_blocks.0.0", "stem", "stem", 0, 1, ("input", 0)), \
        _conv("conv_in", "input_blocks.0.0", spec.in_channels, mc)

    ch, skips, n = mc, [mc], 1
    for lvl, level in enumerate(levels):
        for i in range(level.res_blocks):
            d, ldm = f"down_blocks.{lvl}.resnets.{i}", f"input_blocks.{n}.0"
            yield Block(d, ldm, "resnet", "down", lvl, i, ("input", n)), _resnet(d, ldm, ch, level.channels, emb)
            ch = level.channels
            if level.down_depth:
                d, ldm = f"down_blocks.{lvl}.attentions.{i}", f"input_blocks.{n}.1"
                yield Block(d, ldm, "attention", "down", lvl, i, ("input", n)), \
                    _attention(d, ldm, ch, level.down_depth, ctx, linear)
            skips.append(ch)
            n += 1
        if lvl != len(levels) - 1:
            d, ldm = f"down_blocks.{lvl}.downsamplers.0.conv", f"input_blocks.{n}.0.op"
            yield Block(d, ldm, "downsampler", "down", lvl, 0, ("input", n)), _conv(d, ldm, ch, ch)
            skips.append(ch)
            n += 1

    if spec.has_middle:
        yield Block("mid_block.resnets.0", "middle_block.0", "resnet", "mid", 0, 0, MIDDLE), \
            _resnet("mid_block.resnets.0", "middle_block.0", ch, ch, emb)
        if spec.middle_depth:
            yield Block("mid_block.attentions.0", "middle_block.1", "attention", "mid", 0, 0, MIDDLE), \
                _attention("mid_block.attentions.0", "middle_block.1", ch, spec.middle_depth, ctx, linear)
        yield Block("mid_block.resnets.1", "middle_block.2", "resnet", "mid", 0, 1, MIDDLE), \
            _resnet("mid_block.resnets.1", "middle_block.2", ch, ch, emb)

    n = 0
    for up in range(len(levels)):
        level = spec.up_level(up)
        for i in range(level.res_blocks + 1):
            d, ldm = f"up_blocks.{up}.resnets.{i}", f"output_blocks.{n}.0"
            yield Block(d, ldm, "resnet", "up", up, i, ("output", n)), \
                _resnet(d, ldm, ch + skips.pop(), level.channels, emb)
            ch, slot = level.channels, 1
            if level.up_depth:
                d, ldm = f"up_blocks.{up}.attentions.{i}", f"output_blocks.{n}.1"
                yield Block(d, ldm, "attention", "up", up, i, ("output", n)), \
                    _attention(d, ldm, ch, level.up_depth, ctx, linear)
                slot = 2
            if up != len(levels) - 1 and i == level.res_blocks:
                d, ldm = f"up_blocks.{up}.upsamplers.0.conv", f"output_blocks.{n}.{slot}.conv"
                yield Block(d, ldm, "upsampler", "up", up, 0, ("output", n)), _conv(d, ldm, ch, ch)
            n += 1

    yield Block("conv_out", "out", "stem", "stem", 0, 2), (
        UNetTensor("conv_norm_out.weight", "out.0.weight", (mc,)),
        UNetTensor("conv_norm_out.bias", "out.0.bias", (mc,)),
        *_conv("conv_out", "out.2", mc, spec.out_channels))


@cache
def unet_tensors(spec: UNetSpec) -> tuple[UNetTensor, ...]:
    """All tensors of the U-Net, in construction order."""
    return tuple(t for _, tensors in unet_blocks(spec) for t in tensors)


@cache
def parameter_count(spec: UNetSpec) -> int:
    return sum(math.prod(t.shape) for t in unet_tensors(spec))


def diffusers_to_ldm(spec: UNetSpec) -> dict[str, str]:
    return {t.diffusers: t.ldm for t in unet_tensors(spec)}


def check_tensors(found: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]],
                  source, layout: str) -> None:
    """Raise unless ``found`` (name -> shape) holds exactly the ``expected`` tensors."""
    missing = expected.keys() - found.keys()
    unexpected = found.keys() - expected.keys()
    misshapen = {k for k in expected.keys() & found.keys() if tuple(found[k]) != tuple(expected[k])}
    if not (missing or unexpected or misshapen):
        return
    problems = []
    if missing:
        problems.append(f"{len(missing)} missing ({summarize(missing)})")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected ({summarize(unexpected)})")
    if misshapen:
        k = sorted(misshapen)[0]
        problems.append(f"{len(misshapen)} with other shapes "
                        f"(e.g. {k}: {tuple(found[k])} instead of {tuple(expected[k])})")
    raise WeightsMismatchError(
        path=source, expected=f"the {len(expected)} tensors of {layout}", found="; ".join(problems),
        fix="the weights belong to another model or are incomplete: re-download them, "
        "or check that config.json and the weights come from the same model")


def check_diffusers_unet(shapes: Mapping[str, tuple[int, ...]], spec: UNetSpec, source, layout: str) -> None:
    check_tensors(shapes, {t.diffusers: t.shape for t in unet_tensors(spec)}, source, layout)


def convert_diffusers_unet(state_dict: Mapping, spec: UNetSpec, source, layout: str) -> dict:
    """Rename a diffusers U-Net state dict to ComfyUI's names, failing on any missing,
    unexpected or misshapen tensor. Tensors are not copied."""
    check_diffusers_unet({k: tuple(v.shape) for k, v in state_dict.items()}, spec, source, layout)
    return {t.ldm: state_dict[t.diffusers] for t in unet_tensors(spec)}
