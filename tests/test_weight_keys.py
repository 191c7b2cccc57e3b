"""Whole SD U-Net weights (a merge with an SD model, an SD offset) moved onto BK-SDM by tensor
name, against the official map (shared reference block-map.md), for every layout, v1 and v2."""

import re

import pytest
from factories import BK_CONFIGS, unet_config
from test_block_map import official_map

from bksdm.errors import PatchMisfitError
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.unet_keys import unet_tensors
from bksdm.layout.variants import classify_layout, teacher_spec
from bksdm.layout.weight_keys import PREFIX, sd_named_misfits, transfer_weights

# The pack's ComfyUI-free core: the same on every ComfyUI release (.ci/run runs it once).
pytestmark = pytest.mark.newest_comfyui

# Teacher blocks with no student block (block-map.md), as LDM block prefixes.
REMOVED = {
    "base": [f"input_blocks.{i}." for i in (2, 5, 8, 11)] + [f"output_blocks.{i}." for i in (1, 4, 7, 10)],
    "tiny": [f"input_blocks.{i}." for i in (2, 5, 8, 9, 10, 11)] + [f"output_blocks.{i}." for i in (0, 1, 2, 4, 7, 10)]
    + ["middle_block."],
}
REMOVED["small"] = REMOVED["base"] + ["middle_block."]


def _spec(name):
    return spec_from_diffusers_config(unet_config(name), name)


def _teacher_weights(student):
    """A whole SD U-Net, as shapes by ComfyUI key (the values pass through untouched)."""
    return {PREFIX + t.ldm: t.shape for t in unet_tensors(teacher_spec(student))}


def renamed(key: str, blocks: dict[str, str]) -> str | None:
    """A tensor key with its block renamed by a block table (LDM prefixes), or None if no block matches."""
    name = key.removeprefix(PREFIX)
    for block, other in blocks.items():
        if re.match(re.escape(block) + r"\.", name):
            return PREFIX + other + name[len(block):]
    return None


def _official_home(key: str, layout: str) -> str | None:
    """The student tensor of a teacher key by the transcribed official table, or None."""
    return renamed(key, {teacher: student for student, teacher in official_map(layout).items()})


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_each_sd_tensor_moves_to_the_tensor_initialised_from_it(name, caplog):
    student = _spec(name)
    layout = classify_layout(student)
    weights = _teacher_weights(student)
    with caplog.at_level("INFO"):
        moved, report = transfer_weights(weights, student, shape_of=lambda shape: shape)
    expected = {_official_home(key, layout): shape for key, shape in weights.items() if _official_home(key, layout)}
    assert moved == expected
    assert moved == {PREFIX + t.ldm: t.shape for t in unet_tensors(student)}  # every student tensor, its own shape
    assert report.dropped == {key for key in weights if _official_home(key, layout) is None}
    assert all(key.removeprefix(PREFIX).startswith(tuple(REMOVED[layout])) for key in report.dropped)
    assert f"{report.mapped} tensors moved" in caplog.text and f"{len(report.dropped)} dropped" in caplog.text


def test_weights_of_another_family_are_refused_by_key_and_shapes():
    student = _spec("v1_bk_small")
    sd2 = _teacher_weights(_spec("v2-base-512_bk_small"))
    with pytest.raises(PatchMisfitError) as raised:
        transfer_weights(sd2, student, shape_of=lambda shape: shape)
    error = raised.value
    key = re.search(r"diffusion_model\.\S+", error.found).group(0)
    assert sd2[key] != _teacher_weights(student)[key]
    assert f"of shape {list(sd2[key])}, where that U-Net's is {list(_teacher_weights(student)[key])}" in error.found
    assert "SD 1.x weights for SD 1.x BK-SDM models" in error.fix


def test_a_key_no_sd_unet_has_is_refused_by_name():
    with pytest.raises(PatchMisfitError, match=r"diffusion_model\.input_blocks\.12\.0\.weight \[4\]: the SD 1.x"):
        transfer_weights({"diffusion_model.input_blocks.12.0.weight": (4,)}, _spec("v1_bk_tiny"), lambda s: s)


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_sd_weights_under_sd_names_are_recognised_on_every_layout(name):
    """A stock merge with any SD model leaves tensors of SD's shape under names whose BK tensor
    has another shape, so the samplers can refuse it; the model's own weights never look so."""
    student = _spec(name)
    own = {PREFIX + t.ldm: t.shape for t in unet_tensors(student)}
    sd = _teacher_weights(student)
    shared = [(key, shape) for key, shape in sd.items() if key in own]
    misfits = sd_named_misfits(shared, student)
    assert misfits and all(sd[key] == found != own[key] for key, found, _ in misfits)
    assert sd_named_misfits(own.items(), student) == []
    # an offset that widens a tensor on purpose (IC-Light's 8-channel conv_in) is not SD's shape
    assert sd_named_misfits([(f"{PREFIX}input_blocks.0.0.weight", (320, 8, 3, 3))], student) == []
