"""Property-based tests of config derivation and layout detection.

Valid SD-family configs (any number of levels, widths, res blocks, attention placement,
transformer depth, middle block or none, both families) derive a layout whose tensor set
is detected back to the same layout, from diffusers and from ComfyUI names. Broken configs
and damaged tensor sets raise the pack's own error, never another exception.
"""

import copy

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from bksdm.errors import BKSDMError
from bksdm.files.detect import detect_unet
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.unet_keys import unet_tensors

# The pack's ComfyUI-free core: the same on every ComfyUI release (.ci/run runs it once).
pytestmark = pytest.mark.newest_comfyui
SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def valid_configs(draw):
    family = draw(st.sampled_from(["sd1", "sd2"]))
    levels = draw(st.integers(1, 5))
    base = draw(st.sampled_from([64, 128, 320]))
    channels = [base * draw(st.integers(1, 4)) for _ in range(levels)]
    channels[0] = base
    down = [draw(st.sampled_from(["CrossAttnDownBlock2D", "DownBlock2D"])) for _ in range(levels)]
    up = [draw(st.sampled_from(["CrossAttnUpBlock2D", "UpBlock2D"])) for _ in range(levels)]
    per_level = draw(st.booleans())
    layers = [draw(st.integers(1, 3)) for _ in range(levels)] if per_level else draw(st.integers(1, 3))
    depth = draw(st.integers(1, 2))
    config = {"_class_name": "UNet2DConditionModel", "block_out_channels": channels, "down_block_types": down,
              "up_block_types": up, "layers_per_block": layers, "transformer_layers_per_block": depth,
              "in_channels": 4, "out_channels": 4, "sample_size": 64}
    middle = draw(st.sampled_from(["absent", None, "UNetMidBlock2DCrossAttn"]))
    if middle is None and "CrossAttnDownBlock2D" not in down and "CrossAttnUpBlock2D" not in up:
        down[0] = "CrossAttnDownBlock2D"  # text conditioning needs some cross-attention (refused otherwise)
    if middle != "absent":
        config["mid_block_type"] = middle
    if family == "sd1":
        config |= {"cross_attention_dim": 768, "attention_head_dim": 8, "use_linear_projection": False}
    else:
        config |= {"cross_attention_dim": 1024, "attention_head_dim": [c // 64 for c in channels],
                   "use_linear_projection": True}
    return config


@SETTINGS
@given(valid_configs())
def test_valid_layouts_round_trip_through_detection(config):
    spec = spec_from_diffusers_config(config, "config.json")
    tensors = unet_tensors(spec)
    for naming in ("diffusers", "ldm"):
        shapes = {getattr(t, naming): t.shape for t in tensors}
        detected, found_naming, renames = detect_unet(shapes, "weights")
        assert (detected.family, detected.unet_config, found_naming, renames) == \
            (spec.family, spec.unet_config, naming, {})


BREAKAGES = st.sampled_from([
    ("block_out_channels", [0]), ("block_out_channels", None), ("block_out_channels", [320, 500]),
    ("down_block_types", ["AttnDownBlock2D"]), ("up_block_types", "CrossAttnUpBlock2D"),
    ("layers_per_block", 0), ("layers_per_block", [1, 2, 3, 4, 5, 6, 7]), ("layers_per_block", "2"),
    ("transformer_layers_per_block", [[1, 2]]), ("attention_head_dim", [3, 3, 3, 3, 3, 3]),
    ("attention_head_dim", 7), ("cross_attention_dim", [768, 768]), ("cross_attention_dim", 2048),
    ("cross_attention_dim", True), ("use_linear_projection", "yes"), ("mid_block_type", "UNetMidBlockFlux"),
    ("in_channels", 9), ("in_channels", -1), ("addition_embed_type", "text_time"), ("time_cond_proj_dim", 256),
    ("class_embed_type", "projection"), ("_class_name", "FluxTransformer2DModel"), ("only_cross_attention", [True]),
    ("num_attention_heads", [1, 2]), ("resnet_time_scale_shift", "scale_shift"), ("conv_in_kernel", 7),
])


@SETTINGS
@given(valid_configs(), BREAKAGES)
def test_broken_configs_raise_the_packs_error(config, breakage):
    key, value = breakage
    broken = copy.deepcopy(config)
    broken[key] = value
    try:
        spec_from_diffusers_config(broken, "config.json")
    except BKSDMError as e:
        assert "config.json" in str(e)
    # A few breakages are harmless for some configs (e.g. a head count that still fits): no
    # exception is also an allowed outcome; any other exception type fails the test.


@SETTINGS
@given(valid_configs(), st.data())
def test_damaged_tensor_sets_are_refused_with_the_packs_error(config, data):
    spec = spec_from_diffusers_config(config)
    naming = data.draw(st.sampled_from(["diffusers", "ldm"]))
    shapes = {getattr(t, naming): t.shape for t in unet_tensors(spec)}
    names = sorted(shapes)
    damage = data.draw(st.sampled_from(["drop", "reshape", "rename", "add"]))
    victims = data.draw(st.lists(st.sampled_from(names), min_size=1, max_size=5, unique=True))
    for name in victims:
        if damage == "drop":
            del shapes[name]
        elif damage == "reshape":
            shapes[name] = tuple(d + 1 for d in shapes[name])
        elif damage == "rename":
            shapes[name.replace(".", ".x", 1)] = shapes.pop(name)
        else:
            shapes[f"{name}.extra"] = (1,)
    try:
        detected, _, _ = detect_unet(shapes, "weights")
    except BKSDMError as e:
        assert "weights" in str(e)
    else:  # only a damage that leaves a smaller but complete valid U-Net can pass, and then exactly
        expected = {getattr(t, naming): t.shape for t in unet_tensors(detected)}
        assert expected == shapes
