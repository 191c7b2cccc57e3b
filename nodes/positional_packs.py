"""Other node packs that take SD's U-Net blocks by position from the model object while sampling.

Most packs patch a MODEL through ComfyUI's patch points, which the pack translates. These walk
``diffusion_model.input_blocks[i]`` by SD-1.5 index inside their own sampling wrappers instead, so
on a BK-SDM U-Net they would reach other blocks or none (an IndexError, or a TypeError on the
missing middle block, deep inside the other pack). Each leaves a mark on the sampling call before
it touches the U-Net; the marks are these packs' private state, and this module is the one place
that reads them (tested against each pack's pinned commit on every supported ComfyUI).
"""

from __future__ import annotations

from ..bksdm.errors import UnsupportedModelError

# The functions ComfyUI-BrushNet queues under transformer_options["brush_model_patch"]["forward"]
# (brushnet_nodes.add_brushnet_patch, raunet_nodes.add_raunet_patch), by the node that adds them.
BRUSHNET_FORWARDS = {"brushnet_forward": "BrushNet / PowerPaint", "raunet_forward": "RAUNet"}
# The hook Advanced-ControlNet's reference-only control brings along (control_reference.py,
# extra_hooks; utils.WrapperConsts.ACN_OUTER_SAMPLE_WRAPPER_KEY): the hook of its outer-sample
# wrapper, which does the positional injection.
ACN_REFERENCE_HOOK = "ACN_outer_sample_wrapper"


class RefusePositionalPacks:
    """A ModelPatcher callback (ON_REGISTER_ALL_HOOK_PATCHES): ComfyUI calls it once per sampling
    run with the run's hooks and options, after the other packs have set up and before any
    outer-sample wrapper runs. A wrapper of the pack's own would not do: ComfyUI orders the
    outer-sample wrappers of hooks and of options differently from one release to the next."""

    def __init__(self, layout: str):
        self.layout = layout

    def __call__(self, model, hooks, target_dict, model_options, registered):
        refuse_brushnet(model_options.get("transformer_options", {}), self.layout)
        refuse_reference_control(hooks, self.layout)


def refuse_brushnet(transformer_options: dict, layout: str) -> None:
    queued = (transformer_options.get("brush_model_patch") or {}).get("forward") or []
    nodes = sorted({BRUSHNET_FORWARDS.get(getattr(f, "__name__", ""), "BrushNet") for f in queued})
    if nodes:
        raise UnsupportedModelError(
            path=None, expected="patches that reach the U-Net through ComfyUI's patch points, which the pack moves "
            "onto BK-SDM's blocks",
            found=f"ComfyUI-BrushNet's {' and '.join(nodes)} node on this MODEL: it adds its SD-1.5 residuals "
            "to input blocks 0-11, the middle block and output blocks 0-11 of the U-Net object by position, and "
            f"BK-SDM {layout} removed some of those blocks and numbers the rest differently, so they would land "
            "on other blocks or fail inside ComfyUI-BrushNet",
            fix="remove the BrushNet / PowerPaint / RAUNet node from this model's path; to inpaint with BK-SDM, "
            "use Set Latent Noise Mask or InpaintModelConditioning with this model, or an SD-1.5 inpaint ControlNet "
            "(ControlNet residuals are mapped)")


def refuse_reference_control(hooks, layout: str) -> None:
    if any(getattr(hook, "hook_id", None) == ACN_REFERENCE_HOOK for hook in getattr(hooks, "hooks", ())):
        raise UnsupportedModelError(
            path=None, expected="control that reaches the U-Net as ComfyUI's control residuals, which the pack "
            "moves onto BK-SDM's blocks",
            found="Advanced-ControlNet's reference-only control in this run's conditioning: it hooks input blocks "
            "4, 5, 7, 8, 10, 11 and output blocks 0-7 of the U-Net object by SD-1.5 position, and "
            f"BK-SDM {layout} removed some of those blocks and numbers the rest differently",
            fix="remove the Reference ControlNet from the conditioning; to guide BK-SDM by an image, use "
            "IP-Adapter (its patches are mapped) or a ControlNet")
