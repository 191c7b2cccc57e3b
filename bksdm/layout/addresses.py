"""The teacher's block addresses on a BK-SDM U-Net.

Nodes that patch an SD U-Net name its blocks the way ComfyUI numbers them while it runs
(``transformer_options["block"]``: ``("input", 4)``, ``("middle", 0)``, ``("output", 3)``)
and often bind each address to weights made for that teacher block: IP-Adapter's
per-block key/value projections, Kohya Deep Shrink's block number, SAG and PAG's
middle-block attention. A BK U-Net numbers its own, fewer blocks, so the same number
names another block, often at another width.

:class:`TeacherAddresses` says, per the official init map (``block_map``), which student
block carries each teacher block and which teacher block each student block came from:
a patch made for a teacher block runs where that block lives on in the student and sees
the address it was registered for. Teacher blocks the student removed have no student
block, with one exception, so that middle-block guidance never silently does nothing: in
a student without a middle block, the first attention block of the decoder (the first
attention after the place the middle block held, at the deepest level that still has
attention) stands in for the middle block's attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache

from .block_map import block_map, blocks_by_name
from .unet_keys import MIDDLE, unet_blocks
from .unet_spec import UNetSpec
from .variants import classify_layout, teacher_spec

Address = tuple[str, int]  # ("input" | "middle" | "output", block number)


@dataclass(frozen=True)
class AttentionSite:
    width: int  # inner width of its attention (query features)
    heads: int
    index: int  # ComfyUI's transformer_index there: the count of attention blocks before it


@dataclass(frozen=True)
class TeacherAddresses:
    """Teacher block address <-> student block address, for one student layout."""

    layout: str  # a BK-SDM layout, or "custom": then every address is taken as it is
    student_of: Mapping[Address, Address]  # teacher block -> the student block initialised from it
    teacher_of: Mapping[Address, Address]  # student block -> the teacher block it was initialised from
    middle_stand_in: Address | None  # student block standing in for a removed middle block
    teacher_blocks: frozenset[Address]
    teacher_sites: Mapping[Address, AttentionSite]  # the teacher's attention blocks

    @property
    def aligned(self) -> bool:
        return self.layout != "custom"

    def student_block(self, teacher: Address) -> Address | None:
        """Where a patch for this teacher block runs; None where the student removed it."""
        if not self.aligned or teacher not in self.teacher_blocks:
            return teacher  # nothing to map (an address like ("middle", 1) is never called on either U-Net)
        if teacher in self.student_of:
            return self.student_of[teacher]
        return self.middle_stand_in if teacher == MIDDLE else None

    def teacher_block(self, student: Address) -> Address:
        """The address a patch sees while this student block runs."""
        return self.teacher_of.get(student, student)


@cache
def attention_sites(spec: UNetSpec) -> dict[Address, AttentionSite]:
    sites = {}
    for block, tensors in unet_blocks(spec):
        if block.kind == "attention":
            width = tensors[0].shape[0]  # the attention's group norm: one weight per channel
            sites[block.address] = AttentionSite(width, spec.family.heads(width), len(sites))
    return sites


@cache
def teacher_addresses(student: UNetSpec) -> TeacherAddresses:
    teacher = teacher_spec(student)
    teacher_blocks = blocks_by_name(teacher)
    known = frozenset(block.address for block in teacher_blocks.values() if block.address is not None)
    teacher_sites = attention_sites(teacher)
    layout = classify_layout(student)
    if layout == "custom":  # no published map: addresses stay as they are, widths are still checked
        return TeacherAddresses(layout, {}, {}, None, known, teacher_sites)
    mapping = block_map(student)
    teacher_of: dict[Address, Address] = {}
    stand_in = None
    for block, _ in unet_blocks(student):
        if block.address is None:
            continue
        source = teacher_blocks[mapping.diffusers[block.diffusers]].address
        if teacher_of.setdefault(block.address, source) != source:
            raise AssertionError(f"student block {block.address} holds parts of two teacher blocks")
        if stand_in is None and block.kind == "attention" and block.address[0] == "output" and not student.has_middle:
            stand_in = block.address
    student_of = {t: s for s, t in teacher_of.items()}
    if len(student_of) != len(teacher_of):
        raise AssertionError("two student blocks were initialised from one teacher block")
    return TeacherAddresses(layout, student_of, teacher_of, stand_in, known, teacher_sites)
