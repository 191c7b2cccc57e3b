"""The commands as a user runs them: the main job sets up what running needs and nothing
else, takes paths from the caller's folder, and leaves the device to ComfyUI."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cli import comfy_host

REPO = Path(__file__).resolve().parents[1]
# What only the tests need; the main job's environment must have none of it.
TEST_STACK = ("pytest", "hypothesis", "playwright", "ruff", "diffusers")


@pytest.mark.parametrize("found", [["cuda"], ["mps"], ["xpu"], ["torch_npu"]])
def test_a_gpu_is_left_to_comfyui(found):
    assert comfy_host.device_args(["--lowvram"], found) == ["--lowvram"]


def test_without_a_gpu_comfyui_is_told_to_use_the_cpu():
    assert comfy_host.device_args(["--lowvram"], []) == ["--lowvram", "--cpu"]


@pytest.mark.parametrize("flags", [["--cpu"], ["--directml"], ["--directml=1"], ["--cuda-device", "1"]])
def test_a_device_the_user_named_stands(flags):
    assert comfy_host.device_args(flags, []) == flags


def test_this_machine_answers_as_torch_does():
    import torch

    assert ("cuda" in comfy_host.accelerators()) == torch.cuda.is_available()


def _git_status() -> str:
    return subprocess.run(["git", "status", "--porcelain"], cwd=REPO, capture_output=True,
                          text=True, check=True).stdout


@pytest.mark.host
# The README's command fetches the newest release. CI's leg on the older one builds that release's
# environment from nothing with the same scripts/env.sh, and runs the main command's process there
# (test_end_to_end.py): this test's venv, gigabytes and minutes, would prove nothing more.
@pytest.mark.newest_comfyui
def test_main_command_on_a_fresh_environment(sd1_pipeline, host, tmp_path):
    """The README's main command, from another folder, making its environment from nothing:
    ./out.png in the caller's folder, no test tool in the environment, the checkout unchanged."""
    caller, venv = tmp_path / "caller", tmp_path / "venv"
    caller.mkdir()
    before = _git_status()
    env = {**os.environ, "BKSDM_VENV": str(venv), "COMFYUI_PATH": str(host.path)}
    run = subprocess.run([str(REPO / "scripts" / "txt2img.sh"), "a fox", "--model", str(sd1_pipeline.path),
                          "-o", "out.png", "--steps", "1", "--width", "64", "--height", "64"],
                         cwd=caller, env=env, capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    assert [p.name for p in caller.iterdir()] == ["out.png"]
    assert Image.open(caller / "out.png").size == (64, 64)
    assert np.asarray(Image.open(caller / "out.png")).std() > 0
    assert f"wrote {caller / 'out.png'} (" in run.stderr + run.stdout
    installed = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"],
                               capture_output=True, text=True, check=True).stdout.lower()
    names = {line.split("==")[0] for line in installed.splitlines()}
    assert names.isdisjoint(TEST_STACK), sorted(names & set(TEST_STACK))
    assert {"torch", "safetensors", "huggingface-hub"} <= {n.replace("_", "-") for n in names}
    assert _git_status() == before
