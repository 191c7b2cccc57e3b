"""Pick how SD ControlNet residuals align with a BK-SDM model's skips.

The pack's loaders already make their MODEL take SD ControlNets and T2I-Adapters through
the stock nodes, aligned by stage output; this node is the way to choose the other
alignment (or to give a BK-layout MODEL from another loader the same translation).
"""

from __future__ import annotations

from comfy_api.latest import io

from ..bksdm.layout.block_map import ALIGNMENTS, require_known_layout
from ..bksdm.layout.controlnet import DEFAULT_ALIGNMENT
from .build import spec_of
from .inputs import choice, verdict
from .teacher_addressing import set_teacher_addressing


class ControlNetAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMControlNetAdapter",
            display_name="BK-SDM ControlNet Alignment",
            category="model_patches/BK-SDM",
            description="BK-SDM models from the pack's loaders take SD 1.x/2.x ControlNets and T2I-Adapters with "
                        "the stock nodes: the 12 teacher skip residuals go to the 8 (Base/Small) or 6 (Tiny) "
                        "skips of the BK U-Net with the same meaning (stage_output). Use this node to pick the "
                        "other alignment, or to give a BK-layout MODEL from another loader the same mapping.",
            inputs=[
                io.Model.Input("model", tooltip="A BK-SDM MODEL."),
                io.Combo.Input("alignment", options=list(ALIGNMENTS), default=DEFAULT_ALIGNMENT,
                               tooltip="stage_output (default): each BK skip takes the residual of the teacher "
                                       "skip its decoder block was built to consume (what BK-SDM's feature "
                                       "distillation matched). initialization: the residual of the teacher skip "
                                       "produced by the block the BK block was copied from. T2I-Adapter features "
                                       "always follow the stage outputs."),
            ],
            outputs=[io.Model.Output(tooltip="The model, with SD control aligned as chosen.")],
        )

    @classmethod
    def validate_inputs(cls, alignment):
        return verdict(choice("alignment", alignment, ALIGNMENTS))

    @classmethod
    def execute(cls, model, alignment) -> io.NodeOutput:
        spec = spec_of(model)
        require_known_layout(spec, None, "controlnet")  # a layout without a map is refused here, not when sampling
        adapted = model.clone()
        set_teacher_addressing(adapted, spec, alignment)
        return io.NodeOutput(adapted)


NODES = [ControlNetAdapter]
