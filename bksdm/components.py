"""Load the parts of a model, validated and renamed for ComfyUI, as plain state dicts.

Two sources: a diffusers model folder (:func:`load_unet`, :func:`load_text_encoder`,
:func:`load_vae`) and a single-file checkpoint (:func:`split_checkpoint`). Every
function checks its tensors completely before returning, so ComfyUI is never handed a
model that would load with warnings and produce garbage. Tensors are never copied:
safetensors stay memory-mapped (unless ``mmap=False``) and renaming only rebinds names.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from dataclasses import dataclass

from .detect import LDM_PREFIX, detect_unet
from .errors import BKSDMError, ModelNotFoundError, WeightsMismatchError
from .pipeline import ModelFolder, weights_file
from .text_encoder import normalize_text_encoder, split_checkpoint_text_encoder
from .unet_config import spec_from_config_file
from .unet_keys import check_diffusers_unet, convert_diffusers_unet
from .unet_spec import UNetSpec
from .vae import check_vae, split_checkpoint_vae
from .variants import classify_layout
from .weights import load_state_dict, tensor_shapes

log = logging.getLogger(__name__)


@dataclass
class UNetWeights:
    spec: UNetSpec
    state_dict: dict  # ComfyUI (LDM) names, no prefix
    source: str

    @property
    def layout(self) -> str:
        return classify_layout(self.spec)


def read_unet_spec(folder: ModelFolder) -> UNetSpec | None:
    """The spec from the U-Net's config.json, or None when the folder has none."""
    config = os.path.join(folder.unet_dir, "config.json")
    return spec_from_config_file(config) if os.path.isfile(config) else None


def load_unet(folder: ModelFolder, prefer_half: bool, dtype=None, mmap: bool = True) -> UNetWeights:
    """The folder's U-Net, checked against its config.json (or detected without one), in ``dtype``."""
    path = weights_file(folder, "unet", prefer_half)
    shapes = tensor_shapes(path)
    spec = read_unet_spec(folder)
    if spec is None:
        spec, naming, _ = detect_unet(shapes, path)
        log.info("BK-SDM: %s has no config.json; detected %s", folder.unet_dir, spec.describe())
        if naming != "diffusers":
            raise WeightsMismatchError(path=path, expected="diffusers U-Net tensor names in a diffusers folder",
                                       found="ComfyUI/LDM names (a checkpoint-style file)",
                                       fix="put single-file checkpoints in models/checkpoints and use the "
                                       "BK-SDM checkpoint loader")
    try:  # names and shapes are checked from the header, before any weight is read
        check_diffusers_unet(shapes, spec, path, spec.describe())
    except WeightsMismatchError as mismatch:
        raise _explain_mismatch(mismatch, shapes, spec, path) from None
    state_dict, _ = load_state_dict(path, dtype, mmap)
    return UNetWeights(spec, convert_diffusers_unet(state_dict, spec, path, spec.describe()), path)


def _explain_mismatch(mismatch: WeightsMismatchError, shapes, spec: UNetSpec, path: str) -> WeightsMismatchError:
    """Say what the weights are when they disagree with config.json, if they are a known layout."""
    try:
        actual, _, _ = detect_unet(shapes, path)
    except BKSDMError:  # not a U-Net we recognise: the tensor listing says more
        return mismatch
    config = os.path.join(os.path.dirname(path), "config.json")
    return WeightsMismatchError(
        path=path,
        expected=f"the weights of the U-Net config.json describes ({classify_layout(spec)}: {spec.describe()})",
        found=f"the weights of another U-Net ({classify_layout(actual)}: {actual.describe()})",
        fix=f"{config} and the weights come from different models: download the model folder again")


def load_text_encoder(folder: ModelFolder, spec: UNetSpec, prefer_half: bool, dtype=None, mmap: bool = True) -> dict:
    path = weights_file(folder, "text_encoder", prefer_half)
    return normalize_text_encoder(load_state_dict(path, dtype, mmap)[0], spec.family, path)


def load_vae(folder: ModelFolder, prefer_half: bool, dtype=None, mmap: bool = True) -> dict:
    path = weights_file(folder, "vae", prefer_half)
    state_dict, _ = load_state_dict(path, dtype, mmap)
    check_vae(state_dict, path)
    return state_dict


@dataclass
class CheckpointParts:
    unet: UNetWeights
    text_encoder: dict
    vae: dict
    prediction: str | None  # what the file declares, if anything
    renumbered: bool  # the file used the gapped numbering of diffusers' conversion script


def checkpoint_prediction(state_dict: Mapping, metadata: Mapping) -> str | None:
    """The prediction type a checkpoint declares (ComfyUI's 'v_pred' marker, or modelspec)."""
    if "v_pred" in state_dict or metadata.get("modelspec.predict_key") == "v":
        return "v_prediction"
    if metadata.get("modelspec.predict_key") == "epsilon":
        return "epsilon"
    return None


def split_checkpoint(state_dict: Mapping, metadata: Mapping, path: str) -> CheckpointParts:
    """Split a single-file SD checkpoint into validated U-Net, text encoder and VAE."""
    unet = {k[len(LDM_PREFIX):]: v for k, v in state_dict.items() if k.startswith(LDM_PREFIX)}
    if not unet:
        raise ModelNotFoundError(path=path, expected=f"a full checkpoint (U-Net tensors under '{LDM_PREFIX}')",
                                 found=f"{len(state_dict)} tensors and no U-Net among them",
                                 fix="a diffusers U-Net file belongs in a model folder with its config.json; "
                                 "load that with the BK-SDM U-Net loader")
    spec, _, renames = detect_unet({k: tuple(v.shape) for k, v in unet.items()}, path)
    if renames:
        log.info("BK-SDM: %s uses the gapped block numbering of diffusers' conversion script; renumbered %d tensors",
                 path, len(renames))
    unet = {renames.get(k, k): v for k, v in unet.items()}
    text_encoder = split_checkpoint_text_encoder(state_dict, spec.family)
    if not text_encoder:
        raise ModelNotFoundError(path=path, expected=f"the {spec.family.title} text encoder inside the checkpoint",
                                 found="a checkpoint without a text encoder",
                                 fix="load the U-Net with a U-Net loader and the text encoder with Load CLIP")
    vae = split_checkpoint_vae(state_dict)
    if not vae:
        raise ModelNotFoundError(path=path, expected="the VAE inside the checkpoint",
                                 found="a checkpoint without a VAE",
                                 fix="add a Load VAE node for the SD VAE")
    check_vae(vae, path)
    return CheckpointParts(
        unet=UNetWeights(spec, unet, path),
        text_encoder=normalize_text_encoder(text_encoder, spec.family, path),
        vae=vae,
        prediction=checkpoint_prediction(state_dict, metadata),
        renumbered=bool(renames),
    )
