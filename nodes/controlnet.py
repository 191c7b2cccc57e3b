"""Make a BK-SDM model take ControlNets trained on the full SD U-Net."""

from __future__ import annotations

from comfy_api.latest import io

from ..bksdm.block_map import ALIGNMENTS
from ..bksdm.controlnet import DEFAULT_ALIGNMENT, ControlRemap
from ..bksdm.variants import classify_layout
from .build import spec_of
from .control_residuals import set_control_residuals
from .inputs import choice, verdict


class ControlNetAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMControlNetAdapter",
            display_name="BK-SDM ControlNet Adapter",
            category="model_patches/BK-SDM",
            description="Lets a BK-SDM model use SD 1.x/2.x ControlNets with the stock Apply ControlNet nodes: the "
                        "ControlNet's 12 skip residuals are fed to the 8 (Base/Small) or 6 (Tiny) skips of the "
                        "BK U-Net that have the same meaning; the middle residual is dropped for Tiny, which has "
                        "no block at that resolution. ControlNets trained on BK-SDM itself pass through.",
            inputs=[
                io.Model.Input("model", tooltip="A BK-SDM MODEL."),
                io.Combo.Input("alignment", options=list(ALIGNMENTS), default=DEFAULT_ALIGNMENT,
                               tooltip="stage_output (default): each BK skip takes the residual of the teacher "
                                       "skip its decoder block was built to consume (what BK-SDM's feature "
                                       "distillation matched). initialization: the residual of the teacher skip "
                                       "produced by the block the BK block was copied from."),
            ],
            outputs=[io.Model.Output(tooltip="The model, ready for SD ControlNets.")],
        )

    @classmethod
    def validate_inputs(cls, alignment):
        return verdict(choice("alignment", alignment, ALIGNMENTS))

    @classmethod
    def execute(cls, model, alignment) -> io.NodeOutput:
        spec = spec_of(model)
        adapted = model.clone()
        remap = ControlRemap.for_spec(spec, alignment, classify_layout(spec))
        set_control_residuals(adapted, remap, fit=True, spec=spec)
        return io.NodeOutput(adapted)


NODES = [ControlNetAdapter]
