"""Fit SD ControlNet and T2I-Adapter control to a BK-SDM U-Net.

Both speak in teacher skips: an SD 1.x/2.x ControlNet emits one residual per skip
connection of the full U-Net (12, added to the skips as the decoder takes them) plus one
for the middle block; a T2I-Adapter emits one entry per input block (12, one per skip,
its level features after each level's last res block, ``None`` elsewhere). A BK U-Net has
8 skips (Base, Small) or 6 (Tiny). ComfyUI hands both lists out by popping from the end,
so unfitted they land on the wrong blocks or nowhere. :class:`ControlRemap` picks, for
each student skip, the teacher entry of the same meaning (see ``block_map.skip_alignment``)
and keeps the middle residual only where the student still has that resolution.

T2I-Adapter features always follow the stage outputs: each is defined as "the output of
level L", and under the initialisation alignment no student skip would take one.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache

from ..errors import UnsupportedModelError
from .block_map import keeps_middle_residual, skip_alignment
from .unet_spec import UNetSpec
from .variants import classify_layout, teacher_spec

DEFAULT_ALIGNMENT = "stage_output"


def skip_count(spec: UNetSpec) -> int:
    """conv_in, every down res block and every downsampler."""
    return 1 + sum(level.res_blocks for level in spec.levels) + len(spec.levels) - 1


@dataclass(frozen=True)
class ControlRemap:
    layout_name: str
    teacher_skips: int
    student_skips: int
    residual_indices: tuple[int, ...] | None  # teacher ControlNet residual per student skip; None: no map
    feature_indices: tuple[int, ...] | None  # teacher T2I entry per student input block
    keep_middle: bool

    @staticmethod
    @cache
    def for_spec(spec: UNetSpec, alignment: str = DEFAULT_ALIGNMENT) -> ControlRemap:
        """The remap of one layout and alignment (cached: every U-Net call of a MODEL asks)."""
        layout = classify_layout(spec)
        teacher_skips, student_skips = skip_count(teacher_spec(spec)), skip_count(spec)
        if layout == "custom":
            return ControlRemap(layout, teacher_skips, student_skips, None, None, False)
        return ControlRemap(layout, teacher_skips, student_skips, tuple(skip_alignment(spec, alignment)),
                            tuple(skip_alignment(spec, DEFAULT_ALIGNMENT)), keeps_middle_residual(spec))

    def is_teacher_control(self, control: dict) -> bool:
        """Control made for the full SD U-Net, which this student cannot take as it is."""
        return self.teacher_skips != self.student_skips and any(
            len(control.get(kind) or []) == self.teacher_skips for kind in ("output", "input"))

    def fit(self, control: dict) -> dict:
        """The control dict with teacher entries moved onto the student's skips.

        Control already sized for the student (trained on BK-SDM) and anything else pass
        through unchanged; teacher control on a layout without a map is refused.
        """
        if not self.is_teacher_control(control):
            return control
        if self.residual_indices is None:
            raise self.refusal(control)
        fitted = dict(control)
        if len(control.get("output") or []) == self.teacher_skips:
            residuals = control["output"]  # indexed by skip; the decoder pops from the end
            fitted["output"] = [residuals[i] for i in self.residual_indices]
            if not self.keep_middle:
                fitted["middle"] = []
        if len(control.get("input") or []) == self.teacher_skips:
            features = control["input"][::-1]  # stored last block first: the encoder pops from the end
            fitted["input"] = [features[i] for i in self.feature_indices][::-1]
        return fitted

    def refusal(self, control: dict) -> UnsupportedModelError:
        # The control dict is all that reaches the U-Net: no file name, but which kind made it.
        kinds = [kind for key, kind in (("output", "ControlNet"), ("input", "T2I-Adapter"))
                 if len(control.get(key) or []) == self.teacher_skips]
        made = " and ".join(f"an SD {kind}" for kind in kinds)
        return UnsupportedModelError(
            path=None,
            expected=f"control for this {self.layout_name} U-Net ({self.student_skips} skip connections)",
            found=f"control from {made}, made for the full SD U-Net ({self.teacher_skips} skips); applied as it is, "
            "most of it would land on the wrong blocks or nowhere",
            fix=f"remove the Apply ControlNet node (or other control node) that applies the SD {' or '.join(kinds)} "
            "to this model's conditioning, or apply one trained for this U-Net: SD control maps onto the published "
            "BK-SDM layouts (Base, Small, Tiny) only")
