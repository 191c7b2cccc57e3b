"""The teacher's block addresses on every BK layout, against the official tables (block-map.md)."""

import pytest
from factories import BK_CONFIGS, unet_config

from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.addresses import attention_sites, teacher_addresses
from bksdm.layout.motion_modules import motion_module_homes, teacher_block_sequence
from bksdm.layout.unet_keys import unet_blocks
from bksdm.layout.variants import classify_layout

# The pack's ComfyUI-free core: the same on every ComfyUI release (.ci/run runs it once).
pytestmark = pytest.mark.newest_comfyui

# ComfyUI block addresses, teacher -> student, transcribed from block-map.md's LDM columns.
BASE_INPUT = {0: 0, 1: 1, 3: 2, 4: 3, 6: 4, 7: 5, 9: 6, 10: 7}
BASE_OUTPUT = {0: 0, 2: 1, 3: 2, 5: 3, 6: 4, 8: 5, 9: 6, 11: 7}
TINY_INPUT = {0: 0, 1: 1, 3: 2, 4: 3, 6: 4, 7: 5}
TINY_OUTPUT = {3: 0, 5: 1, 6: 2, 8: 3, 9: 4, 11: 5}
# The documented stand-in for a removed middle block: the decoder's first attention block.
STAND_IN = {"base": None, "small": ("output", 2), "tiny": ("output", 0)}


def official(layout: str) -> dict:
    inputs, outputs = (TINY_INPUT, TINY_OUTPUT) if layout == "tiny" else (BASE_INPUT, BASE_OUTPUT)
    table = {("input", t): ("input", s) for t, s in inputs.items()}
    table |= {("output", t): ("output", s) for t, s in outputs.items()}
    if layout == "base":
        table[("middle", 0)] = ("middle", 0)
    return table


def _addresses(name):
    spec = spec_from_diffusers_config(unet_config(name), name)
    return spec, teacher_addresses(spec)


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_every_student_block_answers_the_teacher_block_it_was_initialised_from(name):
    spec, addresses = _addresses(name)
    layout = classify_layout(spec)
    assert addresses.layout == layout
    assert dict(addresses.student_of) == official(layout)
    assert {s: t for t, s in official(layout).items()} == dict(addresses.teacher_of)
    assert addresses.middle_stand_in == STAND_IN[layout]


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_removed_teacher_blocks_have_no_student_block_except_the_middle_stand_in(name):
    spec, addresses = _addresses(name)
    layout = classify_layout(spec)
    teacher = {(kind, i) for kind in ("input", "output") for i in range(12)} | {("middle", 0)}
    removed = teacher - official(layout).keys()
    for address in removed:
        expected = STAND_IN[layout] if address == ("middle", 0) else None
        assert addresses.student_block(address) == expected
    assert addresses.student_block(("middle", 1)) == ("middle", 1)  # not an SD block: passed on as it is


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_a_teacher_patch_always_runs_at_a_site_of_its_own_width_and_heads(name):
    spec, addresses = _addresses(name)
    student_sites = attention_sites(spec)
    assert student_sites, "every BK layout has attention"
    for student, site in student_sites.items():
        teacher = addresses.teacher_sites[addresses.teacher_block(student)]
        assert (site.width, site.heads) == (teacher.width, teacher.heads)
    if addresses.middle_stand_in:
        middle, stand_in = addresses.teacher_sites[("middle", 0)], student_sites[addresses.middle_stand_in]
        assert (middle.width, middle.heads) == (stand_in.width, stand_in.heads)


def test_teacher_sites_are_sd_attention_in_comfyui_order():
    _, addresses = _addresses("v1_bk_base")
    sites = addresses.teacher_sites
    order = [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + [("output", i) for i in range(3, 12)]
    assert sorted(sites, key=lambda a: sites[a].index) == order  # ComfyUI's transformer_index, 0..15
    assert [sites[a].width for a in order] == [320, 320, 640, 640, 1280, 1280, 1280, 1280, 1280, 1280, 640, 640,
                                                640, 320, 320, 320]
    assert {s.heads for s in sites.values()} == {8}
    _, v2 = _addresses("v2-base-512_bk_tiny")
    assert [v2.teacher_sites[a].heads for a in order] == [w // 64 for w in (320, 320, 640, 640, 1280, 1280, 1280,
                                                                            1280, 1280, 1280, 640, 640, 640, 320,
                                                                            320, 320)]


def test_a_custom_layout_keeps_every_address():
    config = dict(unet_config("v1_bk_small"), layers_per_block=3)
    addresses = teacher_addresses(spec_from_diffusers_config(config))
    assert not addresses.aligned
    assert addresses.student_block(("input", 4)) == ("input", 4)
    assert addresses.teacher_block(("output", 7)) == ("output", 7)


# AnimateDiff's SD-1.5 motion modules by their place in a file: down level L's module I follows SD's
# input block 1 + 3L + I, up level L's module I its output block 3L + I (the motion-module papers'
# diffusers names, down_blocks.L.resnets.I / up_blocks.L.resnets.I, in ComfyUI's numbering).
def teacher_block_of(place):
    path, level, index = place
    return {"down": ("input", 1 + 3 * level + index), "up": ("output", 3 * level + index), "mid": ("middle", 0)}[path]


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_each_motion_module_runs_where_its_sd_block_lives_on(name):
    spec, _ = _addresses(name)
    homes = motion_module_homes(spec)
    assert len(homes) == 8 + 12 + 1
    assert homes == {place: official(classify_layout(spec)).get(teacher_block_of(place)) for place in homes}
    # every student block with a res block runs exactly one module
    res_blocks = {block.address for block, _ in unet_blocks(spec) if block.kind == "resnet"}
    placed = [home for home in homes.values() if home is not None]
    assert sorted(placed) == sorted(res_blocks)


@pytest.mark.parametrize("name", BK_CONFIGS)
def test_the_teacher_block_sequence_covers_the_teacher_once(name):
    spec, _ = _addresses(name)
    sequence = teacher_block_sequence(spec)
    assert [t.address for t in sequence] == [("input", n) for n in range(12)] + [("middle", 0)] + \
        [("output", n) for n in range(12)]
    assert {t.address: t.student for t in sequence if t.student} == official(classify_layout(spec))
