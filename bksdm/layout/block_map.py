"""Which teacher block each BK-SDM block came from, and which skip connections match.

BK-SDM's training script initialises every student tensor from the teacher tensor of
the same name except in the up path, where a stage keeps the teacher's first and last
res block (``resnets.0`` and ``resnets.2``, now ``resnets.0`` and ``resnets.1``), and
Tiny drops the lowest-resolution level, so its up stages shift by one. The rule below
reproduces the official map for Base, Small and Tiny of both families from the layouts
alone; the tests hold it against the published tables.

The map serves moving weights keyed for the full SD U-Net onto a BK U-Net (a LoRA, a merge
with an SD model: rename their keys, drop those of removed blocks), and feeding an SD ControlNet's 12
skip residuals into the 8 (Base/Small) or 6 (Tiny) skips of a BK U-Net.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from types import MappingProxyType

from ..errors import UnsupportedModelError
from .unet_keys import Block, UNetTensor, unet_blocks
from .unet_spec import UNetSpec
from .variants import classify_layout, teacher_spec

STUDENT_LAYOUTS = ("base", "small", "tiny", "teacher")
ALIGNMENTS = ("stage_output", "initialization")


# What to do when SD weights meet a U-Net the init map does not cover, by the node that asked.
UNMAPPED_FIX = {
    "lora": "load a LoRA trained on this U-Net with the stock Load LoRA node instead: Load SD LoRA onto BK-SDM maps "
            "SD LoRAs onto the published BK-SDM layouts (Base, Small, Tiny) only",
    "controlnet": "remove BK-SDM ControlNet Alignment and apply a ControlNet trained for this U-Net, which needs no "
                  "alignment: SD ControlNets map onto the published BK-SDM layouts (Base, Small, Tiny) only",
    None: "use LoRAs, ControlNets and patches trained for this U-Net: SD ones map onto the published BK-SDM "
          "layouts (Base, Small, Tiny) only",
}


def require_known_layout(student: UNetSpec, source, asked_by: str | None = None) -> str:
    """The layout name, or a refusal for a layout without a map; ``asked_by`` ('lora', 'controlnet') picks the fix."""
    layout = classify_layout(student)
    if layout not in STUDENT_LAYOUTS:
        raise UnsupportedModelError(path=source,
                                    expected=f"a U-Net in one of the BK-SDM layouts ({', '.join(STUDENT_LAYOUTS)})",
                                    found=f"a custom layout ({student.describe()})", fix=UNMAPPED_FIX[asked_by])
    return layout


def blocks_by_name(spec: UNetSpec) -> dict[str, Block]:
    return {block.diffusers: block for block, _ in unet_blocks(spec)}


def teacher_position(block: Block, student: UNetSpec, teacher: UNetSpec) -> tuple[str, int, str, int]:
    """Where in the teacher the student block was initialised from. The stem, the down path and
    the middle block keep their places; an up stage keeps its first blocks and takes its last
    from the teacher stage's last, and Tiny's up stages sit one deeper in the teacher."""
    if block.path != "up":
        return block.position
    stage = block.stage + len(teacher.levels) - len(student.levels)
    index = block.index
    if block.kind != "upsampler" and index == student.up_level(block.stage).res_blocks:
        index = teacher.up_level(stage).res_blocks  # a stage's last block is the teacher stage's last
    return "up", stage, block.kind, index


@dataclass(frozen=True)
class BlockMap:
    """Student block -> teacher block it was initialised from, under both namings."""

    layout: str
    diffusers: MappingProxyType  # student diffusers prefix -> teacher diffusers prefix
    ldm: MappingProxyType  # student LDM prefix -> teacher LDM prefix
    teacher: UNetSpec


def block_map(student: UNetSpec, source=None) -> BlockMap:
    layout = require_known_layout(student, source)
    return _block_map(student, layout)


@cache
def _block_map(student: UNetSpec, layout: str) -> BlockMap:
    teacher = teacher_spec(student)
    teacher_blocks = {block.position: (block, tensors) for block, tensors in unet_blocks(teacher)}
    diffusers, ldm = {}, {}
    for block, tensors in unet_blocks(student):
        source, source_tensors = teacher_blocks[teacher_position(block, student, teacher)]
        if [t.shape for t in tensors] != [t.shape for t in source_tensors]:
            raise AssertionError(f"{block.diffusers} and its teacher block {source.diffusers} differ in shape")
        diffusers[block.diffusers], ldm[block.ldm] = source.diffusers, source.ldm
    return BlockMap(layout, MappingProxyType(diffusers), MappingProxyType(ldm), teacher)


@cache
def teacher_tensor_homes(student: UNetSpec) -> tuple[tuple[UNetTensor, str | None], ...]:
    """Every teacher tensor, with the LDM name of the student tensor initialised from it (None
    where the student removed its block): what teacher-keyed weights (a LoRA, a merge) move by."""
    mapping = block_map(student)
    to_student = {teacher: own for own, teacher in mapping.ldm.items()}
    homes = []
    for block, tensors in unet_blocks(mapping.teacher):
        home = to_student.get(block.ldm)
        homes.extend((t, None if home is None else home + t.ldm[len(block.ldm):]) for t in tensors)
    return tuple(homes)


def skip_producers(spec: UNetSpec) -> list[str]:
    """The blocks whose outputs become skip connections, in order (diffusers names)."""
    # a down res block's attention, if any, belongs to the same skip
    return [block.diffusers for block, _ in unet_blocks(spec)
            if block.diffusers == "conv_in" or block.kind == "downsampler"
            or (block.path == "down" and block.kind == "resnet")]


def skip_consumers(spec: UNetSpec) -> list[str]:
    """The up res block that consumes each skip connection, in skip order."""
    consumers = [b.diffusers for b, _ in unet_blocks(spec) if b.path == "up" and b.kind == "resnet"]
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
    return len(student.levels) == len(teacher_spec(student).levels)
