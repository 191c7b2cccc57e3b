"""AnimateDiff's motion modules on a BK-SDM U-Net.

An SD motion-module file (AnimateDiff v1-v3, AnimateLCM and their kin) holds one temporal module
for each res block of the teacher's encoder and decoder, and in v2-style files one for its middle
block: ``down_blocks.L.motion_modules.I`` runs right after the teacher block
``down_blocks.L.resnets.I`` (with its attention), ``up_blocks.L.motion_modules.I`` after
``up_blocks.L.resnets.I``, ``mid_block.motion_modules.0`` inside the middle block. On BK-SDM
each runs in the student block initialised from its teacher block (the official init map), at
that block's width, which is the teacher's; the modules of removed blocks are not run, the
middle one included where the student has no middle block (the stand-in rule of
``addresses`` gives that block its own module already).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from .addresses import Address, teacher_addresses
from .unet_keys import unet_blocks
from .unet_spec import UNetSpec
from .variants import teacher_spec

MotionModule = tuple[str, int, int]  # ("down" | "up" | "mid", level, index): its place in the file


@dataclass(frozen=True)
class TeacherBlock:
    """One block of the teacher as ComfyUI numbers it, and where it lives on in a student."""

    address: Address
    kinds: tuple[str, ...]  # its modules in order: "stem", "resnet", "attention", "downsampler", "upsampler"
    student: Address | None  # the student block initialised from it; None where the student removed it


@cache
def teacher_block_sequence(student: UNetSpec) -> tuple[TeacherBlock, ...]:
    """Every teacher block in ComfyUI's order (input blocks, middle block, output blocks), each
    with the student block that carries it. The published layouts only: a custom one has no map."""
    addresses = teacher_addresses(student)
    if not addresses.aligned:
        raise ValueError("a custom layout has no init map to place a teacher's modules by")
    kinds: dict[Address, list[str]] = {}
    for block, _ in unet_blocks(teacher_spec(student)):
        if block.address is not None:
            kinds.setdefault(block.address, []).append(block.kind)
    return tuple(TeacherBlock(address, tuple(found), addresses.student_of.get(address))
                 for address, found in kinds.items())


@cache
def motion_module_homes(student: UNetSpec) -> dict[MotionModule, Address | None]:
    """Each SD motion module, by its place in the file, and the student block it runs in (None:
    not run). Covers the middle module too, for the files that have one."""
    addresses = teacher_addresses(student)
    if not addresses.aligned:
        raise ValueError("a custom layout has no init map to place a teacher's modules by")
    homes: dict[MotionModule, Address | None] = {}
    for block, _ in unet_blocks(teacher_spec(student)):
        if block.kind == "resnet" and not (block.path == "mid" and block.index):  # one module in the middle
            homes[(block.path, block.stage, block.index)] = addresses.student_of.get(block.address)
    return homes
