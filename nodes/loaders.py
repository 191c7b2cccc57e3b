"""The BK-SDM loader nodes: a pipeline folder, its U-Net alone, or a single-file checkpoint.

Each node is its inputs, their checks and its cache key; what it builds, ``nodes.assemble`` builds.
"""

from __future__ import annotations

import os

import folder_paths
from comfy_api.latest import io

from ..bksdm.errors import BKSDMError
from ..bksdm.files import pipeline
from .assemble import load_checkpoint, load_folder, load_folder_unet
from .build import WEIGHT_DTYPES
from .inputs import (
    PREDICTIONS,
    choice,
    diffusers_roots,
    dtype_input,
    folder_input,
    listed_file,
    model_folder,
    prediction_input,
    verdict,
)

CATEGORY = "loaders/BK-SDM"
MODEL_TIP = "The BK-SDM U-Net as a standard SD MODEL: use it with KSampler, LoRA, ControlNet, patch and merge nodes."


def _check_folder_inputs(model_name, weight_dtype, prediction) -> bool | str:
    return verdict(model_folder(model_name), choice("weight_dtype", weight_dtype, WEIGHT_DTYPES),
                   choice("prediction", prediction, PREDICTIONS))


def _folder_fingerprint(model_name: str) -> tuple:
    """Changes when the folder's files are replaced on disk, so the cached model is dropped."""
    try:
        folder = pipeline.resolve_model_folder(model_name, diffusers_roots())
    except BKSDMError:  # execute() reports the problem; here it only means "no cache hit"
        return (model_name, None)
    files = []
    for root, _, names in os.walk(folder.path):
        files += [os.path.join(root, n) for n in sorted(names)]
    return (model_name, pipeline.fingerprint(files))


class PipelineLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMPipelineLoader",
            display_name="Load BK-SDM Pipeline",
            category=CATEGORY,
            description="Loads a BK-SDM model folder (the diffusers layout nota-ai publishes) as a standard "
                        "Stable Diffusion MODEL, CLIP and VAE. Works for all nine BK-SDM variants, Segmind's "
                        "small-sd/tiny-sd and full SD 1.x/2.x pipelines.",
            inputs=[folder_input(), dtype_input(), prediction_input()],
            outputs=[
                io.Model.Output(tooltip=MODEL_TIP),
                io.Clip.Output(tooltip="The text encoder BK-SDM shares with its teacher (CLIP-L for SD 1.x "
                                       "variants, OpenCLIP-H for SD 2.x), for CLIP Text Encode and embeddings."),
                io.Vae.Output(tooltip="The teacher's VAE, for VAE Decode / Encode."),
            ],
        )

    @classmethod
    def validate_inputs(cls, model_name, weight_dtype, prediction):
        return _check_folder_inputs(model_name, weight_dtype, prediction)

    @classmethod
    def fingerprint_inputs(cls, model_name, weight_dtype, prediction):
        return _folder_fingerprint(model_name)

    @classmethod
    def execute(cls, model_name, weight_dtype, prediction) -> io.NodeOutput:
        folder = pipeline.resolve_model_folder(model_name, diffusers_roots())
        return io.NodeOutput(*load_folder(folder, weight_dtype, prediction))


class UNetLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMUNetLoader",
            display_name="Load BK-SDM U-Net",
            category=CATEGORY,
            description="Loads only the U-Net of a BK-SDM model folder (or a bare U-Net folder) as a standard "
                        "MODEL. Pair it with the SD-1.4 / SD-2.1 text encoder and VAE you already have "
                        "(Load CLIP, Load VAE, or a checkpoint loader).",
            inputs=[folder_input(), dtype_input(), prediction_input()],
            outputs=[io.Model.Output(tooltip=MODEL_TIP)],
        )

    @classmethod
    def validate_inputs(cls, model_name, weight_dtype, prediction):
        return _check_folder_inputs(model_name, weight_dtype, prediction)

    @classmethod
    def fingerprint_inputs(cls, model_name, weight_dtype, prediction):
        return _folder_fingerprint(model_name)

    @classmethod
    def execute(cls, model_name, weight_dtype, prediction) -> io.NodeOutput:
        folder = pipeline.resolve_model_folder(model_name, diffusers_roots())
        model, _ = load_folder_unet(folder, weight_dtype, prediction)
        return io.NodeOutput(model)


class CheckpointLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMCheckpointLoader",
            display_name="Load BK-SDM Checkpoint",
            category=CATEGORY,
            description="Loads a single-file BK-SDM checkpoint from models/checkpoints as MODEL, CLIP and VAE, "
                        "including files converted with diffusers' script, whose block numbering stock "
                        "ComfyUI misreads.",
            inputs=[
                io.Combo.Input("ckpt_name", options=folder_paths.get_filename_list("checkpoints"),
                               tooltip="A .safetensors (preferred) or .ckpt BK-SDM checkpoint."),
                dtype_input(),
                prediction_input("'auto' uses what the file declares (ComfyUI's v_pred marker), else epsilon. "
                                 "Choose 'v_prediction' for v-prediction models saved elsewhere."),
            ],
            outputs=[io.Model.Output(tooltip=MODEL_TIP), io.Clip.Output(), io.Vae.Output()],
        )

    @classmethod
    def validate_inputs(cls, ckpt_name, weight_dtype, prediction):
        return verdict(listed_file("checkpoints", ckpt_name), choice("weight_dtype", weight_dtype, WEIGHT_DTYPES),
                       choice("prediction", prediction, PREDICTIONS))

    @classmethod
    def fingerprint_inputs(cls, ckpt_name, weight_dtype, prediction):
        path = folder_paths.get_full_path("checkpoints", ckpt_name)
        return (ckpt_name, pipeline.fingerprint([path] if path else []))

    @classmethod
    def execute(cls, ckpt_name, weight_dtype, prediction) -> io.NodeOutput:
        path = folder_paths.get_full_path_or_raise("checkpoints", ckpt_name)
        return io.NodeOutput(*load_checkpoint(path, weight_dtype, prediction))


NODES = [PipelineLoader, UNetLoader, CheckpointLoader]
