"""The main job in a real ComfyUI equals diffusers' StableDiffusionPipeline on the same weights.

loader -> CLIPTextEncode x2 -> EmptyLatentImage -> KSampler (euler, normal, 4 steps, cfg 7)
-> VAEDecode -> SaveImage, run by the main-job command from the pack's example workflow,
against StableDiffusionPipeline with EulerDiscreteScheduler(timestep_spacing="linspace")
from the same starting noise. ComfyUI's euler/normal sigmas fall on the integer timesteps
999, 666, 333, 0 that scheduler uses, so both walk the same path.
"""

import io
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import PRECISION_ARGS
from PIL import Image

import pack_import
from cli import txt2img

pytestmark = pytest.mark.host
REPO = Path(__file__).resolve().parents[1]

PROMPT = "a photo of a red fox sitting in fresh snow"
NEGATIVE = "blurry, low quality"
SEED, STEPS, CFG, SIZE = 7, 4, 7.0, 128


def scene_args(model, output) -> list[str]:
    """The main command's arguments for this module's scene, after ``txt2img``."""
    return [PROMPT, "--negative", NEGATIVE, "--model", str(model), "-o", str(output), "--seed", str(SEED),
            "--steps", str(STEPS), "--cfg", str(CFG), "--sampler", "euler", "--scheduler", "normal",
            "--width", str(SIZE), "--height", str(SIZE)]


def run_main_job(host, folder, output):
    assert txt2img.main([*scene_args(folder, output), "--comfyui", str(host.path)]) == 0
    return np.asarray(Image.open(output).convert("RGB"))


@torch.no_grad()
def reference_image(pipeline):
    from diffusers import EulerDiscreteScheduler, StableDiffusionPipeline
    from transformers import CLIPTokenizer

    scheduler = EulerDiscreteScheduler.from_config(pipeline.scheduler_config, timestep_spacing="linspace")
    unet, text_encoder, vae = pipeline.reference_models()
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder,
                                   tokenizer=CLIPTokenizer.from_pretrained(pipeline.path / "tokenizer"),
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    # KSampler's noise, scaled as ComfyUI starts a full denoise: noise * sqrt(1 + sigma_max^2).
    noise = torch.randn([1, 4, SIZE // 8, SIZE // 8], generator=torch.manual_seed(SEED))
    scheduler.set_timesteps(STEPS)
    start = noise * math.sqrt(1 + scheduler.sigmas.max().item() ** 2)
    image = pipe(PROMPT, negative_prompt=NEGATIVE, num_inference_steps=STEPS, guidance_scale=CFG,
                 latents=start / scheduler.init_noise_sigma, output_type="np").images[0]
    return np.clip(image * 255.0, 0, 255).astype(np.uint8)  # SaveImage truncates, as here


def test_main_job_matches_diffusers(random_pipeline, host, tmp_path):
    image = run_main_job(host, random_pipeline.path, tmp_path / "out.png")
    expected = reference_image(random_pipeline)
    assert image.shape == expected.shape == (SIZE, SIZE, 3)
    unsaturated = ((expected > 0) & (expected < 255)).mean()
    assert unsaturated > 0.5, "the reference image is mostly clipped; the comparison would prove little"
    difference = np.abs(image.astype(int) - expected.astype(int))
    assert difference.max() <= 2, f"max difference {difference.max()} uint8 levels"


def test_main_job_writes_a_png_atomically(random_pipeline, host, tmp_path):
    output = tmp_path / "nested" / "fox.png"
    run_main_job(host, random_pipeline.path, output)
    assert Image.open(io.BytesIO(output.read_bytes())).format == "PNG"
    assert [p.name for p in output.parent.iterdir()] == ["fox.png"]  # no temporary file left behind


def test_main_job_command_runs_comfyuis_own_startup(sd1_pipeline, host, tmp_path):
    """The README's main command in a process of its own, run by the pack's folder path from
    another folder, with paths as a user types them there: ComfyUI's whole start-up (main.py's),
    then the same image as the in-process run, written where the user said."""
    in_process = run_main_job(host, sd1_pipeline.path, tmp_path / "in-process.png")
    caller = tmp_path / "caller"
    caller.mkdir()
    typed_model = os.path.relpath(sd1_pipeline.path, caller)
    args = [sys.executable, str(REPO), "txt2img", *scene_args(typed_model, "command.png"),
            "--comfyui", str(host.path), *(f"--comfy-arg={flag}" for flag in PRECISION_ARGS)]
    run = subprocess.run(args, cwd=caller, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    output = caller / "command.png"
    assert "Total VRAM" in run.stderr + run.stdout  # ComfyUI's own start-up ran and logged
    assert sum(line.endswith(f"wrote {output} ({output.stat().st_size} bytes)")  # absolute, logged once
               for line in (run.stderr + run.stdout).splitlines()) == 1
    assert np.array_equal(np.asarray(Image.open(output).convert("RGB")), in_process)


def psnr(image: np.ndarray, reference: np.ndarray) -> float:
    mse = np.mean((image.astype(float) - reference.astype(float)) ** 2)
    return math.inf if mse == 0 else 10 * math.log10(255.0**2 / mse)


# Which parts the default puts in bf16 (ComfyUI's flags keep the others in fp32), and the line
# each logs when it does.
BF16_PARTS = {
    "unet": (["--fp32-vae"], ["BK-SDM: computing in bf16 on this CPU"]),
    "vae": (["--fp32-unet"], ["BK-SDM: VAE in bf16 on this CPU"]),
    "default": ([], ["BK-SDM: computing in bf16 on this CPU", "BK-SDM: VAE in bf16 on this CPU"]),
}


@pytest.mark.parametrize("part", sorted(BF16_PARTS))
def test_main_command_defaults_to_bf16_only_where_the_cpu_computes_it(sd1_pipeline, host, tmp_path, part):
    """With no precision flag, the main command's U-Net and VAE compute in bf16 on a CPU with
    AVX512-BF16 or AMX. Each part alone, and both together, keep the image within 40 dB PSNR of
    the fp32 one (the issue's bar for "faithful"); on a CPU without them it is the fp32 image itself."""
    fp32 = run_main_job(host, sd1_pipeline.path, tmp_path / "fp32.png")  # the host runs fp32 throughout
    output = tmp_path / f"{part}.png"
    flags, logged = BF16_PARTS[part]
    args = [sys.executable, str(REPO), "txt2img", *scene_args(sd1_pipeline.path, output), "--comfyui", str(host.path),
            *(f"--comfy-arg={flag}" for flag in ["--fp32-text-enc", *flags])]
    run = subprocess.run(args, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    image = np.asarray(Image.open(output).convert("RGB"))
    if pack_import.pack_module("nodes.cpu").cpu_has_native_bf16():
        for line in logged:
            assert line in run.stderr + run.stdout
        assert not np.array_equal(image, fp32)
        assert psnr(image, fp32) >= 40.0, f"{psnr(image, fp32):.1f} dB"
    else:
        assert np.array_equal(image, fp32)


def test_headless_host_builds_the_executor_this_release_takes(host):
    """The one private constructor the in-process host needs: classic cache on both releases,
    ``cache_size`` before the RAM-pressure cache (0.3.64), ``cache_args`` after it (0.33)."""
    import inspect

    import execution

    assert host.executor.cache_type == execution.CacheType.CLASSIC
    takes_cache_args = "cache_args" in inspect.signature(execution.PromptExecutor).parameters
    assert takes_cache_args == (host.version != "0.3.64")
    if takes_cache_args:
        assert set(host.executor.cache_args) == {"lru", "ram", "ram_inactive"}

