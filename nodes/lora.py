"""Load a LoRA trained on full SD 1.x/2.x onto a BK-SDM model."""

from __future__ import annotations

import comfy.sd
import folder_paths
from comfy_api.latest import io

from ..bksdm.files.weights import load_state_dict
from ..bksdm.layout.lora import transfer_lora
from .build import map_weight_files, spec_of
from .inputs import listed_file, verdict

STRENGTH = dict(default=1.0, min=-100.0, max=100.0, step=0.01)


class LoraTransferLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMLoraLoader",
            display_name="Load SD LoRA onto BK-SDM",
            category="loaders/BK-SDM",
            description="Applies a LoRA trained on the full SD 1.x/2.x U-Net to a BK-SDM model: each U-Net delta "
                        "moves to the block BK-SDM initialised from the block it was trained on, deltas of removed "
                        "blocks are dropped. The text-encoder part applies unchanged. For a LoRA trained on "
                        "BK-SDM itself, use the stock Load LoRA node.",
            inputs=[
                io.Model.Input("model", tooltip="A BK-SDM MODEL (Base, Small or Tiny; SD 1.x or 2.x)."),
                io.Clip.Input("clip", optional=True, tooltip="The model's CLIP, for the LoRA's text-encoder part."),
                io.Combo.Input("lora_name", options=folder_paths.get_filename_list("loras"),
                               tooltip="A LoRA trained on SD 1.x (for SD 1.x variants) or SD 2.x (for v2 variants)."),
                io.Float.Input("strength_model", tooltip="How strongly to modify the U-Net; can be negative.",
                               **STRENGTH),
                io.Float.Input("strength_clip", tooltip="How strongly to modify CLIP; can be negative.", **STRENGTH),
            ],
            outputs=[io.Model.Output(tooltip="The model with the transferred LoRA."),
                     io.Clip.Output(tooltip="CLIP with the LoRA's text-encoder part (None if no CLIP was given).")],
        )

    @classmethod
    def validate_inputs(cls, lora_name):
        return verdict(listed_file("loras", lora_name))

    @classmethod
    def execute(cls, model, lora_name, strength_model, strength_clip, clip=None) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("loras", lora_name)
        lora, _ = load_state_dict(path, mmap=map_weight_files())
        transferred, _ = transfer_lora(lora, spec_of(model), path)
        new_model, new_clip = comfy.sd.load_lora_for_models(model, clip, transferred, strength_model, strength_clip)
        return io.NodeOutput(new_model, new_clip)


NODES = [LoraTransferLoader]
