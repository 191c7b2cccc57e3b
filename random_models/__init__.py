"""Random-weight reference models built from the real configs, and model folders written from them:
what the tests and the benchmarks compare the pack against.

No weights can be downloaded there, so correctness is proven on random weights: the
reference implementation (diffusers / transformers) and the pack's ComfyUI models get
the same tensors and must compute the same thing. Every tensor is randomised, norms
and biases included, so a swapped or missing tensor shows.

``unet_configs/`` holds the real U-Net configs (README.md there). Building a model needs
torch, diffusers and transformers: test-only dependencies (tests/requirements.txt), never
the pack's runtime. They are imported where a model is built, so reading a config needs
none of them.
"""

from __future__ import annotations

import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

UNET_CONFIGS = Path(__file__).resolve().parent / "unet_configs"
BK_CONFIGS = sorted(p.stem for p in UNET_CONFIGS.glob("*_bk_*.json"))
TEACHER_CONFIGS = {"sd1": "sd-v1-4_teacher", "sd2": "sd-v2-1-base_teacher"}

# Text encoders BK-SDM inherits from its teachers (transformers CLIPTextConfig arguments).
TEXT_ENCODER_CONFIGS = {
    "sd1": dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                max_position_embeddings=77, hidden_act="quick_gelu", vocab_size=49408, projection_dim=768),
    "sd2": dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=23, num_attention_heads=16,
                max_position_embeddings=77, hidden_act="gelu", vocab_size=49408, projection_dim=512),
}
VAE_CONFIG = dict(in_channels=3, out_channels=3, latent_channels=4, block_out_channels=[128, 256, 512, 512],
                  layers_per_block=2, down_block_types=["DownEncoderBlock2D"] * 4,
                  up_block_types=["UpDecoderBlock2D"] * 4, norm_num_groups=32, sample_size=512,
                  scaling_factor=0.18215)
SCHEDULER_CONFIG = {"_class_name": "PNDMScheduler", "_diffusers_version": "0.15.0", "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "beta_start": 0.00085, "clip_sample": False,
                    "num_train_timesteps": 1000, "set_alpha_to_one": False, "skip_prk_steps": True,
                    "steps_offset": 1, "trained_betas": None}
MODEL_INDEX = {"_class_name": "StableDiffusionPipeline", "_diffusers_version": "0.15.0",
               "feature_extractor": [None, None], "requires_safety_checker": False, "safety_checker": [None, None],
               "scheduler": ["diffusers", "PNDMScheduler"], "text_encoder": ["transformers", "CLIPTextModel"],
               "tokenizer": ["transformers", "CLIPTokenizer"], "unet": ["diffusers", "UNet2DConditionModel"],
               "vae": ["diffusers", "AutoencoderKL"]}


def unet_config(name: str) -> dict:
    return json.loads((UNET_CONFIGS / f"{name}.json").read_text())


def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every floating-point parameter with seeded noise of a sensible scale."""
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in sorted(module.named_parameters()):
            if param.ndim >= 2:
                std = 1.0 / math.sqrt(math.prod(param.shape[1:]))
                param.copy_(torch.randn(param.shape, generator=generator) * std)
            elif name.endswith("weight"):  # norm scales
                param.copy_(1.0 + 0.1 * torch.randn(param.shape, generator=generator))
            else:
                param.copy_(0.05 * torch.randn(param.shape, generator=generator))
    return module.eval()


def random_unet(config: dict, seed: int = 0):
    import torch
    from diffusers import UNet2DConditionModel

    with torch.device("meta"):  # skip the default init: every tensor is overwritten anyway
        model = UNet2DConditionModel.from_config(config)
    assert not list(model.buffers()), "to_empty() would leave buffers uninitialised"
    return randomize_(model.to_empty(device="cpu"), seed)


def random_text_encoder(family: str, seed: int = 1):
    from transformers import CLIPTextConfig, CLIPTextModel

    return randomize_(CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIGS[family])), seed)


def random_vae(seed: int = 2):
    from diffusers import AutoencoderKL

    return randomize_(AutoencoderKL(**VAE_CONFIG), seed)


def text_encoder_state_dict(model, with_prefix: bool = True) -> dict:
    """As nota-ai's files store it ('text_model.' prefix), or as transformers >= 5 saves it."""
    sd = model.state_dict()
    bare = {k.removeprefix("text_model."): v for k, v in sd.items()}
    return {f"text_model.{k}": v for k, v in bare.items()} if with_prefix else bare


@dataclass
class RandomPipeline:
    """A random-weight pipeline folder. The reference models are read back from disk when a
    test needs them, so a session does not keep gigabytes of them alive."""

    path: Path
    family: str
    scheduler_config: dict

    def unet_state_dict(self) -> dict:
        from safetensors.torch import load_file

        return load_file(self.path / "unet" / "diffusion_pytorch_model.safetensors")

    def text_encoder_state_dict(self) -> dict:
        from safetensors.torch import load_file

        return load_file(self.path / "text_encoder" / "model.safetensors")

    def reference_models(self):
        """(unet, text_encoder, vae) as diffusers and transformers load this folder."""
        from diffusers import AutoencoderKL, UNet2DConditionModel
        from transformers import CLIPTextModel

        return (UNet2DConditionModel.from_pretrained(self.path / "unet").eval(),
                CLIPTextModel.from_pretrained(self.path / "text_encoder").eval(),
                AutoencoderKL.from_pretrained(self.path / "vae").eval())


def _save(state_dict: dict, path: Path, half: bool = False) -> None:
    from safetensors.torch import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: (v.half() if half else v).contiguous() for k, v in state_dict.items()}, str(path))


def write_pipeline(path: Path, family: str, unet_config_name: str, *, seed: int = 0, fp16_variants: bool = False,
                   prediction: str | None = None, text_encoder_prefix: bool = True,
                   tokenizer_source: Path | None = None) -> RandomPipeline:
    """A diffusers pipeline folder laid out as nota-ai publishes BK-SDM, with random weights."""
    config = unet_config(unet_config_name)
    unet, te, vae = random_unet(config, seed), random_text_encoder(family, seed + 1), random_vae(seed + 2)
    path.mkdir(parents=True)
    (path / "model_index.json").write_text(json.dumps(MODEL_INDEX, indent=2))
    scheduler = dict(SCHEDULER_CONFIG, **({"prediction_type": prediction} if prediction else {}))
    (path / "scheduler").mkdir()
    (path / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler, indent=2))
    for name, model, weights, cfg in (
        ("unet", unet, "diffusion_pytorch_model", dict(unet.config)),
        ("vae", vae, "diffusion_pytorch_model", dict(vae.config)),
        ("text_encoder", te, "model", te.config.to_dict()),
    ):
        sd = text_encoder_state_dict(te, text_encoder_prefix) if name == "text_encoder" else model.state_dict()
        _save(sd, path / name / f"{weights}.safetensors")
        if fp16_variants:
            _save(sd, path / name / f"{weights}.fp16.safetensors", half=True)
        (path / name / "config.json").write_text(json.dumps(cfg, indent=2, default=str))
    if tokenizer_source is not None:
        write_tokenizer(path / "tokenizer", tokenizer_source, family)
    return RandomPipeline(path, family, scheduler)


def write_tokenizer(path: Path, vocab_dir: Path, family: str) -> None:
    """The CLIP BPE tokenizer; SD 2.x pipelines pad with '!' (id 0), SD 1.x with the end token."""
    path.mkdir(parents=True)
    for name in ("vocab.json", "merges.txt"):
        shutil.copy(vocab_dir / name, path / name)
    pad = "<|endoftext|>" if family == "sd1" else "!"
    (path / "special_tokens_map.json").write_text(json.dumps(
        {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "pad_token": pad, "unk_token": "<|endoftext|>"}))
    (path / "tokenizer_config.json").write_text(json.dumps(
        {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "pad_token": pad,
         "bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))


def write_unet_folder(path: Path, unet_config_name: str, seed: int) -> torch.nn.Module:
    """A bare U-Net folder (config.json + weights), as the U-Net-only loader accepts it."""
    unet = random_unet(unet_config(unet_config_name), seed)
    path.mkdir(parents=True)
    _save(unet.state_dict(), path / "diffusion_pytorch_model.safetensors")
    (path / "config.json").write_text(json.dumps(dict(unet.config), indent=2, default=str))
    return unet
