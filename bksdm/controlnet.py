"""Fit an SD ControlNet's skip residuals to a BK-SDM U-Net.

An SD 1.x/2.x ControlNet emits one residual per teacher skip connection (12) plus one
for the middle block. A BK U-Net has 8 skips (Base, Small) or 6 (Tiny). ComfyUI hands
residuals to skips by popping from the end, so unadapted it applies three of them, one
to the wrong block, and warns about the rest. :class:`ControlRemap` picks, for each
student skip, the teacher residual of the same meaning (see ``block_map.skip_alignment``)
and keeps the middle residual only where the student still has that resolution.
"""

from __future__ import annotations

from dataclasses import dataclass

from .block_map import keeps_middle_residual, skip_alignment, teacher_spec
from .errors import UnsupportedModelError
from .unet_config import UNetSpec

DEFAULT_ALIGNMENT = "stage_output"


def skip_count(spec: UNetSpec) -> int:
    c = spec.unet_config
    return 1 + sum(c["num_res_blocks"]) + len(c["channel_mult"]) - 1


@dataclass(frozen=True)
class ControlRemap:
    layout_name: str
    teacher_skips: int
    student_skips: int
    indices: tuple[int, ...]  # teacher residual feeding each student skip
    keep_middle: bool

    @classmethod
    def for_spec(cls, spec: UNetSpec, alignment: str = DEFAULT_ALIGNMENT, layout_name: str = "") -> ControlRemap:
        return cls(layout_name, skip_count(teacher_spec(spec)), skip_count(spec),
                   tuple(skip_alignment(spec, alignment)), keeps_middle_residual(spec))

    def is_teacher_control(self, control: dict) -> bool:
        """Residuals made for the full SD U-Net, which this student cannot take as they are."""
        residuals = control.get("output") or []
        return self.teacher_skips != self.student_skips and len(residuals) == self.teacher_skips

    def fit(self, control: dict) -> dict:
        """The control dict with teacher residuals moved onto the student's skips.

        Residuals already sized for the student (a ControlNet trained on BK-SDM) and
        anything else pass through unchanged.
        """
        if not self.is_teacher_control(control):
            return control
        fitted = dict(control)
        residuals = control["output"]
        fitted["output"] = [residuals[i] for i in self.indices]
        if not self.keep_middle:
            fitted["middle"] = []
        return fitted

    def refusal(self) -> UnsupportedModelError:
        return UnsupportedModelError(
            None, f"a ControlNet for this {self.layout_name} U-Net ({self.student_skips} skip connections)",
            f"a ControlNet made for the full SD U-Net ({self.teacher_skips} skip residuals); applied as it is, "
            "most residuals would land on the wrong blocks or nowhere",
            "put a 'BK-SDM ControlNet Adapter' node on the MODEL before the sampler")
