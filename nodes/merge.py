"""Merge an SD 1.x/2.x model into a BK-SDM model, tensor by tensor through the init map.

The stock merge nodes match tensors by name, and on a BK U-Net an SD name means another
tensor (or none); the pack's samplers refuse such a merge by name. Here each SD tensor goes to
the BK-SDM tensor initialised from it, as the LoRA transfer moves a LoRA, and the result is
the same weight patch the stock nodes add, so the graph treats it as any merge.
"""

from __future__ import annotations

from comfy_api.latest import io

from ..bksdm.errors import UnsupportedModelError
from ..bksdm.layout.variants import classify_layout
from ..bksdm.layout.weight_keys import PREFIX, transfer_weights
from .build import spec_of
from .inputs import choice, verdict
from .weight_patches import whole_tensor

# operation -> (strength of the SD weights, strength of the BK-SDM weights), given the multiplier;
# "blend" and "subtract" are the stock ModelMergeSimple (ratio = 1 - multiplier) and ModelMergeSubtract,
# "add" is ModelMergeAdd scaled ("add difference" with a difference of two SD models).
OPERATIONS = {
    "add": lambda m: (m, 1.0),
    "blend": lambda m: (m, 1.0 - m),
    "subtract": lambda m: (-m, m),
}


class MergeSDModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMMergeSDModel",
            display_name="Merge SD Model into BK-SDM",
            category="advanced/model_merging/BK-SDM",
            description="Merges an SD 1.x/2.x model (or a difference of two, from Model Merge Subtract) into a "
                        "BK-SDM model: each SD U-Net tensor goes to the BK-SDM tensor initialised from it, tensors "
                        "of removed blocks are dropped. The stock merge nodes match tensors by name, which on BK-SDM "
                        "names other tensors; sampling refuses such a merge.",
            inputs=[
                io.Model.Input("model", tooltip="A BK-SDM MODEL (Base, Small or Tiny; SD 1.x or 2.x)."),
                io.Model.Input("sd_model", tooltip="The full SD model of the same family (SD 1.x for SD 1.x BK-SDM "
                                                   "models, SD 2.x for SD 2.x), or a difference of two."),
                io.Combo.Input("operation", options=list(OPERATIONS), default="add",
                               tooltip="add: BK-SDM + multiplier x SD (with a difference of two SD models: 'add "
                                       "difference'). blend: (1 - multiplier) x BK-SDM + multiplier x SD. "
                                       "subtract: multiplier x (BK-SDM - SD)."),
                io.Float.Input("multiplier", default=1.0, min=-10.0, max=10.0, step=0.01,
                               tooltip="The SD model's weight in the operation."),
            ],
            outputs=[io.Model.Output(tooltip="The BK-SDM model with the SD weights merged in.")],
        )

    @classmethod
    def validate_inputs(cls, operation):
        return verdict(choice("operation", operation, OPERATIONS))

    @classmethod
    def execute(cls, model, sd_model, operation, multiplier) -> io.NodeOutput:
        student, teacher = spec_of(model), spec_of(sd_model)
        if classify_layout(teacher) != "teacher" or teacher.family != student.family:
            raise UnsupportedModelError(
                path=None, expected=f"as sd_model, the full {student.family.title} U-Net (BK-SDM's teacher)",
                found=f"a {classify_layout(teacher)} U-Net of the {teacher.family.title} family",
                fix="connect an SD model of the BK-SDM model's family to sd_model; for two BK-SDM models of one "
                    "layout use the stock merge nodes")
        moved, _ = transfer_weights(sd_model.get_key_patches(PREFIX), student, lambda value: whole_tensor(value).shape)
        merged = model.clone()
        merged.add_patches(moved, *OPERATIONS[operation](multiplier))
        return io.NodeOutput(merged)


NODES = [MergeSDModel]
