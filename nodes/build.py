"""Turn validated state dicts into ComfyUI MODEL / CLIP / VAE with stock ComfyUI calls.

The U-Net becomes ComfyUI's own ``UNetModel`` inside its own SD 1.x / SD 2.x model
class, held by the patcher ComfyUI's own loaders use (the DynamicVRAM one where that is
on), so memory management, LoRA, ControlNet, model merging, the model-patching nodes and
Save Checkpoint treat it like any other SD model. The steps
are those of ``comfy.sd.load_diffusion_model_state_dict`` minus its layout guessing,
which cannot recognise BK-SDM (the config comes from ``bksdm`` instead), and with the
weights assigned rather than copied. Text encoder and VAE go through ComfyUI's own
loaders unchanged.
"""

from __future__ import annotations

import inspect

import comfy.model_base
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import comfy.supported_models
import comfy.utils
import torch

from ..bksdm.errors import UnsupportedModelError
from ..bksdm.files.components import UNetWeights
from ..bksdm.layout.unet_keys import parameter_count
from ..bksdm.layout.unet_spec import FAMILIES, UNetSpec, spec_from_unet_config
from .cpu import compute_in_bf16, default_on_this_machine, default_vae_dtype, prefer_sdpa, vae_channels_last_in_bf16

MODEL_CLASSES = {"sd1": comfy.supported_models.SD15, "sd2": comfy.supported_models.SD20}
MODEL_TYPES = {"epsilon": comfy.model_base.ModelType.EPS, "v_prediction": comfy.model_base.ModelType.V_PREDICTION}

# The core U-Net loader's choices, plus the plain float types.
WEIGHT_DTYPES = {
    "default": None,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
    "fp32": torch.float32,
    "fp8_e4m3fn": torch.float8_e4m3fn,
    "fp8_e4m3fn_fast": torch.float8_e4m3fn,
    "fp8_e5m2": torch.float8_e5m2,
}
HALF_FILE_DTYPES = (torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)  # the fp16 files lose them nothing


def unet_dtype(weight_dtype: str, spec: UNetSpec) -> torch.dtype:
    """The dtype the U-Net will be stored in: the user's choice, or ComfyUI's for this device
    (bf16 for fp32 on a CPU that computes bf16 natively: ``cpu.default_unet_dtype``)."""
    chosen = WEIGHT_DTYPES[weight_dtype]
    if chosen is not None:
        return chosen
    supported = MODEL_CLASSES[spec.family.name].supported_inference_dtypes
    return default_on_this_machine(comfy.model_management.unet_dtype(model_params=parameter_count(spec),
                                                                      supported_dtypes=supported))


def vae_dtype_for(weight_dtype: str) -> torch.dtype | None:
    """The dtype the pack's loaders give the VAE: with ``weight_dtype = default``, bf16 on a CPU that
    computes it natively (``cpu.default_vae_dtype``); otherwise ComfyUI's choice (None)."""
    return default_vae_dtype() if weight_dtype == "default" else None


def prefers_half_files(dtype: torch.dtype | None) -> bool:
    """Whether to read a folder's fp16 files for ``dtype`` (None, as stored: the full-precision ones)."""
    return dtype in HALF_FILE_DTYPES


def map_weight_files() -> bool:
    """Whether weight files may stay memory-mapped: not under ComfyUI's --disable-mmap."""
    return not comfy.utils.DISABLE_MMAP


def text_encoder_dtype() -> torch.dtype:
    """The dtype ComfyUI stores a text encoder in on this machine (its flags included)."""
    mm = comfy.model_management
    return mm.text_encoder_dtype(mm.text_encoder_device())


def patcher_class(disable_dynamic: bool = False) -> type:
    """The patcher class ComfyUI's own loaders build at this moment.

    ``CoreModelPatcher`` (0.33; 0.3.64 has none) is the name main.py rebinds to the DynamicVRAM
    patcher on CUDA, so it is read at every load, never imported once. Older releases
    have only ``ModelPatcher``.
    """
    patchers = comfy.model_patcher
    if disable_dynamic:
        return patchers.ModelPatcher
    return getattr(patchers, "CoreModelPatcher", patchers.ModelPatcher)


def build_model(unet: UNetWeights, dtype: torch.dtype, prediction: str, fp8_fast: bool = False,
                disable_dynamic: bool = False):
    """A MODEL around ComfyUI's UNetModel, built from the derived config as
    ``comfy.sd.load_diffusion_model_state_dict`` builds its own."""
    model_config = MODEL_CLASSES[unet.spec.family.name](unet.spec.unet_config)
    load_device = comfy.model_management.get_torch_device()
    offload_device = comfy.model_management.unet_offload_device()
    manual_cast = comfy.model_management.unet_manual_cast(dtype, load_device, model_config.supported_inference_dtypes)
    if "device" in inspect.signature(model_config.set_inference_dtype).parameters:  # 0.33, not 0.3.64
        model_config.set_inference_dtype(dtype, manual_cast, device=load_device)
    else:
        model_config.set_inference_dtype(dtype, manual_cast)
    if fp8_fast:
        model_config.optimizations["fp8"] = True
    # BaseModel is what model_config.get_model() builds; calling it directly lets the
    # prediction type come from the scheduler config instead of a weight heuristic.
    model = comfy.model_base.BaseModel(model_config, model_type=MODEL_TYPES[prediction], device=offload_device)
    patcher = patcher_class(disable_dynamic)(model, load_device=load_device, offload_device=offload_device)
    # The tensors become the parameters (assign), as the DynamicVRAM patcher requires; the
    # classic patcher gets them assigned too, so weights mapped from the file in the right
    # dtype are never copied. strict: bksdm has checked every name and shape already.
    state = {k: v if v.dtype == dtype else v.to(dtype) for k, v in unet.state_dict.items()}
    model.diffusion_model.load_state_dict(model_config.process_unet_state_dict(state), strict=True, assign=True)
    model.diffusion_model.to(offload_device)
    if comfy.model_management.force_channels_last():  # as BaseModel would have laid out its own tensors
        model.diffusion_model.to(memory_format=torch.channels_last)
    prefer_sdpa(patcher)
    compute_in_bf16(patcher, dtype)
    return patcher


def set_reload(patcher, factory, *args) -> None:
    """Tell ComfyUI how to build this MODEL again from its files (``cached_patcher_init``, 0.33 and
    later): what a non-dynamic clone (TorchCompileModel) and a multi-GPU copy start from.
    ``factory(*args, disable_dynamic=...)`` must return a fresh patcher."""
    if hasattr(patcher, "cached_patcher_init"):
        patcher.cached_patcher_init = (factory, args)


def compute_dtype(patcher) -> torch.dtype:
    """The dtype ComfyUI computes a MODEL's layers in, and so the dtype of the activations inside
    its U-Net: its cast dtype (as patched, e.g. by ``set_model_compute_dtype``) when it has one,
    else its weights' dtype."""
    return patcher.get_model_object("manual_cast_dtype") or patcher.model.get_dtype()


def spec_of(model) -> UNetSpec:
    """The U-Net spec of a MODEL: its ComfyUI config, and the family its model class stands for."""
    model_config = model.model.model_config
    for family, model_class in MODEL_CLASSES.items():
        if type(model_config) is model_class:
            return spec_from_unet_config(FAMILIES[family], model_config.unet_config)
    raise UnsupportedModelError(path=None, expected="an SD 1.x or SD 2.x MODEL (for example from a BK-SDM loader)",
                                found=f"a {type(model_config).__name__} model",
                                fix="connect a BK-SDM or SD 1.x/2.x model")


def build_clip(text_encoder: dict, embedding_directory: list[str] | None = None, model_options: dict | None = None):
    return comfy.sd.load_text_encoder_state_dicts(
        [text_encoder], embedding_directory=embedding_directory,
        clip_type=comfy.sd.CLIPType.STABLE_DIFFUSION, model_options=model_options or {})


def build_vae(vae: dict, dtype: torch.dtype | None = None):
    model = comfy.sd.VAE(sd=vae, dtype=dtype)
    model.throw_exception_if_invalid()
    vae_channels_last_in_bf16(model)
    return model
