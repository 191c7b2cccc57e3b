"""A LoRA trained on the full SD U-Net, moved onto BK-SDM, puts exactly the teacher module's
delta on the student module initialised from it, through ComfyUI's own LoRA code."""

import pytest
import torch
from factories import unet_config
from test_block_map import STUDENTS, official_map

from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.block_map import teacher_spec
from bksdm.layout.lora import transfer_lora
from bksdm.layout.unet_keys import unet_blocks
from bksdm.layout.variants import classify_layout

RANK = 2


def synthetic_teacher_lora(teacher, seed=0):
    """A rank-2 LoRA on every weight of the teacher U-Net, in the key styles LoRA tools write."""
    g = torch.Generator().manual_seed(seed)
    lora, deltas = {}, {}  # deltas: teacher LDM weight name -> expected delta
    n = 0
    for _, tensors in unet_blocks(teacher):
        for t in tensors:
            if len(t.shape) < 2:
                continue
            out_features, in_shape = t.shape[0], t.shape[1:]
            down = torch.randn((RANK, *in_shape), generator=g) * 0.1
            up = torch.randn((out_features, RANK) + (1,) * (len(t.shape) - 2), generator=g) * 0.1
            d_module, l_module = t.diffusers[:-len(".weight")], t.ldm[:-len(".weight")]
            style = n % 4
            n += 1
            if style == 0:  # kohya, diffusers module names
                base = "lora_unet_" + d_module.replace(".", "_")
                lora |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up,
                         f"{base}.alpha": torch.tensor(float(RANK) / 2)}
                scale = 0.5
            elif style == 1:  # kohya, LDM module names
                base = "lora_unet_" + l_module.replace(".", "_")
                lora |= {f"{base}.lora_down.weight": down, f"{base}.lora_up.weight": up}
                scale = 1.0
            elif style == 2:  # diffusers / PEFT
                lora |= {f"unet.{d_module}.lora_A.weight": down, f"unet.{d_module}.lora_B.weight": up}
                scale = 1.0
            else:  # ComfyUI's own
                lora |= {f"diffusion_model.{l_module}.lora_down.weight": down,
                         f"diffusion_model.{l_module}.lora_up.weight": up}
                scale = 1.0
            deltas[t.ldm] = (up.flatten(1) @ down.flatten(1)).reshape(t.shape) * scale
    lora["lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight"] = torch.zeros(1)  # passes through
    return lora, deltas


def _module_map(student, layout):
    """Student LDM weight -> teacher LDM weight, expanded from the official block table."""
    blocks = official_map(layout)
    teacher_tensors = {t.ldm for _, ts in unet_blocks(teacher_spec(student)) for t in ts}
    out = {}
    for block, tensors in unet_blocks(student):
        for t in tensors:
            source = blocks[block.ldm] + t.ldm[len(block.ldm):]
            assert source in teacher_tensors
            out[t.ldm] = source
    return out


@pytest.mark.parametrize("name", STUDENTS)
@torch.no_grad()
def test_each_student_weight_gets_exactly_its_teacher_modules_delta(name, comfy):
    import comfy.lora
    import comfy.sd

    student = spec_from_diffusers_config(unet_config(name), name)
    layout = classify_layout(student)
    lora, deltas = synthetic_teacher_lora(teacher_spec(student))
    transferred, report = transfer_lora(lora, student, "synthetic.safetensors")
    assert "lora_te_text_model_encoder_layers_0_mlp_fc1.lora_up.weight" in transferred
    assert not report.unmatched

    patched, _ = comfy.sd.load_lora_for_models(_meta_patcher(student), None, transferred, 1.0, 0.0)

    expected_sources = _module_map(student, layout)
    patched_weights = {k.removeprefix("diffusion_model."): v for k, v in patched.patches.items()}
    assert set(patched_weights) == {s for s, t in expected_sources.items() if t in deltas}
    for student_weight, patches in patched_weights.items():
        shape = deltas[expected_sources[student_weight]].shape
        delta = comfy.lora.calculate_weight(patches, torch.zeros(shape), student_weight)
        assert torch.equal(delta, deltas[expected_sources[student_weight]]), student_weight

    kept = set(expected_sources.values())
    assert len(report.dropped) == sum(1 for t in deltas if t not in kept)  # every removed block's delta, counted


def _meta_patcher(student):
    """A ComfyUI model built on the meta device: ComfyUI's LoRA code needs only its names."""
    import comfy.model_base
    import comfy.model_patcher
    import comfy.supported_models

    model_class = {"sd1": comfy.supported_models.SD15, "sd2": comfy.supported_models.SD20}[student.family.name]
    model_config = model_class(student.unet_config)
    model_config.set_inference_dtype(torch.float32, None)
    meta = comfy.model_base.BaseModel(model_config, device=torch.device("meta"))
    cpu = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(meta, load_device=cpu, offload_device=cpu)


@pytest.mark.parametrize("name", ["v1_bk_small", "v1_bk_tiny"])
def test_a_lora_trained_on_bk_sdm_loads_through_the_stock_loader_unchanged(name, comfy):
    """Keys named after the student's own modules need no transfer: every one lands."""
    import comfy.sd

    student = spec_from_diffusers_config(unet_config(name), name)
    lora = {}
    for _, tensors in unet_blocks(student):
        for t in tensors:
            if len(t.shape) == 2:  # the attention and feed-forward projections, as LoRA trainers target
                base = "lora_unet_" + t.diffusers[:-len(".weight")].replace(".", "_")
                lora[f"{base}.lora_down.weight"] = torch.zeros(RANK, t.shape[1])
                lora[f"{base}.lora_up.weight"] = torch.zeros(t.shape[0], RANK)
    patched, _ = comfy.sd.load_lora_for_models(_meta_patcher(student), None, lora, 1.0, 0.0)
    assert len(patched.patches) == len(lora) // 2
