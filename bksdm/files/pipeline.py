"""Diffusers model folders: find them, resolve a user's choice safely, pick their files.

A folder is either a whole pipeline (``model_index.json`` with ``unet/``,
``text_encoder/``, ``vae/``, ``scheduler/``), as nota-ai publishes BK-SDM, or a bare
U-Net folder (``config.json`` + weights). Safetensors are always preferred over
pickles; the ``fp16`` variant files are preferred when the model will run in half
precision, since they halve what is read from disk.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shlex
from dataclasses import dataclass

from ..errors import InvalidFileError, ModelNotFoundError, UnsupportedModelError
from .unet_config import read_config

log = logging.getLogger(__name__)

PIPELINE_INDEX = "model_index.json"
WEIGHT_STEMS = {  # component -> (safetensors stem, pickle stem)
    "unet": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "vae": ("diffusion_pytorch_model", "diffusion_pytorch_model"),
    "text_encoder": ("model", "pytorch_model"),
}
SD_SCHEDULE = {"num_train_timesteps": 1000, "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear"}
PREDICTION_TYPES = ("epsilon", "v_prediction")
HIDDEN_PREFIX = "."  # staging folders of unfinished downloads are hidden, never listed
# The index of weights saved in parts (diffusers/transformers' max_shard_size), variant or not:
# diffusion_pytorch_model.safetensors.index.json, model.safetensors.index.fp16.json, ...
SHARD_INDEX = re.compile(r"(.+)\.(?:safetensors|bin)\.index(?:\.(\w+))?\.json")


@dataclass(frozen=True)
class ModelFolder:
    """A resolved model folder: a pipeline, or a bare U-Net."""

    path: str
    is_pipeline: bool

    @property
    def unet_dir(self) -> str:
        return os.path.join(self.path, "unet") if self.is_pipeline else self.path

    def component_dir(self, component: str) -> str:
        return self.unet_dir if component == "unet" else os.path.join(self.path, component)


def _is_unet_folder(path: str) -> bool:
    config = os.path.join(path, "config.json")
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("_class_name") == "UNet2DConditionModel"
    except (OSError, ValueError, AttributeError):
        return False


def list_model_folders(roots: list[str]) -> list[str]:
    """Names (relative, '/'-separated) of the model folders under ``roots``, sorted."""
    names = set()
    for root in roots:
        if not os.path.isdir(root):
            continue
        for current, dirs, files in os.walk(root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith(HIDDEN_PREFIX))
            if PIPELINE_INDEX in files or (current != root and _is_unet_folder(current)):
                names.add(os.path.relpath(current, root).replace(os.sep, "/"))
                dirs[:] = []  # a model's own sub-folders are not models
    return sorted(names)


def resolve_model_folder(name: str, roots: list[str]) -> ModelFolder:
    """The folder ``name`` refers to under one of ``roots``; refuses names that escape them."""
    parts = name.replace("\\", "/").split("/")
    if not name or os.path.isabs(name) or ".." in parts or any(p.startswith(HIDDEN_PREFIX) for p in parts if p):
        raise ModelNotFoundError(path=name, expected="a model folder name inside the diffusers model folders",
                                 found="a name that points outside them (absolute, '..' or hidden)",
                                 fix="pick the folder from the node's list")
    for root in roots:
        path = os.path.join(root, *parts)
        if os.path.isdir(path):
            return open_model_folder(path)
    raise ModelNotFoundError(path=name,
                             expected=f"a folder '{name}' in one of: {', '.join(roots) or '(no diffusers folders)'}",
                             found="no such folder",
                             fix="put the model folder there (see the README's folder tree), "
                             "or download it with the BK-SDM download node")


def open_model_folder(path: str) -> ModelFolder:
    if not os.path.isdir(path):
        raise ModelNotFoundError(path=path, expected="a diffusers model folder", found="no such folder",
                                 fix="check the path, or download the model with the BK-SDM download node")
    if os.path.isfile(os.path.join(path, PIPELINE_INDEX)):
        _check_pipeline_index(path)
        return ModelFolder(path, is_pipeline=True)
    if os.path.isfile(os.path.join(path, "config.json")):
        return ModelFolder(path, is_pipeline=False)
    raise ModelNotFoundError(path=path,
                             expected=f"a diffusers pipeline folder ({PIPELINE_INDEX}, unet/, text_encoder/, vae/) "
                             "or a U-Net folder (config.json + weights)",
                             found=f"a folder with {_listing(path)}",
                             fix="download the whole model repository into this folder")


def _listing(path: str) -> str:
    try:
        entries = sorted(os.listdir(path))
    except OSError:
        return "unreadable contents"
    return ", ".join(entries[:8]) + (f" and {len(entries) - 8} more" if len(entries) > 8 else "") or "nothing in it"


def _check_pipeline_index(path: str) -> None:
    index_path = os.path.join(path, PIPELINE_INDEX)
    index = read_config(index_path)
    pipeline = index.get("_class_name", "")
    if "unet" not in index and "transformer" in index:  # ComfyUI's DiffusersLoader reads unet/ only
        raise UnsupportedModelError(path=index_path, expected="a U-Net pipeline (SD 1.x / 2.x family)",
                                    found=f"a transformer-based pipeline ('{pipeline}')",
                                    fix="ComfyUI loads no diffusers folder of a transformer model (SD3, Flux...): get "
                                    "the model's single-file release and load it with Load Checkpoint (a whole "
                                    "checkpoint, in models/checkpoints) or Load Diffusion Model (the transformer "
                                    "alone, in models/diffusion_models)")
    if "XL" in pipeline:
        raise UnsupportedModelError(path=index_path, expected="an SD 1.x / 2.x pipeline",
                                    found=f"an SDXL pipeline ('{pipeline}')",
                                    fix="load this folder with ComfyUI's own Load Diffusers Model node (it lists "
                                    "the pipeline folders in models/diffusers), or an SDXL single-file checkpoint "
                                    "with Load Checkpoint")


def weights_file(folder: ModelFolder, component: str, prefer_half: bool) -> str:
    """The weight file of a component, safetensors first, fp16 first if ``prefer_half``."""
    directory = folder.component_dir(component)
    if not os.path.isdir(directory):
        raise ModelNotFoundError(path=directory, expected=f"the '{component}' folder of the pipeline",
                                 found="no such folder",
                                 fix="the download is incomplete: download the model again")
    safe_stem, pickle_stem = WEIGHT_STEMS[component]
    variants = (".fp16", "") if prefer_half else ("", ".fp16")
    candidates = [f"{safe_stem}{v}.safetensors" for v in variants] + [f"{pickle_stem}{v}.bin" for v in variants]
    for name in candidates:
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            if os.path.getsize(path) == 0:
                raise InvalidFileError(path=path, expected="weights", found="an empty file",
                                       fix="the download is incomplete: download it again")
            return path
    index = next((n for n in sorted(os.listdir(directory)) if SHARD_INDEX.fullmatch(n)), None)
    if index is not None:
        raise UnsupportedModelError(path=directory, expected=f"one weights file: {', '.join(candidates)}",
                                    found=f"weights split into parts ({index}), which this pack does not read",
                                    fix="download the model's weights as one file into this folder, or merge the "
                                    f"parts into one with ComfyUI's Python: "
                                    f"{merge_shards_command(directory, index, safe_stem)}")
    raise ModelNotFoundError(path=directory, expected=f"one of {', '.join(candidates)}", found=_listing(directory),
                             fix="download the model's weights into this folder (safetensors preferred)")


def merge_shards_command(directory: str, index: str, stem: str, windows: bool = os.name == "nt") -> str:
    """A command that writes the parts ``index`` lists as the one file the pack reads, quoted for
    the shell a user types it in: POSIX shells, or cmd / PowerShell on Windows (there the code is
    one double-quoted argument, so every string in it is single-quoted)."""
    literal = _single_quoted if windows else json.dumps
    variant = SHARD_INDEX.fullmatch(index).group(2)
    output = f"{stem}{'.' + variant if variant else ''}.safetensors"
    if ".safetensors.index." in index:
        imports = "from safetensors.torch import load_file as load, save_file"
    else:  # pickled parts: tensors only, nothing they name is run
        imports = ("import torch; from safetensors.torch import save_file; "
                   f"load = lambda p: torch.load(p, map_location={literal('cpu')}, weights_only=True)")
    code = (f"import json, os; {imports}; d = {literal(directory)}; "
            f"parts = set(json.load(open(os.path.join(d, {literal(index)})))[{literal('weight_map')}].values()); "
            f"save_file({{k: v for p in parts for k, v in load(os.path.join(d, p)).items()}}, "
            f"os.path.join(d, {literal(output)}))")
    return f'python -c "{code}"' if windows else f"python -c {shlex.quote(code)}"


def _single_quoted(text: str) -> str:
    """A Python string literal without a double quote in it."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def prediction_type(folder: ModelFolder) -> str:
    """The prediction type the scheduler config declares ('epsilon' when it says none)."""
    path = os.path.join(folder.path, "scheduler", "scheduler_config.json")
    if not folder.is_pipeline or not os.path.isfile(path):
        log.info("BK-SDM: %s has no scheduler config; assuming epsilon prediction", folder.path)
        return "epsilon"
    config = read_config(path)
    value = config.get("prediction_type", "epsilon")
    if value not in PREDICTION_TYPES:
        raise UnsupportedModelError(path=path, expected=f"'prediction_type' one of {', '.join(PREDICTION_TYPES)}",
                                    found=f"'prediction_type': {json.dumps(value)}",
                                    fix="if the model was trained to predict noise or v, pick epsilon or "
                                    "v_prediction in the loader's prediction input instead of auto; ComfyUI's SD "
                                    "sampling runs no other kind")
    differs = {k: config[k] for k, v in SD_SCHEDULE.items() if k in config and config[k] != v}
    if differs:
        log.warning("BK-SDM: %s declares a noise schedule %s that differs from the SD one ComfyUI samples with %s; "
                    "results may differ from the model's reference pipeline", path, differs, SD_SCHEDULE)
    return value


def fingerprint(paths: list[str]) -> tuple:
    """Size and modification time of files: changes when weights are replaced on disk."""
    stamps = []
    for path in paths:
        try:
            st = os.stat(path)
            stamps.append((path, st.st_size, st.st_mtime_ns))
        except OSError:
            stamps.append((path, None, None))
    return tuple(stamps)
