"""ComfyUI's TorchCompileModel on a BK-SDM MODEL: the teacher addressing, built per U-Net call,
compiles with the rest and does not make torch recompile from one step to the next; a LoRA and
a ControlNet still apply; the compiled sample equals the eager one within the kernels' rounding."""

from __future__ import annotations

import pytest
import torch
from factories import random_controlnet
from safetensors.torch import save_file
from test_lora_transfer import synthetic_teacher_lora

from bksdm.layout.block_map import teacher_spec

pytestmark = pytest.mark.host
SIZE = 64


@pytest.fixture
def patched_model(host, pack, pipelines, tmp_path):
    """A BK-SDM v2-Tiny MODEL (no middle block: the translation's own patch runs too) with an SD
    LoRA through the transfer node and an SD ControlNet through the stock apply node."""
    import comfy.controlnet
    import folder_paths

    nodes = host.nodes
    pipeline = pipelines("sd2")
    classes = host.nodes.NODE_CLASS_MAPPINGS
    plain, clip, _ = classes["BKSDMPipelineLoader"].execute(model_name=pipeline.path.name, weight_dtype="fp32",
                                                            prediction="auto").args
    lora, _ = synthetic_teacher_lora(teacher_spec(pack("nodes.build").spec_of(plain)), seed=7)
    folder_paths.add_model_folder_path("loras", str(tmp_path))
    save_file({k: v for k, v in lora.items() if not k.startswith("lora_te")}, str(tmp_path / "teacher.safetensors"))
    model, clip = classes["BKSDMLoraLoader"].execute(model=plain, clip=clip, lora_name="teacher.safetensors",
                                                     strength_model=1.0, strength_clip=1.0).args
    controlnet_file = tmp_path / "controlnet.safetensors"
    save_file({k: v.contiguous() for k, v in random_controlnet("sd2", seed=5).state_dict().items()},
              str(controlnet_file))
    controlnet = comfy.controlnet.load_controlnet(str(controlnet_file))
    text = nodes.CLIPTextEncode().encode(clip, "a house")[0], nodes.CLIPTextEncode().encode(clip, "")[0]
    hint = torch.linspace(0, 1, SIZE * SIZE * 3).reshape(1, SIZE, SIZE, 3)
    controlled = nodes.ControlNetApplyAdvanced().apply_controlnet(*text, controlnet, hint, 1.0, 0.0, 1.0)
    return (model, *controlled), (plain, *text)


def sample(nodes, model, positive, negative, steps: int, seed: int = 1) -> torch.Tensor:
    latent = nodes.EmptyLatentImage().generate(SIZE, SIZE, 1)[0]
    with torch.inference_mode():
        return nodes.common_ksampler(model, seed, steps, 5.0, "euler", "normal", positive, negative,
                                     latent)[0]["samples"]


def test_compiled_model_samples_as_eager_and_compiles_once(host, patched_model):
    import comfy_extras.nodes_torch_compile as torch_compile
    from torch._dynamo.utils import counters

    (model, positive, negative), unpatched = patched_model
    eager = sample(host.nodes, model, positive, negative, steps=3)
    assert not torch.allclose(eager, sample(host.nodes, *unpatched, steps=3), atol=1e-2)  # LoRA and control act
    compiled = torch_compile.TorchCompileModel.execute(model, "inductor").args[0]
    torch._dynamo.reset()
    counters.clear()
    try:
        sample(host.nodes, compiled, positive, negative, steps=1)  # compiles
        compilations = counters["frames"]["total"], counters["stats"]["unique_graphs"]
        assert compilations[1] > 0, "nothing was compiled"
        result = sample(host.nodes, compiled, positive, negative, steps=3)
        # A frame is converted again only when its guards fail: a recompile.
        assert (counters["frames"]["total"], counters["stats"]["unique_graphs"]) == compilations
    finally:
        torch._dynamo.reset()
    torch.testing.assert_close(result, eager, rtol=1e-3, atol=1e-3)
