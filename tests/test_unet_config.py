"""Config derivation: the nine real BK-SDM configs, the teachers, and what must be refused."""

import copy
import json

import pytest
from factories import BK_CONFIGS, TEACHER_CONFIGS, unet_config

from bksdm.errors import BKSDMError, InvalidConfigError, UnsupportedModelError
from bksdm.files.unet_config import spec_from_config_file, spec_from_diffusers_config
from bksdm.layout.unet_keys import parameter_count, unet_blocks
from bksdm.layout.unet_spec import NO_MIDDLE, spec_from_unet_config
from bksdm.layout.variants import LAYOUTS, VARIANTS, classify_layout

# The pack's ComfyUI-free core: the same on every ComfyUI release (.ci/run runs it once).
pytestmark = pytest.mark.newest_comfyui

# Facts from the BK-SDM paper / model cards (shared reference variants.md): exact U-Net sizes.
TEACHER_PARAMS = {"sd1": 859_520_964, "sd2": 865_910_724}


def _layout_of(name: str) -> str:
    return name.rsplit("_", 1)[1]


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_real_configs_derive_their_family_layout_and_size(name):
    spec = spec_from_diffusers_config(unet_config(name), name)
    family = "sd1" if name.startswith("v1") else "sd2"
    assert spec.family.name == family
    assert classify_layout(spec) == _layout_of(name)
    registry = {(v.family, v.layout): v.unet_params for v in VARIANTS.values()}
    assert parameter_count(spec) == registry[family, _layout_of(name)]
    assert spec.resolution == (768 if "768" in name else 512)


@pytest.mark.parametrize("family", sorted(TEACHER_CONFIGS))
def test_teachers_are_the_full_layout(family):
    spec = spec_from_diffusers_config(unet_config(TEACHER_CONFIGS[family]))
    assert classify_layout(spec) == "teacher"
    assert parameter_count(spec) == TEACHER_PARAMS[family]


@pytest.mark.parametrize("name", BK_CONFIGS + list(TEACHER_CONFIGS.values()))
def test_parameter_count_matches_diffusers(name):
    import diffusers
    import torch
    with torch.device("meta"):
        model = diffusers.UNet2DConditionModel.from_config(unet_config(name))
    spec = spec_from_diffusers_config(unet_config(name))
    assert parameter_count(spec) == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", BK_CONFIGS + list(TEACHER_CONFIGS.values()))
def test_the_spec_is_one_value_from_the_config_from_comfyuis_form_and_from_the_registry(name):
    spec = spec_from_diffusers_config(unet_config(name), name)
    # ComfyUI's form, as a MODEL carries it (ComfyUI's model class adds keys of its own), reads back equal.
    model_config = {**spec.unet_config, "num_heads": 8, "num_head_channels": -1}
    assert spec_from_unet_config(spec.family, model_config) == spec
    assert hash(spec_from_unet_config(spec.family, model_config)) == hash(spec)
    assert LAYOUTS[classify_layout(spec)].spec(spec.family) == spec  # the registry's layout is the same value
    # Derived facts are cached on the value: an equal spec gets the very same walk.
    assert unet_blocks(copy.deepcopy(spec)) is unet_blocks(spec)


def test_absent_mid_block_type_means_the_default_block_and_null_means_none():
    config = unet_config("v2-base-512_bk_base")
    assert "mid_block_type" not in config
    assert spec_from_diffusers_config(config).unet_config["transformer_depth_middle"] == 1
    config["mid_block_type"] = None
    assert spec_from_diffusers_config(config).unet_config["transformer_depth_middle"] == NO_MIDDLE
    config["mid_block_type"] = "UNetMidBlock2DCrossAttn"
    assert spec_from_diffusers_config(config).unet_config["transformer_depth_middle"] == 1


def test_head_count_can_be_scalar_list_or_num_attention_heads():
    sd1 = unet_config("v1_bk_small")
    base = spec_from_diffusers_config(sd1)
    as_list = dict(sd1, attention_head_dim=[8, 8, 8, 8])
    as_heads = dict(sd1, attention_head_dim=None, num_attention_heads=8)
    assert spec_from_diffusers_config(as_list) == base
    assert spec_from_diffusers_config(as_heads) == base
    sd2 = unet_config("v2-base-512_bk_tiny")
    assert sd2["attention_head_dim"] == [5, 10, 20]  # heads of 64 channels on every level
    assert spec_from_diffusers_config(sd2).family.head_channels == 64


def test_upcast_attention_is_accepted_and_changes_nothing_in_the_layout():
    config = unet_config("v2-768_bk_base")
    assert config["upcast_attention"] is True
    assert spec_from_diffusers_config(config).unet_config == \
        spec_from_diffusers_config(unet_config("v2-base-512_bk_base")).unet_config


def test_layers_per_block_and_transformer_layers_can_be_per_level():
    config = dict(unet_config("v1_bk_base"), layers_per_block=[1, 2, 1, 2], transformer_layers_per_block=[1, 2, 1, 1])
    c = spec_from_diffusers_config(config).unet_config
    assert c["num_res_blocks"] == [1, 2, 1, 2]
    assert c["transformer_depth"] == [1, 2, 2, 1, 0, 0]
    assert c["transformer_depth_output"] == [1, 1, 2, 2, 2, 1, 1, 0, 0, 0]


REFUSED = {
    "SDXL": ({"cross_attention_dim": 2048, "addition_embed_type": "text_time"}, "SDXL"),
    "SD3": ({"_class_name": "SD3Transformer2DModel"}, "Stable Diffusion 3"),
    "unknown down block": ({"down_block_types": ["CrossAttnDownBlock2D", "SimpleCrossAttnDownBlock2D",
                                                 "CrossAttnDownBlock2D", "DownBlock2D"]}, "SimpleCrossAttnDownBlock2D"),
    "mid block without cross-attention": ({"mid_block_type": "UNetMidBlock2D"}, "mid_block_type"),
    "inpainting": ({"in_channels": 9}, "in_channels 9"),
    "LCM time conditioning": ({"time_cond_proj_dim": 256}, "time_cond_proj_dim"),
    "class embedding": ({"class_embed_type": "timestep"}, "class_embed_type"),
    "SD1 width with linear projection": ({"use_linear_projection": True}, "use_linear_projection"),
    "heads ComfyUI cannot express": ({"attention_head_dim": 5}, "8 heads"),
    "other context width": ({"cross_attention_dim": 512}, "512"),
    "scale-shift resnets": ({"resnet_time_scale_shift": "scale_shift"}, "resnet_time_scale_shift"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_unsupported_configs_are_refused_by_name(case):
    change, named = REFUSED[case]
    config = dict(unet_config("v1_bk_small"), **change)
    with pytest.raises(UnsupportedModelError) as raised:
        spec_from_diffusers_config(config, "unet/config.json")
    message = str(raised.value)
    assert "unet/config.json" in message and named in message and "fix:" in message


@pytest.mark.parametrize("damage", [
    {"block_out_channels": []},
    {"block_out_channels": "320"},
    {"down_block_types": ["CrossAttnDownBlock2D"]},
    {"attention_head_dim": [8, 8]},
    {"in_channels": -4},
])
def test_damaged_configs_raise_the_packs_error(damage):
    config = dict(unet_config("v1_bk_tiny"), **damage)
    with pytest.raises(BKSDMError):
        spec_from_diffusers_config(config, "cfg")


def test_config_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "config.json"
    bad.write_text("{ not json")
    with pytest.raises(InvalidConfigError, match=r"config\.json"):
        spec_from_config_file(bad)
    bad.write_text(json.dumps([1, 2]))
    with pytest.raises(InvalidConfigError, match="a JSON object"):
        spec_from_config_file(bad)
    with pytest.raises(InvalidConfigError, match="no such file"):
        spec_from_config_file(tmp_path / "missing.json")


def test_derivation_does_not_modify_the_config():
    config = unet_config("v2-768_bk_small")
    before = copy.deepcopy(config)
    spec_from_diffusers_config(config)
    assert config == before
