"""What a BK-SDM download takes: the names it accepts and the files a variant needs.

Only what the loaders read is fetched: the pipeline index, the unet / vae / text_encoder
configs, the scheduler config and safetensors weights, chosen from the repo's own file
listing (fp16, fp32 or both).
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection
from dataclasses import dataclass

from huggingface_hub import constants

from ..errors import DownloadError, summarize
from ..files.pipeline import PIPELINE_INDEX, WEIGHT_STEMS
from ..layout.variants import VARIANTS, find_variant

WEIGHT_CHOICES = ("fp16", "fp32", "both")
COMPONENTS = ("unet", "vae", "text_encoder")
REQUIRED_CONFIGS = (PIPELINE_INDEX, "unet/config.json", "vae/config.json", "text_encoder/config.json")
OPTIONAL_CONFIGS = ("scheduler/scheduler_config.json",)
# What "fp16" takes first. The text encoder keeps its full file: it is small next to the
# U-Net, and ComfyUI may run it in fp32 (--fp32-text-enc), which only the full file serves exactly.
HALF_FIRST = {"unet": True, "vae": True, "text_encoder": False}

# "owner/name" as the Hub allows it: letters, digits, '-', '_', '.', no leading or trailing
# punctuation (so never '.', '..' or a hidden name), and no '..' or '--' inside.
_PART = r"[A-Za-z0-9](?:[A-Za-z0-9._-]{0,94}[A-Za-z0-9])?"
_REPO_ID = re.compile(rf"(?P<owner>{_PART})/(?P<name>{_PART})")


@dataclass(frozen=True)
class RemoteFile:
    """A file as the hub lists it: what the downloaded copy must match."""

    path: str
    size: int
    sha256: str | None = None  # LFS files
    blob_id: str | None = None  # git object id (sha1) of files kept in git


def parse_repo_id(name: str) -> tuple[str, str]:
    """(repo id, folder name) for a registry name ('bk-sdm-small', 'nota-ai/bk-sdm-small') or
    a Hub repo id 'owner/name'; refuses anything that could point outside the models folder."""
    variant = find_variant(name) if isinstance(name, str) else None
    if variant is not None:
        return variant.repo_id, variant.folder_name
    match = _REPO_ID.fullmatch(name) if isinstance(name, str) else None
    if match is None or ".." in name or "--" in name:
        raise DownloadError(path=None,
                            expected="a BK-SDM name such as 'bk-sdm-small', or a Hugging Face repo id 'owner/name' "
                            "(letters, digits, '-', '_' and '.')", found=repr(name),
                            fix=f"use a registry name ({summarize(v.folder_name for v in VARIANTS.values())}) "
                            "or the id shown on the model's Hugging Face page")
    return name, match.group("name")


def weight_names(component: str) -> tuple[str, str]:
    stem = WEIGHT_STEMS[component][0]
    return f"{component}/{stem}.safetensors", f"{component}/{stem}.fp16.safetensors"


def may_take(path: str) -> bool:
    return path in REQUIRED_CONFIGS or path in OPTIONAL_CONFIGS or any(path in weight_names(c) for c in COMPONENTS)


def _half_first(component: str, weights: str) -> bool:
    return weights != "fp32" and HALF_FIRST[component]


def select_files(available: Collection[str], weights: str, where: str = "the repo") -> list[str]:
    """The repo paths to fetch for ``weights``, chosen from the paths the repo has."""
    missing = [p for p in REQUIRED_CONFIGS if p not in available]
    if missing:
        raise DownloadError(path=where,
                            expected="a diffusers Stable Diffusion pipeline (model_index.json; unet/, vae/ and "
                            "text_encoder/ with config.json and safetensors weights)", found=f"no {summarize(missing)}",
                            fix="check the repo id: the pack downloads SD 1.x / 2.x pipelines in the diffusers layout")
    chosen = [*REQUIRED_CONFIGS, *(p for p in OPTIONAL_CONFIGS if p in available)]
    for component in COMPONENTS:
        full, half = weight_names(component)
        present = [p for p in (full, half) if p in available]
        if not present:
            others = sorted(p.split("/", 1)[1] for p in available
                            if p.startswith(component + "/") and not p.endswith("/config.json"))
            raise DownloadError(path=where, expected=f"{full} or {half}",
                                found=f"{summarize(others) if others else 'no weights'} in {component}/",
                                fix="the pack downloads safetensors only (a .bin pickle can run code when loaded): "
                                "use a repo that publishes safetensors, or fetch the files by hand")
        if weights == "both":
            chosen += present
        else:
            chosen.append(half if _half_first(component, weights) and half in present else present[0])
    return sorted(chosen)


def manual_steps(repo_id: str, folder: str, weights: str, endpoint: str = constants.ENDPOINT) -> str:
    """What to do by hand instead: which files to fetch, and the folder tree to put them in."""
    lines = [f"{folder}{os.sep}", f"  {PIPELINE_INDEX}", "  scheduler/", "    scheduler_config.json"]
    for component in COMPONENTS:
        full, half = (path.split("/", 1)[1] for path in weight_names(component))
        if weights == "both":
            choice = f"{full} and {half}"
        elif _half_first(component, weights):
            choice = f"{half} (or {full} if the repo has no fp16 file)"
        else:
            choice = f"{full} (or {half} if the repo has only that)"
        lines += [f"  {component}/", "    config.json", f"    {choice}"]
    tree = "\n".join(" " * 14 + line for line in lines)  # aligned under the error's "fix:" text
    return (f"download these files from {endpoint.rstrip('/')}/{repo_id}/tree/main (safetensors only, no .bin) "
            f"and put them in this tree, then refresh ComfyUI's model list:\n{tree}")
