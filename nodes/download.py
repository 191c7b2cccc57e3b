"""The download node: fetch a BK-SDM model into ComfyUI's diffusers folder, with a progress bar."""

from __future__ import annotations

import os

import comfy.utils
from comfy_api.latest import io, ui

from ..bksdm.download import WEIGHT_CHOICES, download_model, is_downloaded, parse_repo_id
from ..bksdm.errors import DownloadError
from ..bksdm.layout.variants import VARIANTS
from .inputs import choice, diffusers_roots

CATEGORY = "loaders/BK-SDM"
CUSTOM = "custom"
PROGRESS_UPDATES = 200  # UI updates per download: each one is a websocket message


def download_root() -> str:
    """Where models go: the first diffusers folder, as extra_model_paths.yaml may have set it."""
    return diffusers_roots()[0]


def _repo(variant: str, repo_id: str) -> str:
    return repo_id.strip() if variant == CUSTOM else variant


class _BytesProgress:
    """Feeds a ProgressBar with bytes; updates only when the bar would visibly move."""

    def __init__(self, bar: comfy.utils.ProgressBar):
        self.bar = bar
        self.shown = -1

    def __call__(self, done: int, total: int) -> None:
        step = PROGRESS_UPDATES * done // total if total else PROGRESS_UPDATES
        if step != self.shown:
            self.shown = step
            # The hook may raise when the user cancels: the download stops and resumes next time.
            self.bar.update_absolute(done, max(total, 1))


class DownloadNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="BKSDMDownload",
            display_name="Download BK-SDM Model",
            category=CATEGORY,
            description="Downloads a BK-SDM model from Hugging Face into models/diffusers (only the files the "
                        "BK-SDM loaders read, safetensors only), verified and resumable. Does nothing when the "
                        "model is already there. Refresh the page afterwards and pick the folder in Load BK-SDM "
                        "Pipeline. Set HF_TOKEN for gated or private repos.",
            inputs=[
                io.Combo.Input("variant", options=[*VARIANTS, CUSTOM], default="nota-ai/bk-sdm-small",
                               tooltip="The model to download. 'custom' downloads the repo named in repo_id."),
                io.String.Input("repo_id", default="", placeholder="owner/name",
                                tooltip="A Hugging Face repo id (owner/name) of an SD 1.x / 2.x pipeline in the "
                                        "diffusers layout; used only when variant is 'custom'."),
                io.Combo.Input("weights", options=list(WEIGHT_CHOICES), default="fp16",
                               tooltip="fp16: the half-precision U-Net and VAE files where the repo has them "
                                       "(half the download; what ComfyUI runs on most GPUs). fp32: full "
                                       "precision. both: all of them."),
            ],
            outputs=[io.String.Output(display_name="model_name",
                                      tooltip="The downloaded folder's name, as Load BK-SDM Pipeline lists it.")],
            is_output_node=True,
        )

    @classmethod
    def validate_inputs(cls, variant, repo_id, weights):
        # ComfyUI does not check V3 combo values that arrive through the API.
        problem = choice("variant", variant, (*VARIANTS, CUSTOM)) or choice("weights", weights, WEIGHT_CHOICES)
        if problem:
            return problem
        try:
            parse_repo_id(_repo(variant, repo_id))
        except DownloadError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, variant, repo_id, weights):
        # Stable while the folder stays complete, so the loaders after this node keep their cache;
        # changes when the folder is deleted or damaged, so the node runs (and downloads) again.
        try:
            return (variant, repo_id, weights, is_downloaded(_repo(variant, repo_id), download_root(), weights))
        except DownloadError:
            return (variant, repo_id, weights, None)  # execute() reports the problem

    @classmethod
    def execute(cls, variant, repo_id, weights) -> io.NodeOutput:
        root = download_root()
        progress = _BytesProgress(comfy.utils.ProgressBar(1))  # the total in bytes comes with the file listing
        path = download_model(_repo(variant, repo_id), root, weights=weights, progress=progress)
        name = os.path.basename(path)
        return io.NodeOutput(name, ui=ui.PreviewText(f"{name} is ready in {root}. Refresh the page (R) and pick "
                                                     f"'{name}' in Load BK-SDM Pipeline."))


NODES = [DownloadNode]
