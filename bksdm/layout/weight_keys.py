"""Whole weights keyed by the full SD U-Net's tensor names, on a BK-SDM U-Net.

A merge with an SD model, an "add difference" of two SD models or an SD U-Net offset reaches
a model as one tensor per state-dict name (``diffusion_model.input_blocks.4.1.proj_in.weight``).
The same name means another tensor on a BK U-Net, or nothing: the teacher's input block 4 is
BK-Base's input block 3, and on every layout some names that both U-Nets share hold tensors of
different shapes. Here each teacher name moves to the student tensor initialised from it (the
official init map, as the LoRA transfer uses it), names of removed blocks are dropped and
counted, and a tensor that does not fit where it lands is refused by name.

``sd_named_misfits`` recognises such weights after the fact, where they arrived under the
student's names anyway: a tensor that has the teacher's shape for its name, not the student's.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from functools import cache
from typing import TypeVar

from ..errors import PatchMisfitError
from .block_map import require_known_layout, teacher_tensor_homes
from .unet_keys import unet_tensors
from .unet_spec import UNetSpec
from .variants import teacher_spec

log = logging.getLogger(__name__)

PREFIX = "diffusion_model."  # how ComfyUI's MODEL names its U-Net tensors
Weight = TypeVar("Weight")
Shape = tuple[int, ...]


@cache
def _homes(student: UNetSpec) -> dict[str, tuple[str | None, Shape]]:
    """Teacher tensor name -> (the student tensor initialised from it or None, the teacher's shape)."""
    return {PREFIX + tensor.ldm: (None if home is None else PREFIX + home, tensor.shape)
            for tensor, home in teacher_tensor_homes(student)}


@dataclass
class WeightTransferReport:
    layout: str
    mapped: int = 0
    dropped: set[str] = field(default_factory=set)  # teacher tensors whose blocks BK-SDM removed

    def summary(self) -> str:
        return (f"SD weights onto BK-SDM ({self.layout}): {self.mapped} tensors moved to the blocks initialised "
                f"from theirs, {len(self.dropped)} dropped (their blocks were removed)")


def transfer_weights(weights: Mapping[str, Weight], student: UNetSpec, shape_of: Callable[[Weight], Shape],
                     source=None) -> tuple[dict[str, Weight], WeightTransferReport]:
    """Rename teacher-keyed U-Net weights (``diffusion_model.<SD LDM name>``) for ``student``.

    Every key must name a tensor of the teacher of the student's family with that tensor's
    shape; anything else is not an SD U-Net of this family, and is refused with the key and
    both shapes. Values are passed through untouched.
    """
    report = WeightTransferReport(require_known_layout(student, source))
    homes = _homes(student)
    moved: dict[str, Weight] = {}
    for key, weight in weights.items():
        home, expected = homes.get(key, (None, None))
        found = tuple(shape_of(weight))
        if expected is None or found != expected:
            raise PatchMisfitError(
                path=source,
                expected=f"the U-Net weights of the full {student.family.title} U-Net, BK-SDM's teacher",
                found=(f"{key} {list(found)}: the {student.family.title} U-Net has no tensor of that name"
                       if expected is None else
                       f"{key} of shape {list(found)}, where that U-Net's is {list(expected)}"),
                fix=f"connect an SD model of the {student.family.title} family (SD 1.x weights for SD 1.x BK-SDM "
                    "models, SD 2.x for SD 2.x); for two BK-SDM models of one layout use the stock merge nodes")
        if home is None:
            report.dropped.add(key)
        else:
            report.mapped += 1
            moved[home] = weight
    log.info("BK-SDM: %s", report.summary())
    return moved, report


@cache
def _own_and_teacher_shapes(student: UNetSpec) -> tuple[dict[str, Shape], dict[str, Shape]]:
    def shapes(spec: UNetSpec) -> dict[str, Shape]:
        return {PREFIX + tensor.ldm: tensor.shape for tensor in unet_tensors(spec)}
    return shapes(student), shapes(teacher_spec(student))


def sd_named_misfits(shapes: Iterable[tuple[str, Shape]], student: UNetSpec) -> list[tuple[str, Shape, Shape]]:
    """Of (key, shape) pairs of whole weights on a ``student`` model, those that fit the teacher's
    tensor of that name and not the student's: (key, shape found, the student's shape)."""
    own, teacher = _own_and_teacher_shapes(student)
    return [(key, tuple(shape), own[key]) for key, shape in shapes
            if key in own and tuple(shape) != own[key] and teacher.get(key) == tuple(shape)]
