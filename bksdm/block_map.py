"""Which teacher block each BK-SDM block came from, and which skip connections match.

BK-SDM's training script initialises every student tensor from the teacher tensor of
the same name except in the up path, where a stage keeps the teacher's first and last
res block (``resnets.0`` and ``resnets.2``, now ``resnets.0`` and ``resnets.1``), and
Tiny drops the lowest-resolution level, so its up stages shift by one. The rule below
reproduces the official map for Base, Small and Tiny of both families from the layouts
alone; the tests hold it against the published tables.

The map serves two features: moving a LoRA trained on the full SD U-Net onto a BK U-Net
(rename its keys, drop the deltas of removed blocks), and feeding an SD ControlNet's 12
skip residuals into the 8 (Base/Small) or 6 (Tiny) skips of a BK U-Net.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

from .errors import UnsupportedModelError
from .unet_config import UNetSpec, make_unet_config
from .unet_keys import Block, unet_blocks
from .variants import classify_layout

STUDENT_LAYOUTS = ("base", "small", "tiny", "teacher")
ALIGNMENTS = ("stage_output", "initialization")


def teacher_spec(student: UNetSpec) -> UNetSpec:
    """The full SD U-Net of the student's family (SD-v1.4/1.5 or SD-v2.x)."""
    c = student.unet_config
    config = make_unet_config(
        in_channels=c["in_channels"], out_channels=c["out_channels"], model_channels=320,
        channel_mult=[1, 2, 4, 4], num_res_blocks=[2, 2, 2, 2],
        transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0], transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
        transformer_depth_middle=1, context_dim=c["context_dim"],
        use_linear_in_transformer=c["use_linear_in_transformer"])
    return UNetSpec(family=student.family, unet_config=config)


def require_known_layout(student: UNetSpec, source) -> str:
    layout = classify_layout(student)
    if layout not in STUDENT_LAYOUTS:
        raise UnsupportedModelError(path=source,
                                    expected=f"a U-Net in one of the BK-SDM layouts ({', '.join(STUDENT_LAYOUTS)})",
                                    found=f"a custom layout ({student.describe()})",
                                    fix="teacher LoRAs and ControlNets can only be mapped onto the published layouts")
    return layout


def blocks_by_name(spec: UNetSpec) -> dict[str, Block]:
    return {block.diffusers: block for block, _ in unet_blocks(spec.unet_config)}


def _up_resnets(blocks: dict[str, Block], up: int) -> int:
    return sum(1 for name in blocks if re.fullmatch(rf"up_blocks\.{up}\.resnets\.\d+", name))


def _teacher_name(name: str, student: dict[str, Block], teacher: dict[str, Block], shift: int) -> str:
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions|upsamplers)\.(\d+)(.*)", name)
    if not m:
        return name  # stem, down path and middle block keep their names
    up, kind, index, rest = int(m[1]), m[2], int(m[3]), m[4]
    if kind != "upsamplers" and index == _up_resnets(student, up) - 1:
        index = _up_resnets(teacher, up + shift) - 1  # a stage's last block is the teacher stage's last
    return f"up_blocks.{up + shift}.{kind}.{index}{rest}"


@dataclass(frozen=True)
class BlockMap:
    """Student block -> teacher block it was initialised from, under both namings."""

    layout: str
    diffusers: dict[str, str]  # student diffusers prefix -> teacher diffusers prefix
    ldm: dict[str, str]  # student LDM prefix -> teacher LDM prefix
    teacher: UNetSpec


def block_map(student: UNetSpec, source=None) -> BlockMap:
    layout = require_known_layout(student, source)
    return _block_map(layout, student.family.name, _freeze(student), _freeze(teacher_spec(student)))


def _freeze(spec: UNetSpec):
    return spec.family, tuple((k, tuple(v) if isinstance(v, list) else v) for k, v in spec.unet_config.items())


def _thaw(frozen) -> UNetSpec:
    family, items = frozen
    return UNetSpec(family=family, unet_config={k: list(v) if isinstance(v, tuple) else v for k, v in items})


@lru_cache(maxsize=16)
def _block_map(layout: str, family: str, frozen_student, frozen_teacher) -> BlockMap:
    student_spec, teacher = _thaw(frozen_student), _thaw(frozen_teacher)
    student_blocks, teacher_blocks = blocks_by_name(student_spec), blocks_by_name(teacher)
    shift = teacher.levels - student_spec.levels
    student_tensors = {b.diffusers: ts for b, ts in unet_blocks(student_spec.unet_config)}
    teacher_tensors = {b.diffusers: ts for b, ts in unet_blocks(teacher.unet_config)}
    diffusers, ldm = {}, {}
    for name, block in student_blocks.items():
        source = _teacher_name(name, student_blocks, teacher_blocks, shift)
        shapes = [t.shape for t in student_tensors[name]]
        if source not in teacher_blocks or shapes != [t.shape for t in teacher_tensors[source]]:
            raise AssertionError(f"no teacher block of the same shape for {name} (tried {source})")
        diffusers[name], ldm[block.ldm] = source, teacher_blocks[source].ldm
    return BlockMap(layout, diffusers, ldm, teacher)


def skip_producers(spec: UNetSpec) -> list[str]:
    """The blocks whose outputs become skip connections, in order (diffusers names)."""
    producers = []
    for block, _ in unet_blocks(spec.unet_config):
        if block.kind == "downsampler" or block.diffusers == "conv_in":
            producers.append(block.diffusers)
        elif block.diffusers.startswith("down_blocks.") and block.kind == "resnet":
            producers.append(block.diffusers)  # its attention, if any, belongs to the same skip
    return producers


def skip_consumers(spec: UNetSpec) -> list[str]:
    """The up res block that consumes each skip connection, in skip order."""
    consumers = [b.diffusers for b, _ in unet_blocks(spec.unet_config)
                 if b.diffusers.startswith("up_blocks.") and b.kind == "resnet"]
    return list(reversed(consumers))  # the up path takes skips from the end


def skip_alignment(student: UNetSpec, alignment: str, source=None) -> list[int]:
    """For each student skip, the index of the teacher skip (ControlNet residual) it takes.

    'stage_output': the student skip feeds the res block that was initialised from the
    teacher block consuming that teacher skip (and feature distillation trained each
    student stage to reproduce the teacher stage's output). 'initialization': the
    student skip is produced by the block initialised from the teacher block producing
    that teacher skip.
    """
    if alignment not in ALIGNMENTS:
        raise ValueError(f"alignment must be one of {ALIGNMENTS}")
    mapping = block_map(student, source)
    teacher = mapping.teacher
    if alignment == "initialization":
        teacher_skips, student_skips = skip_producers(teacher), skip_producers(student)
    else:
        teacher_skips, student_skips = skip_consumers(teacher), skip_consumers(student)
    return [teacher_skips.index(mapping.diffusers[name]) for name in student_skips]


def keeps_middle_residual(student: UNetSpec) -> bool:
    """Whether the teacher's middle residual fits the student: it is added at the bottom of
    the U-Net (after the middle block, or in its place for Small), which Tiny no longer has."""
    return student.levels == teacher_spec(student).levels
