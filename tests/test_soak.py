"""Load and unload, again and again, in one ComfyUI process; and ComfyUI's cache: reused when
nothing changed, dropped when the weights on disk are replaced."""

import gc
import os
import shutil

import graphs
import pytest

pytestmark = pytest.mark.host
CYCLES = 50
WARM_UP = 5


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_fifty_load_unload_cycles_do_not_grow_memory(sd1_pipeline, host):
    import comfy.model_management

    loader = host.nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"]
    samples = []
    for cycle in range(CYCLES):
        outputs = loader.execute(model_name=sd1_pipeline.path.name, weight_dtype="fp16", prediction="auto").args
        del outputs
        comfy.model_management.unload_all_models()
        gc.collect()
        if cycle >= WARM_UP - 1:
            samples.append(rss_bytes())
    growth = (samples[-1] - samples[0]) / samples[0]
    assert growth <= 0.05, f"RSS grew {growth:.1%} over {CYCLES - WARM_UP} cycles ({samples[0]} -> {samples[-1]} bytes)"


def _executed(host, prompt) -> set[str]:
    """Node ids that actually ran (not answered from ComfyUI's cache)."""
    host.run(prompt)
    cached = {n for event, data in host.executor.status_messages if event == "execution_cached"
              for n in data["nodes"]}
    return set(prompt) - cached


def test_cache_is_reused_and_dropped_when_the_weights_are_replaced(sd1_pipeline, host):
    prompt = graphs.txt2img(graphs.pipeline_loader(sd1_pipeline.path.name), size=64)
    _executed(host, prompt)
    assert "load" not in _executed(host, prompt)  # nothing changed: the loaded model is reused
    weights = sd1_pipeline.path / "unet" / "diffusion_pytorch_model.safetensors"
    replacement = weights.with_suffix(".new")
    shutil.copyfile(weights, replacement)
    os.replace(replacement, weights)  # replaced on disk, as a re-download would
    assert "load" in _executed(host, prompt)
    assert "load" not in _executed(host, prompt)
