"""SD ControlNets on BK-SDM: through the adapter, ComfyUI applies the ControlNet's residuals
exactly as diffusers applies the documented selection; without it, the user is told why."""

import logging

import graphs
import numpy as np
import pytest
import torch
from factories import random_controlnet, random_unet, unet_config

from bksdm.block_map import keeps_middle_residual, skip_alignment
from bksdm.components import UNetWeights
from bksdm.unet_config import spec_from_diffusers_config
from bksdm.unet_keys import convert_diffusers_unet

pytestmark = pytest.mark.host
TOLERANCE = 1e-4


CASES = [("v1_bk_base", "stage_output"), ("v1_bk_small", "stage_output"), ("v1_bk_small", "initialization"),
         ("v1_bk_tiny", "stage_output"), ("v1_bk_tiny", "initialization"), ("v2-base-512_bk_tiny", "stage_output")]


@pytest.fixture(scope="module")
def controlnets():
    """One random SD ControlNet per family, built on first use and shared by this module's tests."""
    built = {}

    def get(family):
        if family not in built:
            built[family] = random_controlnet(family, seed=5)
        return built[family]

    return get


@pytest.mark.parametrize(("name", "alignment"), CASES)
@torch.no_grad()
def test_adapted_control_matches_diffusers_on_the_documented_residuals(name, alignment, controlnets, host, pack):
    spec = spec_from_diffusers_config(unet_config(name), name)
    teacher_controlnet = controlnets(spec.family.name)
    from bksdm_pack.bksdm.controlnet import ControlRemap
    from bksdm_pack.nodes.control_residuals import set_control_residuals

    reference = random_unet(unet_config(name), seed=9)
    state = convert_diffusers_unet(reference.state_dict(), spec.unet_config, name, name)
    model = pack.nodes.build.build_model(UNetWeights(spec, state, name), torch.float32, "epsilon")
    set_control_residuals(model, ControlRemap.for_spec(spec, alignment, name), fit=True, spec=spec)

    g = torch.Generator().manual_seed(4)
    x, context = torch.randn(1, 4, 16, 16, generator=g), torch.randn(1, 77, spec.family.context_dim, generator=g)
    hint = torch.rand(1, 3, 128, 128, generator=g)
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0]))
    scaled = x / (sigma**2 + 1).sqrt()
    down, mid = teacher_controlnet(scaled, torch.tensor([500]), encoder_hidden_states=context, controlnet_cond=hint,
                                   return_dict=False)
    assert len(down) == 12
    chosen = [down[i] for i in skip_alignment(spec, alignment)]
    # Without a level of the middle residual's size (Tiny) it is dropped: zero at the bottom of the U-Net.
    bottom = mid if keeps_middle_residual(spec) else torch.zeros_like(chosen[-1])
    expected = reference(scaled, torch.tensor([500]), encoder_hidden_states=context,
                         down_block_additional_residuals=tuple(chosen), mid_block_additional_residual=bottom).sample
    without = reference(scaled, torch.tensor([500]), encoder_hidden_states=context).sample
    options = dict(model.model_options["transformer_options"], wrappers=model.wrappers)  # as the sampler passes them
    denoised = model.model.apply_model(x, sigma, c_crossattn=context,
                                       control={"output": list(down), "middle": [mid]}, transformer_options=options)
    eps = (x - denoised) / sigma
    assert (expected - without).abs().max() > 0.1  # the control does change the prediction
    assert (eps - expected).abs().max().item() < TOLERANCE


def _graph(model_name, controlnet_name=None, adapter=False):
    """txt2img at 128 px, optionally through the adapter and with the stock Apply ControlNet node."""
    patches = [("BKSDMControlNetAdapter", {"alignment": "stage_output"})] if adapter else []
    prompt = graphs.txt2img(graphs.pipeline_loader(model_name), size=128, patches=patches, prefix="cn")
    if controlnet_name:
        prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": 128, "height": 128, "batch_size": 1,
                                                                 "color": 0xFFFFFF}}
        prompt["cnload"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": controlnet_name}}
        prompt["apply"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": ["pos", 0], "negative": ["neg", 0], "control_net": ["cnload", 0], "image": ["hint", 0],
            "strength": 1.0, "start_percent": 0.0, "end_percent": 1.0}}
        prompt["sample"]["inputs"]["positive"] = ["apply", 0]
        prompt["sample"]["inputs"]["negative"] = ["apply", 1]
    return prompt


@pytest.fixture(scope="module")
def controlnet_file(random_pipeline, controlnets, tmp_path_factory, host):
    """A random ControlNet of the pipeline's family, in a ComfyUI controlnet folder."""
    import folder_paths
    from safetensors.torch import save_file

    family = random_pipeline.family
    root = tmp_path_factory.mktemp("controlnet")
    folder_paths.add_model_folder_path("controlnet", str(root))
    name = f"sd-{family}-random.safetensors"
    save_file({k: v.contiguous() for k, v in controlnets(family).state_dict().items()}, str(root / name))
    return name


def test_stock_apply_controlnet_nodes_work_through_the_adapter(controlnet_file, random_pipeline, host, caplog):
    from cli.comfy_host import HostError

    name, model = controlnet_file, random_pipeline.path.name
    with pytest.raises(HostError, match="BK-SDM ControlNet Adapter"):
        host.run(_graph(model, name, adapter=False))
    with caplog.at_level(logging.WARNING):
        controlled = graphs.saved_image(host.run(_graph(model, name, adapter=True)))
    assert "control could not be applied" not in caplog.text
    plain = graphs.saved_image(host.run(_graph(model, None, adapter=True)))
    assert np.abs(controlled - plain).max() > 0
