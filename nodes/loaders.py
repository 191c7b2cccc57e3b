"""The BK-SDM loader nodes: a pipeline folder, its U-Net alone, or a single-file checkpoint."""

from __future__ import annotations

import logging
import os

import comfy.utils
import folder_paths
from comfy_api.latest import io

from ..bksdm import components, pipeline
from ..bksdm.errors import BKSDMError
from ..bksdm.unet_keys import parameter_count
from ..bksdm.variants import classify_layout
from ..bksdm.weights import load_state_dict
from .build import (
    WEIGHT_DTYPES,
    build_clip,
    build_model,
    build_vae,
    map_weight_files,
    prefers_half_files,
    set_reload,
    text_encoder_dtype,
    unet_dtype,
)
from .inputs import (
    PREDICTIONS,
    choice,
    diffusers_roots,
    dtype_input,
    embedding_directories,
    folder_input,
    listed_file,
    model_folder,
    prediction_input,
    verdict,
)
from .teacher_addressing import set_teacher_addressing

log = logging.getLogger(__name__)

CATEGORY = "loaders/BK-SDM"
MODEL_TIP = "The BK-SDM U-Net as a standard SD MODEL: use it with KSampler, LoRA, ControlNet, patch and merge nodes."


def _check_folder_inputs(model_name, weight_dtype, prediction) -> bool | str:
    return verdict(model_folder(model_name), choice("weight_dtype", weight_dtype, WEIGHT_DTYPES),
                   choice("prediction", prediction, PREDICTIONS))


def load_folder_unet(folder: pipeline.ModelFolder, weight_dtype: str, prediction: str, disable_dynamic: bool = False):
    """A folder's U-Net as MODEL; returns (MODEL, U-Net spec, whether fp16 files were preferred)."""
    spec = components.read_unet_spec(folder)
    # Without a config.json the layout (so ComfyUI's default dtype) is known only after reading the weights.
    dtype = unet_dtype(weight_dtype, spec) if spec else WEIGHT_DTYPES[weight_dtype]
    half = dtype is not None and prefers_half_files(dtype)
    unet = components.load_unet(folder, prefer_half=half, dtype=dtype, mmap=map_weight_files())
    dtype = dtype or unet_dtype(weight_dtype, unet.spec)
    resolved = pipeline.prediction_type(folder) if prediction == "auto" else prediction
    model = build_model(unet, dtype, resolved, fp8_fast=weight_dtype == "fp8_e4m3fn_fast",
                        disable_dynamic=disable_dynamic)
    set_reload(model, reload_folder_unet, folder.path, weight_dtype, prediction)
    set_teacher_addressing(model, unet.spec)
    _log_loaded(os.path.basename(folder.path), unet, dtype, resolved)
    return model, unet.spec, half


def reload_folder_unet(path: str, weight_dtype: str, prediction: str, disable_dynamic: bool = False):
    """The MODEL of a folder built afresh: ComfyUI's ``cached_patcher_init`` factory."""
    return load_folder_unet(pipeline.open_model_folder(path), weight_dtype, prediction, disable_dynamic)[0]


def load_folder(folder: pipeline.ModelFolder, weight_dtype: str, prediction: str, clip_options: dict | None = None,
                vae_dtype=None):
    """A pipeline folder as (MODEL, CLIP, VAE), with a progress bar of its three parts."""
    progress = comfy.utils.ProgressBar(3)
    model, spec, half = load_folder_unet(folder, weight_dtype, prediction)
    progress.update(1)
    # Read the text encoder in the dtype ComfyUI will keep it in (fp16 by default): less to read and hold.
    te_dtype = (clip_options or {}).get("dtype") or text_encoder_dtype()
    te = components.load_text_encoder(folder, spec, half or prefers_half_files(te_dtype), te_dtype,
                                      mmap=map_weight_files())
    clip = build_clip(te, embedding_directories(), clip_options)
    progress.update(1)
    vae = build_vae(components.load_vae(folder, half, mmap=map_weight_files()), vae_dtype)
    progress.update(1)
    return model, clip, vae


def _log_loaded(name: str, unet: components.UNetWeights, dtype, prediction: str) -> None:
    params = parameter_count(unet.spec) / 1e6
    log.info("BK-SDM: loaded %s: %s layout, %s, %.1f M parameters, %s from %s, %s",
             name, classify_layout(unet.spec), unet.spec.family.title, params, dtype,
             os.path.basename(unet.source), prediction)


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


def checkpoint_model(parts: components.CheckpointParts, path: str, weight_dtype: str, prediction: str,
                     disable_dynamic: bool = False):
    """The MODEL of a split single-file checkpoint."""
    resolved = (parts.prediction or "epsilon") if prediction == "auto" else prediction
    dtype = unet_dtype(weight_dtype, parts.unet.spec)
    model = build_model(parts.unet, dtype, resolved, fp8_fast=weight_dtype == "fp8_e4m3fn_fast",
                        disable_dynamic=disable_dynamic)
    set_reload(model, reload_checkpoint_unet, path, weight_dtype, prediction)
    set_teacher_addressing(model, parts.unet.spec)
    _log_loaded(os.path.basename(path), parts.unet, dtype, resolved)
    return model


def reload_checkpoint_unet(path: str, weight_dtype: str, prediction: str, disable_dynamic: bool = False):
    """The MODEL of a checkpoint built afresh: ComfyUI's ``cached_patcher_init`` factory."""
    parts = components.split_checkpoint(*load_state_dict(path, mmap=map_weight_files()), path)
    return checkpoint_model(parts, path, weight_dtype, prediction, disable_dynamic)


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
        model, _, _ = load_folder_unet(folder, weight_dtype, prediction)
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
        progress = comfy.utils.ProgressBar(3)
        parts = components.split_checkpoint(*load_state_dict(path, mmap=map_weight_files()), path)
        model = checkpoint_model(parts, path, weight_dtype, prediction)
        progress.update(1)
        clip = build_clip(parts.text_encoder, embedding_directories())
        progress.update(1)
        vae = build_vae(parts.vae)
        progress.update(1)
        return io.NodeOutput(model, clip, vae)


NODES = [PipelineLoader, UNetLoader, CheckpointLoader]
