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

from ..errors import FILE, FOLDER, BKSDMError, WeightsMismatchError
from ..layout.unet_keys import check_diffusers_unet, convert_diffusers_unet
from ..layout.unet_spec import UNetSpec
from ..layout.variants import classify_layout
from .detect import LDM_PREFIX, detect_unet
from .pipeline import ModelFolder, weights_file
from .text_encoder import normalize_text_encoder, split_checkpoint_text_encoder
from .unet_config import spec_from_config_file
from .vae import check_vae, split_checkpoint_vae
from .weights import load_state_dict, tensor_shapes

log = logging.getLogger(__name__)

WHOLE_MODEL = ("Load BK-SDM Checkpoint needs the U-Net, text encoder and VAE in one file: choose the model's whole "
               "checkpoint (Convert BK-SDM Folder to Checkpoint writes one), or load its diffusers folder with "
               "Load BK-SDM Pipeline")


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


def load_unet(folder: ModelFolder, prefer_half: bool, dtype=None, mmap: bool = True,
              spec: UNetSpec | None = None) -> UNetWeights:
    """The folder's U-Net, checked against its config.json (or detected without one), in ``dtype``.
    ``spec``: what ``read_unet_spec`` already gave the caller, so that config.json is read once."""
    path = weights_file(folder, "unet", prefer_half)
    shapes = tensor_shapes(path)
    spec = spec or read_unet_spec(folder)
    if spec is None:
        spec, naming, _ = detect_unet(shapes, path, FOLDER)
        log.info("BK-SDM: %s has no config.json; detected %s", folder.unet_dir, spec.describe())
        if naming != "diffusers":
            raise WeightsMismatchError(path=path, expected="diffusers U-Net tensor names in a diffusers folder",
                                       found="ComfyUI/LDM names (a checkpoint-style file)",
                                       fix="replace it with the model's diffusers U-Net weights (download the "
                                       "model folder again); a whole single-file checkpoint goes in "
                                       "models/checkpoints, for Load BK-SDM Checkpoint")
    try:  # names and shapes are checked from the header, before any weight is read
        check_diffusers_unet(shapes, spec, path, spec.describe())
    except WeightsMismatchError as mismatch:
        raise _explain_mismatch(mismatch, shapes, spec, path) from None
    state_dict, _ = load_state_dict(path, dtype, mmap)
    return UNetWeights(spec, convert_diffusers_unet(state_dict, spec, path, spec.describe()), path)


def _explain_mismatch(mismatch: WeightsMismatchError, shapes, spec: UNetSpec, path: str) -> WeightsMismatchError:
    """Say what the weights are when they disagree with config.json, if they are a known layout."""
    try:
        actual, _, _ = detect_unet(shapes, path, FOLDER)
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
        diffusers_unet = "conv_in.weight" in state_dict  # a diffusers U-Net file, which lives in a folder
        raise WeightsMismatchError(path=path, expected=f"a full checkpoint (U-Net tensors under '{LDM_PREFIX}')",
                                   found=f"{len(state_dict)} tensors and no U-Net among them"
                                   + (" (diffusers U-Net names)" if diffusers_unet else ""),
                                   fix="put it, as diffusion_pytorch_model.safetensors, in a folder in models/"
                                   "diffusers with the model's unet/config.json, and load that with Load BK-SDM U-Net"
                                   if diffusers_unet
                                   else "choose a whole SD 1.x/2.x checkpoint (U-Net, text encoder and VAE in one "
                                   "file); LoRAs, VAEs and ControlNets go in their own folders and nodes")
    spec, _, renames = detect_unet({k: tuple(v.shape) for k, v in unet.items()}, path, FILE)
    if renames:
        log.info("BK-SDM: %s uses the gapped block numbering of diffusers' conversion script; renumbered %d tensors",
                 path, len(renames))
    unet = {renames.get(k, k): v for k, v in unet.items()}
    text_encoder = split_checkpoint_text_encoder(state_dict, spec.family)
    vae = split_checkpoint_vae(state_dict)
    if not text_encoder or not vae:  # Load BK-SDM Checkpoint gives all three, so it needs all three
        part = f"the {spec.family.title} text encoder" if not text_encoder else "the VAE"
        raise WeightsMismatchError(path=path, expected=f"{part} inside the checkpoint",
                                   found=f"a checkpoint without {part}",
                                   fix=WHOLE_MODEL)
    check_vae(vae, path)
    return CheckpointParts(
        unet=UNetWeights(spec, unet, path),
        text_encoder=normalize_text_encoder(text_encoder, spec.family, path),
        vae=vae,
        prediction=checkpoint_prediction(state_dict, metadata),
        renumbered=bool(renames),
    )
