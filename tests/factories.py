"""Random-weight reference models built from the real configs, and model folders written from them.

No weights can be downloaded here, so correctness is proven on random weights: the
reference implementation (diffusers / transformers) and the pack's ComfyUI models get
the same tensors and must compute the same thing. Every tensor is randomised, norms
and biases included, so a swapped or missing tensor shows.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch

FIXTURES = Path(__file__).parent / "fixtures"
UNET_CONFIGS = FIXTURES / "unet_configs"
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


@torch.no_grad()
def randomize_(module: torch.nn.Module, seed: int) -> torch.nn.Module:
    """Fill every floating-point parameter with seeded noise of a sensible scale."""
    generator = torch.Generator().manual_seed(seed)
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


# The block numbering of diffusers' scripts/convert_diffusers_to_original_stable_diffusion.py,
# written out independently: it hard-codes the teacher (two res blocks per level).
SCRIPT_RESNET = {"norm1": "in_layers.0", "conv1": "in_layers.2", "norm2": "out_layers.0", "conv2": "out_layers.3",
                 "time_emb_proj": "emb_layers.1", "conv_shortcut": "skip_connection"}
SCRIPT_STEM = {"time_embedding.linear_1": "time_embed.0", "time_embedding.linear_2": "time_embed.2",
               "conv_in": "input_blocks.0.0", "conv_norm_out": "out.0", "conv_out": "out.2"}


def script_name(key: str) -> str:
    if (m := re.fullmatch(r"(.*)\.(weight|bias)", key)) and m.group(1) in SCRIPT_STEM:
        return f"{SCRIPT_STEM[m.group(1)]}.{m.group(2)}"
    if m := re.fullmatch(r"(down_blocks|up_blocks|mid_block)\.(?:(\d)\.)?resnets\.(\d)\.(\w+)\.(.*)", key):
        kind, i, j, layer, rest = m.groups()
        j, layer = int(j), SCRIPT_RESNET[layer]
        level = int(i or 0)
        block = {"down_blocks": f"input_blocks.{3 * level + j + 1}.0", "up_blocks": f"output_blocks.{3 * level + j}.0",
                 "mid_block": f"middle_block.{2 * j}"}[kind]
        return f"{block}.{layer}.{rest}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.attentions\.(\d)\.(.*)", key):
        return f"input_blocks.{3 * int(m[1]) + int(m[2]) + 1}.1.{m[3]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.attentions\.(\d)\.(.*)", key):
        return key if m[1] == "0" else f"output_blocks.{3 * int(m[1]) + int(m[2])}.1.{m[3]}"
    if m := re.fullmatch(r"down_blocks\.(\d)\.downsamplers\.0\.conv\.(.*)", key):
        return f"input_blocks.{3 * (int(m[1]) + 1)}.0.op.{m[2]}"
    if m := re.fullmatch(r"up_blocks\.(\d)\.upsamplers\.0\.(.*)", key):
        return f"output_blocks.{3 * int(m[1]) + 2}.{1 if m[1] == '0' else 2}.{m[2]}"
    if m := re.fullmatch(r"mid_block\.attentions\.0\.(.*)", key):
        return f"middle_block.1.{m[1]}"
    raise AssertionError(key)


def gapped_checkpoint(checkpoint: dict, unet_config: dict) -> dict:
    """A contiguous single-file checkpoint renamed to the conversion script's numbering."""
    from bksdm.detect import LDM_PREFIX
    from bksdm.unet_keys import unet_tensors

    to_diffusers = {LDM_PREFIX + t.ldm: t.diffusers for t in unet_tensors(unet_config)}
    return {LDM_PREFIX + script_name(to_diffusers[k]) if k in to_diffusers else k: v for k, v in checkpoint.items()}


def random_controlnet(family: str, seed: int = 3):
    """An SD-1.x- or SD-2.x-shaped ControlNet (the teacher's layout), every tensor random."""
    from diffusers import ControlNetModel

    teacher = unet_config(TEACHER_CONFIGS[family])
    keys = ("attention_head_dim", "block_out_channels", "cross_attention_dim", "down_block_types", "layers_per_block",
            "use_linear_projection", "in_channels", "upcast_attention")
    with torch.device("meta"):
        model = ControlNetModel.from_config({k: teacher[k] for k in keys if k in teacher})
    assert not list(model.buffers())
    return randomize_(model.to_empty(device="cpu"), seed)


def random_t2i_adapter(seed: int = 4):
    """An SD-1.x/2.x-shaped T2I-Adapter (diffusers' full adapter, as TencentARC publishes them), random."""
    from diffusers import T2IAdapter

    adapter = T2IAdapter(in_channels=3, channels=[320, 640, 1280, 1280], num_res_blocks=2, downscale_factor=8,
                         adapter_type="full_adapter")
    return randomize_(adapter, seed)


# SD-1.5's cross-attention widths in the order IP-Adapter numbers them (input 1, 2, 4, 5, 7, 8;
# output 3-11; middle): ip_adapter.{1, 3, ..., 31}.
IP_ADAPTER_SD15_WIDTHS = [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 640, 640, 640, 320, 320, 320, 1280]


def random_ip_adapter_sd15(seed: int = 5) -> dict:
    """Tensors shaped like h94's ip-adapter_sd15.safetensors (ViT-H image embeds, 4 tokens), random."""
    g = torch.Generator().manual_seed(seed)
    weights = {"image_proj.proj.weight": torch.randn(4 * 768, 1024, generator=g) * 0.02,
               "image_proj.proj.bias": torch.zeros(4 * 768), "image_proj.norm.weight": torch.ones(768),
               "image_proj.norm.bias": torch.zeros(768)}
    for n, width in enumerate(IP_ADAPTER_SD15_WIDTHS):
        for kind in ("to_k_ip", "to_v_ip"):
            weights[f"ip_adapter.{2 * n + 1}.{kind}.weight"] = torch.randn(width, 768, generator=g) * 0.05
    return weights


def write_unet_folder(path: Path, unet_config_name: str, seed: int) -> torch.nn.Module:
    """A bare U-Net folder (config.json + weights), as the U-Net-only loader accepts it."""
    unet = random_unet(unet_config(unet_config_name), seed)
    path.mkdir(parents=True)
    _save(unet.state_dict(), path / "diffusion_pytorch_model.safetensors")
    (path / "config.json").write_text(json.dumps(dict(unet.config), indent=2, default=str))
    return unet
