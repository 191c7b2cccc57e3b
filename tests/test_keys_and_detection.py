"""The tensor schema (key map), and layout detection from tensor names and shapes."""

import pytest
from factories import BK_CONFIGS, TEACHER_CONFIGS, script_name, unet_config

from bksdm.errors import BKSDMError, UnsupportedModelError, WeightsMismatchError
from bksdm.files.detect import detect_unet, gapped_ldm_renames
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.unet_keys import check_tensors, convert_diffusers_unet, diffusers_to_ldm, unet_tensors

ALL_CONFIGS = BK_CONFIGS + list(TEACHER_CONFIGS.values())


def _spec(name):
    return spec_from_diffusers_config(unet_config(name), name)


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_schema_is_exactly_diffusers_state_dict(name):
    import diffusers
    import torch
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel.from_config(unet_config(name))
    reference = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert {t.diffusers: t.shape for t in unet_tensors(_spec(name))} == reference


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_ldm_names_are_exactly_comfyuis_unet_and_its_detector_agrees(name, comfy):
    """ComfyUI's own UNetModel, its own layout detector and its own diffusers key map agree."""
    import comfy.model_detection
    import comfy.ops
    import comfy.supported_models
    import comfy.utils
    import torch
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    spec = _spec(name)
    model_class = {"sd1": comfy.supported_models.SD15, "sd2": comfy.supported_models.SD20}[spec.family.name]
    with torch.device("meta"):
        model = UNetModel(**model_class(spec.unet_config).unet_config, operations=comfy.ops.disable_weight_init)
    ours = {t.ldm: t.shape for t in unet_tensors(spec)}
    assert ours == {k: tuple(v.shape) for k, v in model.state_dict().items()}
    meta = {k: torch.empty(shape, device="meta") for k, shape in ours.items()}
    assert comfy.model_detection.detect_unet_config(meta, "") == spec.unet_config
    theirs = comfy.utils.unet_to_diffusers(spec.unet_config)  # a superset: it also names absent blocks
    assert all(theirs[d] == ldm for d, ldm in diffusers_to_ldm(spec).items())


def test_conversion_renames_without_copying():
    import torch
    spec = _spec("v1_bk_tiny")
    state = {t.diffusers: torch.zeros(t.shape, device="meta") for t in unet_tensors(spec)}
    converted = convert_diffusers_unet(state, spec, "unet.safetensors", "BK-Tiny")
    mapping = diffusers_to_ldm(spec)
    assert all(converted[mapping[k]] is v for k, v in state.items())


@pytest.mark.parametrize("damage", ["missing", "unexpected", "misshapen"])
def test_conversion_fails_loudly_on_any_mismatch(damage):
    import torch
    spec = _spec("v1_bk_small")
    state = {t.diffusers: torch.empty(t.shape, device="meta") for t in unet_tensors(spec)}
    if damage == "missing":
        del state["up_blocks.1.attentions.1.proj_out.weight"]
    elif damage == "unexpected":
        state["mid_block.resnets.0.conv1.weight"] = torch.empty(1280, 1280, 3, 3, device="meta")
    else:
        state["conv_in.weight"] = torch.empty(320, 9, 3, 3, device="meta")
    with pytest.raises(WeightsMismatchError) as raised:
        convert_diffusers_unet(state, spec, "/models/unet.safetensors", "BK-Small")
    message = str(raised.value)
    assert "/models/unet.safetensors" in message and f"1 {damage}" in message.replace("with other shapes", "misshapen")


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_detection_from_diffusers_names(name):
    spec = _spec(name)
    shapes = {t.diffusers: t.shape for t in unet_tensors(spec)}
    detected, naming, renames = detect_unet(shapes, name)
    assert (detected.family, detected.unet_config, naming, renames) == (spec.family, spec.unet_config, "diffusers", {})


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_detection_from_contiguous_ldm_names(name):
    spec = _spec(name)
    detected, naming, renames = detect_unet({t.ldm: t.shape for t in unet_tensors(spec)}, name)
    assert (detected.unet_config, naming, renames) == (spec.unet_config, "ldm", {})


@pytest.mark.parametrize("name", ALL_CONFIGS)
def test_gapped_numbering_of_the_conversion_script_is_repaired(name):
    spec = _spec(name)
    tensors = unet_tensors(spec)
    gapped = {script_name(t.diffusers): t.shape for t in tensors}
    detected, naming, renames = detect_unet(gapped, name)
    assert (detected.unet_config, naming) == (spec.unet_config, "ldm")
    assert all(renames.get(script_name(t.diffusers), script_name(t.diffusers)) == t.ldm for t in tensors)
    is_teacher = name in TEACHER_CONFIGS.values()
    assert (renames == {}) == is_teacher  # the script's numbering is the teacher's own


def test_comfyuis_block_counter_misreads_the_gapped_file_that_we_repair(comfy):
    import comfy.model_detection
    import torch

    spec = _spec("v1_bk_small")
    gapped = {script_name(t.diffusers): torch.empty(t.shape, device="meta") for t in unet_tensors(spec)}
    stock = comfy.model_detection.detect_unet_config(gapped, "")
    assert stock is None or stock != spec.unet_config
    renames = gapped_ldm_renames(gapped)
    repaired = {renames.get(k, k): v for k, v in gapped.items()}
    assert comfy.model_detection.detect_unet_config(repaired, "") == spec.unet_config


FOREIGN = {
    "SDXL (LDM)": {"input_blocks.0.0.weight": (320, 4, 3, 3), "label_emb.0.0.weight": (1280, 2816)},
    "SDXL (diffusers)": {"conv_in.weight": (320, 4, 3, 3), "add_embedding.linear_1.weight": (1280, 2816)},
    "SD3": {"joint_blocks.0.context_block.attn.qkv.weight": (4608, 1536)},
    "Flux": {"double_blocks.0.img_attn.qkv.weight": (9216, 3072)},
    "not a U-Net": {"encoder.layers.0.weight": (4, 4)},
}


@pytest.mark.parametrize("case", sorted(FOREIGN))
def test_other_architectures_are_refused(case):
    with pytest.raises(UnsupportedModelError, match=r"model\.safetensors"):
        detect_unet(FOREIGN[case], "model.safetensors")


def test_a_unet_with_a_missing_block_is_refused_not_half_loaded():
    spec = _spec("v1_bk_base")
    shapes = {t.ldm: t.shape for t in unet_tensors(spec) if not t.ldm.startswith("output_blocks.3.1.")}
    with pytest.raises(BKSDMError, match=r"missing|transformer"):
        detect_unet(shapes, "ckpt")


def test_check_tensors_lists_what_is_wrong():
    with pytest.raises(WeightsMismatchError) as raised:
        check_tensors({"a": (1,), "c": (2,)}, {"a": (2,), "b": (1,)}, "f.safetensors", "layout X")
    text = str(raised.value)
    assert "1 missing (b)" in text and "1 unexpected (c)" in text and "a: (1,) instead of (2,)" in text
