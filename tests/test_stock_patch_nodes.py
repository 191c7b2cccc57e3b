"""Stock ComfyUI nodes that patch U-Net blocks by SD's block numbers, on BK-Small and BK-Tiny
(the random pipelines): each changes the sample, without a warning, and the middle-block
guidance runs at the documented stand-in block (README: "Nodes that patch blocks by SD's
numbers"; FreeU and other patches that go by shape are in test_graph_mixing)."""

import logging

import graphs
import numpy as np
import pytest

pytestmark = pytest.mark.host
SIZE = 128
STAND_IN = {"sd1": ("small", ("output", 2)), "sd2": ("tiny", ("output", 0))}  # documented in bksdm/layout/addresses.py

# node -> (inputs, how it addresses the U-Net)
NODES = {
    "SelfAttentionGuidance": ({"scale": 0.5, "blur_sigma": 2.0}, "attn1 replace at ('middle', 0, 0)"),
    "PerturbedAttentionGuidance": ({"scale": 3.0}, "attn1 replace at ('middle', 0)"),
    "PatchModelAddDownscale": ({"block_number": 3, "downscale_factor": 2.0, "start_percent": 0.0,
                                "end_percent": 0.5, "downscale_after_skip": True, "downscale_method": "bicubic",
                                "upscale_method": "bicubic"}, "input/output block patches by block number"),
    "HyperTile": ({"tile_size": 64, "swap_size": 2, "max_depth": 0, "scale_depth": False},
                  "attn1 patch by latent size"),
}


@pytest.fixture(scope="module")
def plain(random_pipeline, host):
    return graphs.saved_image(host.run(graphs.txt2img(graphs.pipeline_loader(random_pipeline.path.name), size=SIZE)))


@pytest.mark.parametrize("node", NODES)
@pytest.mark.filterwarnings("error::RuntimeWarning")  # a NaN image would still "differ"
def test_stock_block_patch_node_changes_the_sample(node, random_pipeline, plain, host, caplog):
    inputs, _ = NODES[node]
    prompt = graphs.txt2img(graphs.pipeline_loader(random_pipeline.path.name), size=SIZE, patches=[(node, inputs)])
    with caplog.at_level(logging.INFO):
        image = graphs.saved_image(host.run(prompt))
    assert np.abs(image - plain).max() > 0
    assert "could not be applied" not in caplog.text
    layout, stand_in = STAND_IN[random_pipeline.family]
    if node in ("SelfAttentionGuidance", "PerturbedAttentionGuidance"):
        assert f"runs at BK-SDM {layout}'s block {stand_in}" in caplog.text
