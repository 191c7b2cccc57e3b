"""The teacher -> student map against the official tables (shared reference block-map.md)."""

import pytest
from factories import BK_CONFIGS, unet_config

from bksdm.errors import UnsupportedModelError
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.block_map import block_map, keeps_middle_residual, skip_alignment, skip_consumers, skip_producers
from bksdm.layout.controlnet import ControlRemap, skip_count
from bksdm.layout.variants import classify_layout

# The pack's ComfyUI-free core: the same on every ComfyUI release (.ci/run runs it once).
pytestmark = pytest.mark.newest_comfyui

STEM = {"time_embed": "time_embed", "input_blocks.0.0": "input_blocks.0.0", "out": "out"}


def official_map(layout: str) -> dict[str, str]:
    """Student LDM block -> teacher LDM block, transcribed from the official training script's map."""
    m = dict(STEM)
    if layout in ("base", "small"):
        m.update({"input_blocks.1.0": "input_blocks.1.0", "input_blocks.1.1": "input_blocks.1.1",
                  "input_blocks.2.0.op": "input_blocks.3.0.op", "input_blocks.3.0": "input_blocks.4.0",
                  "input_blocks.3.1": "input_blocks.4.1", "input_blocks.4.0.op": "input_blocks.6.0.op",
                  "input_blocks.5.0": "input_blocks.7.0", "input_blocks.5.1": "input_blocks.7.1",
                  "input_blocks.6.0.op": "input_blocks.9.0.op", "input_blocks.7.0": "input_blocks.10.0",
                  "output_blocks.0.0": "output_blocks.0.0", "output_blocks.1.0": "output_blocks.2.0",
                  "output_blocks.1.1.conv": "output_blocks.2.1.conv"})
        for k in (1, 2, 3):
            for sub in (0, 1):
                m[f"output_blocks.{2 * k}.{sub}"] = f"output_blocks.{3 * k}.{sub}"
                m[f"output_blocks.{2 * k + 1}.{sub}"] = f"output_blocks.{3 * k + 2}.{sub}"
            if k < 3:
                m[f"output_blocks.{2 * k + 1}.2.conv"] = f"output_blocks.{3 * k + 2}.2.conv"
        if layout == "base":
            m.update({f"middle_block.{i}": f"middle_block.{i}" for i in range(3)})
    else:  # tiny
        m.update({"input_blocks.1.0": "input_blocks.1.0", "input_blocks.1.1": "input_blocks.1.1",
                  "input_blocks.2.0.op": "input_blocks.3.0.op", "input_blocks.3.0": "input_blocks.4.0",
                  "input_blocks.3.1": "input_blocks.4.1", "input_blocks.4.0.op": "input_blocks.6.0.op",
                  "input_blocks.5.0": "input_blocks.7.0", "input_blocks.5.1": "input_blocks.7.1"})
        for j in (0, 1, 2):
            for sub in (0, 1):
                m[f"output_blocks.{2 * j}.{sub}"] = f"output_blocks.{3 * j + 3}.{sub}"
                m[f"output_blocks.{2 * j + 1}.{sub}"] = f"output_blocks.{3 * j + 5}.{sub}"
            if j < 2:
                m[f"output_blocks.{2 * j + 1}.2.conv"] = f"output_blocks.{3 * j + 5}.2.conv"
    return m


OFFICIAL_ALIGNMENTS = {  # teacher ControlNet residual per student skip
    ("base", "initialization"): [0, 1, 3, 4, 6, 7, 9, 10], ("base", "stage_output"): [0, 2, 3, 5, 6, 8, 9, 11],
    ("small", "initialization"): [0, 1, 3, 4, 6, 7, 9, 10], ("small", "stage_output"): [0, 2, 3, 5, 6, 8, 9, 11],
    ("tiny", "initialization"): [0, 1, 3, 4, 6, 7], ("tiny", "stage_output"): [0, 2, 3, 5, 6, 8],
}
STUDENTS = [n for n in BK_CONFIGS if n.startswith(("v1", "v2-base-512"))]


def _spec(name):
    return spec_from_diffusers_config(unet_config(name), name)


@pytest.mark.parametrize("name", STUDENTS)
def test_block_map_is_the_official_one(name):
    spec = _spec(name)
    assert block_map(spec).ldm == official_map(classify_layout(spec))


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("alignment", ["initialization", "stage_output"])
def test_skip_alignment_is_the_documented_one(name, alignment):
    spec = _spec(name)
    layout = classify_layout(spec)
    assert skip_alignment(spec, alignment) == OFFICIAL_ALIGNMENTS[layout, alignment]
    assert keeps_middle_residual(spec) == (layout != "tiny")
    assert skip_count(spec) == len(skip_producers(spec)) == len(skip_consumers(spec)) == (6 if layout == "tiny" else 8)


def skip_shapes(spec, size=64):
    """(channels, height) of each skip connection, walking the U-Net independently of bksdm."""
    c = spec.unet_config
    shapes, height = [(c["model_channels"], size)], size
    for level, mult in enumerate(c["channel_mult"]):
        shapes += [(mult * c["model_channels"], height)] * c["num_res_blocks"][level]
        if level < len(c["channel_mult"]) - 1:
            height //= 2
            shapes.append((mult * c["model_channels"], height))
    return shapes


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("alignment", ["initialization", "stage_output"])
def test_every_kept_residual_fits_its_skip_and_only_documented_ones_are_dropped(name, alignment):
    spec = _spec(name)
    remap = ControlRemap.for_spec(spec, alignment)
    teacher = skip_shapes(block_map(spec).teacher)
    residuals = [("residual", i, shape) for i, shape in enumerate(teacher)]  # stand-ins that carry their shape
    fitted = remap.fit({"output": residuals, "middle": ["mid"], "input": ["t2i"]})
    assert [r[2] for r in fitted["output"]] == skip_shapes(spec)
    dropped = set(range(len(teacher))) - {r[1] for r in fitted["output"]}
    assert sorted(dropped) == sorted(set(range(12)) - set(OFFICIAL_ALIGNMENTS[classify_layout(spec), alignment]))
    assert fitted["middle"] == (["mid"] if classify_layout(spec) != "tiny" else [])
    assert fitted["input"] == ["t2i"]


def test_residuals_already_sized_for_the_student_pass_through():
    remap = ControlRemap.for_spec(_spec("v1_bk_small"))
    native = {"output": list(range(8)), "middle": [1]}
    assert remap.fit(native) is native and not remap.is_teacher_control(native)


def test_custom_layouts_are_refused():
    config = dict(unet_config("v1_bk_small"), layers_per_block=3)
    with pytest.raises(UnsupportedModelError, match="custom layout"):
        block_map(spec_from_diffusers_config(config), "model")


@pytest.mark.parametrize("name", STUDENTS)
@pytest.mark.parametrize("alignment", ["initialization", "stage_output"])
def test_t2i_features_go_to_the_last_res_block_of_their_level_under_either_alignment(name, alignment):
    spec = _spec(name)
    # ComfyUI's SD T2I-Adapter entries, one per teacher input block, the last block's first.
    features = [None, None, "level0", None, None, "level1", None, None, "level2", None, None, "level3"]
    fitted = ControlRemap.for_spec(spec, alignment).fit({"input": features[::-1]})["input"][::-1]
    levels = len(spec.unet_config["channel_mult"])
    # Student input blocks: conv_in, then per level one res block and (but for the last) a downsampler.
    blocks = [x for level in range(levels) for x in (f"level{level}", None)][:2 * levels - 1]
    assert fitted == [None, *blocks]


def test_teacher_control_on_a_custom_layout_is_refused_by_name():
    config = dict(unet_config("v1_bk_small"), layers_per_block=3)
    remap = ControlRemap.for_spec(spec_from_diffusers_config(config))
    with pytest.raises(UnsupportedModelError, match="published BK-SDM layouts"):
        remap.fit({"output": list(range(12)), "middle": [0]})
