"""Files → ComfyUI MODEL / CLIP / VAE: what the loader nodes, the checkpoint export and ComfyUI's
reload of a MODEL (``cached_patcher_init``) all build from a model folder or a single-file checkpoint.

``bksdm.files.components`` reads and checks the files, ``nodes.build`` makes ComfyUI's objects of them;
between the two, this module decides the U-Net's dtype (and so which files are read), the
prediction type, the teacher addressing every MODEL gets, and the one log line of a load.
"""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

import comfy.utils
import torch

from ..bksdm.files import components, pipeline
from ..bksdm.files.weights import load_state_dict
from ..bksdm.layout.unet_keys import parameter_count
from ..bksdm.layout.unet_spec import UNetSpec
from ..bksdm.layout.variants import classify_layout
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
    vae_dtype_for,
)
from .inputs import embedding_directories
from .teacher_addressing import set_teacher_addressing

log = logging.getLogger(__name__)


class FolderUNet(NamedTuple):
    weights: components.UNetWeights
    half_files: bool  # its fp16 files were read, so the text encoder and VAE read theirs too


def read_folder_unet(folder: pipeline.ModelFolder, weight_dtype: str) -> tuple[FolderUNet, torch.dtype]:
    """The folder's U-Net weights and the dtype its MODEL stores them in, decided once from its layout.

    The dtype picks the files read (the fp16 ones for half precision) and, left to ComfyUI
    ("default"), depends on the layout. config.json tells the layout before any weight is read;
    without one only the weights tell it, so they are read first, in the dtype asked for (as
    stored, for "default"), and the MODEL build converts them.
    """
    config_spec = components.read_unet_spec(folder)
    if config_spec is None:
        read_first = _read_unet(folder, WEIGHT_DTYPES[weight_dtype], None)
        return read_first, unet_dtype(weight_dtype, read_first.weights.spec)
    dtype = unet_dtype(weight_dtype, config_spec)
    return _read_unet(folder, dtype, config_spec), dtype


def _read_unet(folder: pipeline.ModelFolder, dtype: torch.dtype | None, spec: UNetSpec | None) -> FolderUNet:
    half = prefers_half_files(dtype)
    return FolderUNet(components.load_unet(folder, half, dtype, map_weight_files(), spec), half)


def load_folder_unet(folder: pipeline.ModelFolder, weight_dtype: str, prediction: str, disable_dynamic: bool = False):
    """A folder's U-Net as MODEL; returns (MODEL, what was read for it)."""
    unet, dtype = read_folder_unet(folder, weight_dtype)
    resolved = pipeline.prediction_type(folder) if prediction == "auto" else prediction
    model = _model(unet.weights, dtype, weight_dtype, resolved, disable_dynamic, os.path.basename(folder.path))
    set_reload(model, reload_folder_unet, folder.path, weight_dtype, prediction)
    return model, unet


def reload_folder_unet(path: str, weight_dtype: str, prediction: str, disable_dynamic: bool = False):
    """The MODEL of a folder built afresh: ComfyUI's ``cached_patcher_init`` factory."""
    return load_folder_unet(pipeline.open_model_folder(path), weight_dtype, prediction, disable_dynamic)[0]


def load_folder(folder: pipeline.ModelFolder, weight_dtype: str, prediction: str, clip_options: dict | None = None,
                vae_dtype=None):
    """A pipeline folder as (MODEL, CLIP, VAE), with a progress bar of its three parts."""
    progress = comfy.utils.ProgressBar(3)
    model, unet = load_folder_unet(folder, weight_dtype, prediction)
    progress.update(1)
    # Read the text encoder in the dtype ComfyUI will keep it in (fp16 by default): less to read and hold.
    te_dtype = (clip_options or {}).get("dtype") or text_encoder_dtype()
    te = components.load_text_encoder(folder, unet.weights.spec, unet.half_files or prefers_half_files(te_dtype),
                                      te_dtype, mmap=map_weight_files())
    clip = build_clip(te, embedding_directories(), clip_options)
    progress.update(1)
    vae = build_vae(components.load_vae(folder, unet.half_files, mmap=map_weight_files()),
                    vae_dtype or vae_dtype_for(weight_dtype))
    progress.update(1)
    return model, clip, vae


def read_checkpoint(path: str) -> components.CheckpointParts:
    return components.split_checkpoint(*load_state_dict(path, mmap=map_weight_files()), path)


def checkpoint_model(parts: components.CheckpointParts, path: str, weight_dtype: str, prediction: str,
                     disable_dynamic: bool = False):
    """The MODEL of a split single-file checkpoint."""
    resolved = (parts.prediction or "epsilon") if prediction == "auto" else prediction
    dtype = unet_dtype(weight_dtype, parts.unet.spec)
    model = _model(parts.unet, dtype, weight_dtype, resolved, disable_dynamic, os.path.basename(path))
    set_reload(model, reload_checkpoint_unet, path, weight_dtype, prediction)
    return model


def reload_checkpoint_unet(path: str, weight_dtype: str, prediction: str, disable_dynamic: bool = False):
    """The MODEL of a checkpoint built afresh: ComfyUI's ``cached_patcher_init`` factory."""
    return checkpoint_model(read_checkpoint(path), path, weight_dtype, prediction, disable_dynamic)


def load_checkpoint(path: str, weight_dtype: str, prediction: str):
    """A single-file checkpoint as (MODEL, CLIP, VAE), with a progress bar of its three parts."""
    progress = comfy.utils.ProgressBar(3)
    parts = read_checkpoint(path)
    model = checkpoint_model(parts, path, weight_dtype, prediction)
    progress.update(1)
    clip = build_clip(parts.text_encoder, embedding_directories())
    progress.update(1)
    vae = build_vae(parts.vae, vae_dtype_for(weight_dtype))
    progress.update(1)
    return model, clip, vae


def _model(unet: components.UNetWeights, dtype: torch.dtype, weight_dtype: str, prediction: str,
           disable_dynamic: bool, name: str):
    """What every BK-SDM MODEL is, from either source: built, speaking the teacher's block addresses, logged."""
    model = build_model(unet, dtype, prediction, fp8_fast=weight_dtype == "fp8_e4m3fn_fast",
                        disable_dynamic=disable_dynamic)
    set_teacher_addressing(model, unet.spec)
    log.info("BK-SDM: loaded %s: %s layout, %s, %.1f M parameters, %s from %s, %s",
             name, classify_layout(unet.spec), unet.spec.family.title, parameter_count(unet.spec) / 1e6, dtype,
             os.path.basename(unet.source), prediction)
    return model
