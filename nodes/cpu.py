"""How a BK-SDM MODEL computes on the CPU: its attention kernel and its precision.

Attention: PyTorch's scaled-dot-product attention. ComfyUI's CPU default is sub-quadratic
attention, chosen to save memory; on a BK-SDM MODEL it is slower than SDPA and, at large
sizes, takes far more memory (BENCHMARKS.md). The pack sets SDPA on its own MODEL only,
through ComfyUI's per-model attention override, and never where the user chose an attention
on ComfyUI's command line or where the model runs on a GPU (ComfyUI's choice there is
already the fast one).

bf16: ComfyUI stores a MODEL in bf16 on the CPU when asked to, but computes every layer in
fp32, casting the weights back each time (slower than fp32 itself). Where the CPU has
native bf16 arithmetic (AVX512-BF16 or AMX), the pack sets the MODEL's compute dtype to
bf16 (ComfyUI's per-model cast setting), so the choice buys the time it promises. There,
bf16 is also the U-Net's default: ComfyUI keeps every CPU model in fp32 because bf16 is slow
on CPUs without native bf16 (``should_use_bf16``); on these it is the fast choice, and its
images stay within the fidelity the README states. The VAE follows in bf16 there too (ComfyUI's
own choice for the SD VAE on GPUs that have bf16). bf16 convolutions run fastest on
channels-last tensors (oneDNN), so a bf16 MODEL on such a CPU is laid out channels-last, as
ComfyUI's --force-channels-last lays out any MODEL, and the VAE's activations enter its encoder
and decoder channels-last (its weights keep their layout: the stock VAE Save node writes them
as stored, and safetensors takes contiguous tensors only). ComfyUI's precision flags and the
loader's explicit choices stand. The text encoder keeps ComfyUI's dtype: it runs once per
prompt, too short for bf16 to matter (BENCHMARKS.md).
"""

from __future__ import annotations

import logging
import re

import comfy.cli_args
import comfy.ldm.modules.attention
import comfy.model_management
import torch

log = logging.getLogger(__name__)


def flags_given(counts) -> list[str]:
    """ComfyUI's switches set on its command line whose option name ``counts`` (whatever this release has)."""
    return sorted(f"--{name.replace('_', '-')}" for name, value in vars(comfy.cli_args.args).items()
                  if value is True and counts(name))


def attention_flags_given() -> list[str]:
    """ComfyUI's attention flags set on its command line (``--use-*-attention``)."""
    return flags_given(lambda name: name.startswith("use_") and name.endswith("_attention"))


def prefer_sdpa(patcher) -> bool:
    """Give ``patcher``'s model PyTorch SDPA attention where the pack's rule says so; True if it did."""
    if not comfy.model_management.is_device_cpu(patcher.load_device):
        return False
    given = attention_flags_given()
    if given:
        log.info("BK-SDM: attention as chosen on ComfyUI's command line (%s)", " ".join(given))
        return False
    sdpa = comfy.ldm.modules.attention.attention_pytorch
    if hasattr(patcher, "set_model_optimized_attention"):  # 0.33
        patcher.set_model_optimized_attention(sdpa)
    else:  # 0.3.64 reads the same override, with the replaced function as first argument
        patcher.model_options["transformer_options"]["optimized_attention_override"] = (
            lambda _replaced, *args, **kwargs: sdpa(*args, **kwargs))
    log.info("BK-SDM: attention on the CPU: PyTorch SDPA for this model (ComfyUI's CPU default is sub-quadratic; "
             "an attention flag such as --use-quad-cross-attention keeps ComfyUI's choice)")
    return True


def cpu_has_native_bf16() -> bool:
    """AVX512-BF16 or AMX: bf16 matrix arithmetic in hardware (torch's own CPU capability checks)."""
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks)


def precision_flags_given(part: str = "unet") -> list[str]:
    """ComfyUI's flags that fix a part's precision: ``--force-fp32``/``--force-fp16`` and the part's own
    (``--fp32-unet``, ``--bf16-unet``, … for "unet"; ``--fp32-vae``, ``--bf16-vae``, … for "vae")."""
    return flags_given(lambda name: name in ("force_fp32", "force_fp16") or re.fullmatch(rf"(fp|bf)\w*_{part}", name))


def bf16_by_default(on_cpu: bool, native_bf16: bool, flags: list[str]) -> bool:
    """Whether a part that ComfyUI would keep in fp32 is stored and computed in bf16 instead: on a
    CPU with native bf16, when none of ComfyUI's precision flags for that part was given."""
    return on_cpu and native_bf16 and not flags


def default_unet_dtype(comfy_choice: torch.dtype, on_cpu: bool, native_bf16: bool, flags: list[str]) -> torch.dtype:
    """The U-Net's dtype for ``weight_dtype = default``: ComfyUI's choice, except bf16 for fp32
    where ``bf16_by_default``."""
    if comfy_choice == torch.float32 and bf16_by_default(on_cpu, native_bf16, flags):
        return torch.bfloat16
    return comfy_choice


def default_on_this_machine(comfy_choice: torch.dtype) -> torch.dtype:
    """``default_unet_dtype`` for the device ComfyUI loads models on, with this CPU and these flags."""
    on_cpu = comfy.model_management.is_device_cpu(comfy.model_management.get_torch_device())
    return default_unet_dtype(comfy_choice, on_cpu, on_cpu and cpu_has_native_bf16(), precision_flags_given())


def default_vae_dtype() -> torch.dtype | None:
    """The VAE's dtype for ``weight_dtype = default``: bf16 where ``bf16_by_default`` holds for the
    device ComfyUI runs the VAE on, else None (ComfyUI's own choice, fp32 on a CPU)."""
    on_cpu = comfy.model_management.is_device_cpu(comfy.model_management.vae_device())
    if bf16_by_default(on_cpu, on_cpu and cpu_has_native_bf16(), precision_flags_given("vae")):
        return torch.bfloat16
    return None


def compute_in_bf16(patcher, stored_dtype: torch.dtype) -> bool:
    """Compute a bf16-stored CPU MODEL in bf16, channels-last, where the CPU does that natively;
    True if it does."""
    if stored_dtype != torch.bfloat16 or not comfy.model_management.is_device_cpu(patcher.load_device):
        return False
    if not cpu_has_native_bf16():
        log.info("BK-SDM: this CPU has no native bf16 (AVX512-BF16/AMX): ComfyUI computes the bf16 weights in fp32")
        return False
    patcher.set_model_compute_dtype(torch.bfloat16)
    patcher.model.diffusion_model.to(memory_format=torch.channels_last)
    log.info("BK-SDM: computing in bf16 on this CPU (AVX512-BF16/AMX); for fp32, the exact choice, set weight_dtype "
             "fp32 or start ComfyUI with --fp32-unet")
    return True


def _channels_last(_module, args):
    return (args[0].contiguous(memory_format=torch.channels_last), *args[1:])


def vae_channels_last_in_bf16(vae) -> bool:
    """Make a bf16 VAE on a CPU with native bf16 compute on channels-last activations; True if it does."""
    if (vae.vae_dtype != torch.bfloat16 or not comfy.model_management.is_device_cpu(vae.device)
            or not cpu_has_native_bf16()):
        return False
    for coder in (vae.first_stage_model.encoder, vae.first_stage_model.decoder):
        coder.register_forward_pre_hook(_channels_last)
    log.info("BK-SDM: VAE in bf16 on this CPU (AVX512-BF16/AMX); for fp32, set weight_dtype fp32 or start ComfyUI "
             "with --fp32-vae")
    return True
