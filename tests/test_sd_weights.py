"""Whole SD U-Net weights on a BK-SDM MODEL, in a real ComfyUI: Merge SD Model into BK-SDM moves
each SD tensor to the student tensor initialised from it; a stock merge with an SD model, or
IC-Light's SD-1.5 offset (kijai/ComfyUI-IC-Light, pinned), stops before sampling with the
pack's error instead of changing tensors other than their names say; a diff ControlNet, a
difference to SD-1.5's tensors, loads with the SD-1.5 model it was made from and then steers
BK-SDM."""

import itertools

import pytest
import torch
from factories import TEACHER_CONFIGS, unet_config
from safetensors.torch import save_file
from test_block_map import official_map
from test_teacher_addressing import bk_model
from test_weight_keys import renamed

from bksdm.errors import UnsupportedModelError
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.unet_keys import unet_tensors
from bksdm.layout.variants import classify_layout, teacher_spec

pytestmark = pytest.mark.host
LAYOUTS = ["v1_bk_base", "v1_bk_small", "v1_bk_tiny", "v2-base-512_bk_tiny"]
IC_LIGHT = "ComfyUI-IC-Light"
SD1 = spec_from_diffusers_config(unet_config(TEACHER_CONFIGS["sd1"]), TEACHER_CONFIGS["sd1"])
# What each operation makes of one tensor: (BK-SDM's, SD's, multiplier) -> merged.
OPERATIONS = {
    "blend": (0.25, lambda bk, sd, m: (1 - m) * bk + m * sd),
    "add": (0.5, lambda bk, sd, m: bk + m * sd),
    "subtract": (2.0, lambda bk, sd, m: m * (bk - sd)),
}


@pytest.fixture(scope="module")
def teachers(host, pack):
    """The full SD U-Net of each family as a MODEL (random weights, other than the students')."""
    made = {}

    def get(family):
        if family not in made:
            made[family] = bk_model(pack, TEACHER_CONFIGS[family], seed=21)[0]
        return made[family]

    yield get
    made.clear()


def _node(host, name):
    return host.nodes.NODE_CLASS_MAPPINGS[name]


# Which tensor goes where is the layout's, what is made of it the operation's: each layout once,
# with the operations in turn, covers both (four cases, not twelve).
@pytest.mark.parametrize(("name", "operation"), zip(LAYOUTS, itertools.cycle(sorted(OPERATIONS))))
def test_the_merge_node_moves_each_sd_tensor_to_the_tensor_initialised_from_it(name, operation, teachers, host,
                                                                               pack, caplog):
    model, spec = bk_model(pack, name)
    sd = teachers(spec.family.name)
    multiplier, expected = OPERATIONS[operation]
    with caplog.at_level("INFO"):
        (merged,) = _node(host, "BKSDMMergeSDModel").execute(model=model, sd_model=sd, operation=operation,
                                                             multiplier=multiplier).args
    before = {key: value.clone() for key, value in model.model.diffusion_model.state_dict().items()}
    teacher_weights = sd.model.diffusion_model.state_dict()
    teacher_of = official_map(classify_layout(spec))
    merged.patch_model()
    try:
        after = merged.model.diffusion_model.state_dict()
        for key, own in before.items():
            teacher = renamed(key, teacher_of).removeprefix("diffusion_model.")
            assert torch.allclose(after[key], expected(own, teacher_weights[teacher], multiplier), atol=1e-5), key
    finally:
        merged.unpatch_model()
    dropped = len(unet_tensors(teacher_spec(spec))) - len(before)
    assert f"{len(before)} tensors moved to the blocks initialised from theirs, {dropped} dropped" in caplog.text


def _cond(family):
    width = {"sd1": 768, "sd2": 1024}[family]
    return [[torch.randn(1, 77, width, generator=torch.Generator().manual_seed(2)), {}]]


def _sample(model, family, size=16, positive=None, negative=None):
    import nodes

    latent = {"samples": torch.zeros(1, 4, size, size)}
    return nodes.common_ksampler(model, 1, 1, 5.0, "euler", "normal", positive or _cond(family),
                                 negative or _cond(family), latent)[0]["samples"]


@pytest.mark.parametrize("name", LAYOUTS)
def test_a_stock_merge_with_an_sd_model_stops_before_sampling(name, teachers, host, pack):
    model, spec = bk_model(pack, name)
    sd = teachers(spec.family.name)
    (stock,) = _node(host, "ModelMergeAdd")().merge(model, sd)
    with pytest.raises(UnsupportedModelError) as raised:
        _sample(stock, spec.family.name)
    assert "weight patch(es) keyed by SD's tensor names" in raised.value.found
    assert "Merge SD Model into BK-SDM" in raised.value.fix
    # The same merge through the pack's node samples, and changes the sample.
    (mapped,) = _node(host, "BKSDMMergeSDModel").execute(model=model, sd_model=sd, operation="add",
                                                         multiplier=1.0).args
    sample, plain = _sample(mapped, spec.family.name), _sample(model, spec.family.name)
    assert torch.isfinite(sample).all() and not torch.equal(sample, plain)


def test_the_merge_node_refuses_a_bk_sdm_model_as_the_sd_model(host, pack):
    model, _ = bk_model(pack, "v1_bk_small")
    other, _ = bk_model(pack, "v1_bk_tiny", seed=3)
    with pytest.raises(UnsupportedModelError, match=r"found:    a tiny U-Net of the SD 1\.x family"):
        _node(host, "BKSDMMergeSDModel").execute(model=model, sd_model=other, operation="add", multiplier=1.0)


@pytest.fixture(scope="module")
def ic_light_offset(thirdparty, model_folder):
    """An IC-Light offset file with the real key names and shapes: its 8-channel first convolution
    and the tensors of two SD-1.5 blocks (a whole U-Net is 1.7 GB; two blocks show the same)."""
    import folder_paths

    thirdparty(IC_LIGHT)
    with model_folder("unet") as root:
        folder_paths.add_model_folder_path("diffusion_models", str(root))
        g = torch.Generator().manual_seed(8)
        tensors = {t.ldm: torch.randn(t.shape, generator=g) * 0.01 for t in unet_tensors(SD1)
                   if t.ldm.startswith(("input_blocks.1.", "output_blocks.3."))}
        tensors["input_blocks.0.0.weight"] = torch.randn(320, 8, 3, 3, generator=g) * 0.01
        save_file(tensors, str(root / "iclight-random.safetensors"))
        yield "iclight-random.safetensors"


@pytest.mark.parametrize("name", ["v1_bk_base", "v1_bk_small", "v1_bk_tiny"])
def test_ic_light_stops_before_sampling_with_the_pack_error(name, ic_light_offset, host, pack):
    model, _ = bk_model(pack, name)
    (lit,) = _node(host, "LoadAndApplyICLightUnet")().load(model, ic_light_offset)
    with pytest.raises(UnsupportedModelError) as raised:
        _sample(lit, "sd1")
    assert "output_blocks.3." in raised.value.found and "IC-Light" in raised.value.found


@pytest.fixture(scope="module")
def diff_controlnet(teachers, model_folder, host):
    """A random SD-1.5 ControlNet twice, where the ControlNet loaders look: whole, and as a "diff"
    ControlNet (its tensors minus the SD-1.5 U-Net's of the same name, with the 'difference' marker
    of such files), the form Load ControlNet Model (diff) reads."""
    import comfy.controlnet
    import folder_paths
    from factories import random_controlnet

    whole = comfy.controlnet.load_controlnet_state_dict(random_controlnet("sd1", seed=5).state_dict())
    sd = teachers("sd1").model_state_dict()
    with model_folder("controlnet") as root:
        tensors = {f"control_model.{name}": tensor.contiguous() for name, tensor in
                   whole.control_model.state_dict().items()}
        save_file(tensors, str(root / "sd15-controlnet.safetensors"))
        for name, tensor in tensors.items():
            base = sd.get(name.replace("control_model.", "diffusion_model.", 1))
            if base is not None:
                tensors[name] = tensor - base
        save_file(tensors | {"difference": torch.zeros(1)}, str(root / "sd15-diff-controlnet.safetensors"))
        del whole, sd, tensors  # the files hold them; the module's teachers are memory enough
        folder_paths.add_model_folder_path("controlnet", str(root))
        yield "sd15-controlnet.safetensors", "sd15-diff-controlnet.safetensors"


@pytest.mark.parametrize("name", ["v1_bk_base", "v1_bk_small", "v1_bk_tiny"])
def test_a_diff_controlnet_loads_with_the_sd_model_it_was_made_from(name, diff_controlnet, teachers, host, pack):
    """Load ControlNet Model (diff) adds the MODEL's tensors to the file's by SD-1.5's names: given a
    BK-SDM MODEL, ComfyUI's loader fails on a tensor whose name BK-SDM gives another shape (the
    README's verdict and Troubleshooting row); given an SD-1.5 MODEL, the ControlNet it makes is the
    whole one and steers BK-SDM as the whole one does."""
    whole_name, diff_name = diff_controlnet
    model, _ = bk_model(pack, name)
    with pytest.raises(RuntimeError, match="must match the size of tensor"):
        _node(host, "DiffControlNetLoader")().load_controlnet(model, diff_name)
    (from_diff,) = _node(host, "DiffControlNetLoader")().load_controlnet(teachers("sd1"), diff_name)
    (whole,) = _node(host, "ControlNetLoader")().load_controlnet(whole_name)
    hint = torch.rand(1, 128, 128, 3, generator=torch.Generator().manual_seed(8))  # the size _sample's latent asks
    samples = []
    for control_net in (from_diff, whole):
        positive, negative = _node(host, "ControlNetApplyAdvanced")().apply_controlnet(
            _cond("sd1"), _cond("sd1"), control_net, hint, 1.0, 0.0, 1.0)
        samples.append(_sample(model, "sd1", positive=positive, negative=negative))
    assert (samples[1] - _sample(model, "sd1")).abs().max() > 1e-2  # the control does something...
    # ...the same from either file, but for the rounding of (whole - SD) + SD in fp32, where the random
    # ControlNet's tensors are small beside the SD ones (2.2e-4 at most, measured)
    torch.testing.assert_close(samples[0], samples[1], rtol=0, atol=1e-3)
