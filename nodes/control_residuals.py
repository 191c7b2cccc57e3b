"""ControlNet support on BK-SDM models, through ComfyUI's stock model-patch hooks.

- ``ControlResiduals`` (a diffusion-model wrapper): the control dict ComfyUI built from a
  ControlNet goes through ``ControlRemap`` before the U-Net consumes it. Every BK-SDM
  MODEL gets it in "refuse" mode at load, so an SD ControlNet applied without the
  adapter fails with an explanation instead of landing on the wrong blocks; the adapter
  node switches it to "fit".
- ``SeparateLastSkip`` (an input-block patch), for U-Nets without a middle block:
  ComfyUI adds the ControlNet's middle residual in place to the tensor at the bottom of
  the U-Net. With a middle block that tensor is the block's fresh output; without one
  it is also the last skip connection, so the residual would be added twice. diffusers,
  where BK-SDM and its ControlNets were trained, adds it once; the patch gives the
  bottom its own tensor so ComfyUI does too.
"""

from __future__ import annotations

import comfy.patcher_extension

from ..bksdm.controlnet import ControlRemap, skip_count
from ..bksdm.unet_config import UNetSpec
from ..bksdm.variants import classify_layout

WRAPPER_KEY = "bksdm_controlnet"
PATCH_NAME = "input_block_patch_after_skip"


class ControlResiduals:
    def __init__(self, remap: ControlRemap, fit: bool):
        self.remap = remap
        self.fit = fit

    def __call__(self, executor, x, timesteps=None, context=None, y=None, control=None, transformer_options=None,
                 **kwargs):
        if control is not None and self.remap.is_teacher_control(control):
            if not self.fit:
                raise self.remap.refusal()
            control = self.remap.fit(control)
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)


class SeparateLastSkip:
    def __init__(self, last_input_block: int):
        self.last_input_block = last_input_block

    def __call__(self, h, transformer_options):
        return h.clone() if transformer_options.get("block") == ("input", self.last_input_block) else h


def set_control_residuals(model, remap: ControlRemap, fit: bool, spec: UNetSpec) -> None:
    """Install (or replace) the ControlNet support on a ModelPatcher, in place."""
    kind = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    model.remove_wrappers_with_key(kind, WRAPPER_KEY)
    model.add_wrapper_with_key(kind, WRAPPER_KEY, ControlResiduals(remap, fit))
    patches = model.model_options["transformer_options"].get("patches", {}).get(PATCH_NAME, [])
    if not spec.has_middle and not any(isinstance(p, SeparateLastSkip) for p in patches):
        model.set_model_input_block_patch_after_skip(SeparateLastSkip(skip_count(spec) - 1))


def guard_control_residuals(model, spec: UNetSpec) -> None:
    """Make an SD ControlNet on this BK-SDM model fail with an explanation unless adapted."""
    layout = classify_layout(spec)
    if layout not in ("custom", "teacher"):
        set_control_residuals(model, ControlRemap.for_spec(spec, layout_name=layout), fit=False, spec=spec)
