"""The main job against a running ComfyUI server (--server), and the pack inside that server."""

import json
import urllib.request

import numpy as np
import pytest
from PIL import Image

from cli import txt2img

pytestmark = pytest.mark.host


def test_server_lists_the_pack_and_the_model_folders(comfy_server, random_pipeline):
    info = json.loads(urllib.request.urlopen(f"{comfy_server}/object_info", timeout=30).read())
    for node_id in ("BKSDMPipelineLoader", "BKSDMUNetLoader", "BKSDMCheckpointLoader"):
        assert info[node_id]["category"] == "loaders/BK-SDM"
    options = info["BKSDMPipelineLoader"]["input"]["required"]["model_name"][1]["options"]
    assert random_pipeline.path.name in options


def test_main_job_on_a_server_matches_the_in_process_run(comfy_server, random_pipeline, host, tmp_path):
    common = ["a lighthouse on a cliff", "--model", random_pipeline.path.name, "--seed", "3", "--steps", "2",
              "--width", "64", "--height", "64", "--sampler", "euler", "--scheduler", "normal"]
    assert txt2img.main([*common, "--server", comfy_server, "-o", str(tmp_path / "server.png")]) == 0
    assert txt2img.main([*common, "--comfyui", str(host.path), "-o", str(tmp_path / "local.png")]) == 0
    server, local = (np.asarray(Image.open(tmp_path / f"{n}.png")).astype(int) for n in ("server", "local"))
    assert server.shape == (64, 64, 3)
    assert np.abs(server - local).max() <= 1


def test_a_failing_prompt_is_reported_and_the_server_keeps_running(comfy_server, tmp_path):
    assert txt2img.main(["x", "--model", "no-such-model", "--server", comfy_server, "-o", str(tmp_path / "x.png")]) == 1
    assert urllib.request.urlopen(f"{comfy_server}/system_stats", timeout=10).status == 200
