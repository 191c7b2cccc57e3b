"""What a benchmark reads from, or changes on, a ComfyUI MODEL (a ``ModelPatcher``): the
attention kernel it runs, the dtype it computes in, the same MODEL with ComfyUI's default
CPU attention instead of the pack's choice, and the same MODEL through ComfyUI's
TorchCompileModel node. Only ComfyUI's public patcher API, stock nodes and the pack's own reading
of a MODEL (``nodes.build.compute_dtype``) are used."""

from __future__ import annotations

# The key of ComfyUI's per-model attention setting, where nodes/cpu.py puts the pack's CPU choice.
OVERRIDE = "optimized_attention_override"


def model_attention(patcher) -> str:
    """The attention kernel a MODEL runs: its own override (the pack's CPU choice), else ComfyUI's global one."""
    import comfy.ldm.modules.attention

    if OVERRIDE in patcher.model_options.get("transformer_options", {}):
        return "attention_pytorch (per model)"
    return comfy.ldm.modules.attention.optimized_attention.__name__


def with_comfyui_attention(patcher):
    """A clone of the MODEL without the pack's per-model attention: ComfyUI's own default kernel."""
    clone = patcher.clone()
    clone.model_options["transformer_options"].pop(OVERRIDE, None)
    return clone


def compute_dtype(patcher) -> str:
    """The dtype ComfyUI computes the MODEL's layers in (the pack's ``nodes.build.compute_dtype``), by name."""
    from pack_import import pack_module

    return str(pack_module("nodes.build").compute_dtype(patcher)).replace("torch.", "")


def torch_compiled(patcher):
    """The MODEL as ComfyUI's stock TorchCompileModel node gives it (inductor): it compiles on the
    first U-Net call."""
    from comfy_extras.nodes_torch_compile import TorchCompileModel

    return TorchCompileModel.execute(model=patcher, backend="inductor").args[0]
