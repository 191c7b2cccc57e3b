"""Inputs the BK-SDM nodes share, and their checks.

ComfyUI (0.3.64) does not check a V3 node's combo values against their options when a
prompt arrives through the API, so every node checks its own in ``validate_inputs``:
a bad value is refused before anything runs, with a message that says what would do.
"""

from __future__ import annotations

import folder_paths
from comfy_api.latest import io

from ..bksdm.errors import BKSDMError
from ..bksdm.files import pipeline
from .build import WEIGHT_DTYPES

PREDICTIONS = ("auto", "epsilon", "v_prediction")
DTYPE_TIP = ("Precision the U-Net weights are stored in. 'default' lets ComfyUI choose for your GPU, and on a CPU "
             "with native bf16 (AVX512-BF16 or AMX) computes in bf16; fp32 is exact. The fp16 files of the folder "
             "are read when the choice is fp16 or fp8. fp8 saves memory at some quality cost.")
PREDICTION_TIP = ("What the U-Net predicts. 'auto' reads the model's scheduler config (the released BK-SDM models "
                  "predict noise, 'epsilon'); choose 'v_prediction' for v-prediction conversions.")


def diffusers_roots() -> list[str]:
    return folder_paths.get_folder_paths("diffusers")


def embedding_directories() -> list[str]:
    return folder_paths.get_folder_paths("embeddings")


def dtype_input() -> io.Combo.Input:
    return io.Combo.Input("weight_dtype", options=list(WEIGHT_DTYPES), default="default", tooltip=DTYPE_TIP)


def prediction_input(tooltip: str = PREDICTION_TIP) -> io.Combo.Input:
    return io.Combo.Input("prediction", options=list(PREDICTIONS), default="auto", tooltip=tooltip)


def folder_input(tooltip: str = "A BK-SDM model folder (diffusers layout) from models/diffusers.") -> io.Combo.Input:
    return io.Combo.Input("model_name", options=pipeline.list_model_folders(diffusers_roots()), tooltip=tooltip)


def choice(name: str, value, options) -> str | None:
    """None if ``value`` is one of ``options``, else the message for the user."""
    return None if value in options else f"{name} must be one of {', '.join(map(str, options))}, not {value!r}"


def model_folder(name: str) -> str | None:
    """None if ``name`` is a model folder under the diffusers folders (path tricks refused)."""
    try:
        pipeline.resolve_model_folder(name, diffusers_roots())
    except BKSDMError as e:
        return str(e)
    return None


def listed_file(kind: str, name: str) -> str | None:
    """None if ``name`` is a file ComfyUI lists in its ``kind`` folders (checkpoints, loras)."""
    if name in folder_paths.get_filename_list(kind):
        return None
    return f"{name!r} is not a file in the {kind} folders ({', '.join(folder_paths.get_folder_paths(kind))})"


def verdict(*problems: str | None) -> bool | str:
    """What ``validate_inputs`` returns: True, or the first problem."""
    return next((p for p in problems if p), True)
