"""SD ControlNets and T2I-Adapters on BK-SDM through the stock nodes: ComfyUI applies the
ControlNet's residuals exactly as diffusers applies the documented selection, alone or chained."""

import logging

import graphs
import numpy as np
import pytest
import torch
from factories import random_controlnet, random_unet, unet_config

from bksdm.files.components import UNetWeights
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.block_map import keeps_middle_residual, skip_alignment
from bksdm.layout.unet_keys import convert_diffusers_unet

pytestmark = pytest.mark.host
TOLERANCE = 1e-4


CASES = [("v1_bk_base", "stage_output"), ("v1_bk_small", "stage_output"), ("v1_bk_small", "initialization"),
         ("v1_bk_tiny", "stage_output"), ("v1_bk_tiny", "initialization"), ("v2-base-512_bk_base", "stage_output"),
         ("v2-base-512_bk_small", "initialization"), ("v2-base-512_bk_tiny", "stage_output")]


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
    set_teacher_addressing = pack("nodes.teacher_addressing").set_teacher_addressing

    reference = random_unet(unet_config(name), seed=9)
    state = convert_diffusers_unet(reference.state_dict(), spec, name, name)
    model = pack("nodes.build").build_model(UNetWeights(spec, state, name), torch.float32, "epsilon")
    set_teacher_addressing(model, spec, alignment)

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


def _graph(model_name, controls=(), alignment=None, size=128, patches=()):
    """txt2img, with each (file, strength, start, end) control applied by the stock Apply ControlNet node,
    chained in order; optionally through the alignment node."""
    patches = [*patches, *([("BKSDMControlNetAdapter", {"alignment": alignment})] if alignment else [])]
    prompt = graphs.txt2img(graphs.pipeline_loader(model_name), size=size, patches=patches, prefix="cn")
    prompt["hint"] = {"class_type": "EmptyImage", "inputs": {"width": size, "height": size, "batch_size": 1,
                                                             "color": 0xFFFFFF}}
    positive, negative = ["pos", 0], ["neg", 0]
    for i, (name, strength, start, end) in enumerate(controls):
        prompt[f"load{i}"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": name}}
        prompt[f"apply{i}"] = {"class_type": "ControlNetApplyAdvanced", "inputs": {
            "positive": positive, "negative": negative, "control_net": [f"load{i}", 0], "image": ["hint", 0],
            "strength": strength, "start_percent": start, "end_percent": end}}
        positive, negative = [f"apply{i}", 0], [f"apply{i}", 1]
    prompt["sample"]["inputs"]["positive"] = positive
    prompt["sample"]["inputs"]["negative"] = negative
    return prompt


@pytest.fixture(scope="module")
def control_files(random_pipeline, controlnets, model_folder, host):
    """Two random ControlNets and a random T2I-Adapter of the pipeline's family, in a ComfyUI controlnet folder."""
    import folder_paths
    from factories import random_t2i_adapter
    from safetensors.torch import save_file

    family = random_pipeline.family
    with model_folder("controlnet") as root:
        folder_paths.add_model_folder_path("controlnet", str(root))
        models = {f"sd-{family}-controlnet-a.safetensors": controlnets(family),
                  f"sd-{family}-controlnet-b.safetensors": random_controlnet(family, seed=6),
                  f"sd-{family}-t2i-adapter.safetensors": random_t2i_adapter(seed=7)}
        for name, module in models.items():
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(root / name))
        yield list(models)


def test_stock_control_nodes_work_without_an_extra_node(control_files, random_pipeline, host, caplog):
    model = random_pipeline.path.name
    controlnet, _, t2i = control_files
    plain = graphs.saved_image(host.run(_graph(model)))
    with caplog.at_level(logging.WARNING):
        images = {(name, alignment): graphs.saved_image(host.run(_graph(model, [(name, 1.0, 0.0, 1.0)], alignment)))
                  for name in (controlnet, t2i) for alignment in (None, "stage_output", "initialization")}
    assert "control could not be applied" not in caplog.text
    for name in (controlnet, t2i):
        assert np.abs(images[name, None] - plain).max() > 0  # the control does something...
        assert np.array_equal(images[name, None], images[name, "stage_output"])  # ...the documented default
    assert not np.array_equal(images[controlnet, None], images[controlnet, "initialization"])
    # T2I-Adapter features follow the stage outputs under either alignment.
    assert np.array_equal(images[t2i, None], images[t2i, "initialization"])


def test_chained_controls_and_a_transferred_lora_all_apply(control_files, random_pipeline, host, caplog,
                                                          tmp_path_factory):
    import folder_paths
    from safetensors.torch import save_file
    from test_lora_transfer import synthetic_teacher_lora

    from bksdm.files.unet_config import spec_from_config_file
    from bksdm.layout.block_map import teacher_spec

    root = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(root))
    lora = f"sd-{random_pipeline.family}-lora.safetensors"
    teacher = teacher_spec(spec_from_config_file(random_pipeline.path / "unet" / "config.json"))
    weights, _ = synthetic_teacher_lora(teacher, seed=8)
    save_file({k: v for k, v in weights.items() if not k.startswith("lora_te")}, str(root / lora))
    transfer = [("BKSDMLoraLoader", {"lora_name": lora, "strength_model": 1.0, "strength_clip": 1.0})]
    model = random_pipeline.path.name
    a, b, t2i = control_files
    chain = [(a, 0.8, 0.0, 1.0), (b, 1.0, 0.2, 0.9), (t2i, 0.7, 0.0, 0.8)]
    with caplog.at_level(logging.WARNING):
        chained = graphs.saved_image(host.run(_graph(model, chain, patches=transfer)))
        singles = [graphs.saved_image(host.run(_graph(model, [control], patches=transfer))) for control in chain]
        without_lora = graphs.saved_image(host.run(_graph(model, chain)))
    assert "control could not be applied" not in caplog.text and "lora key not loaded" not in caplog.text
    for single in [*singles, without_lora]:
        assert np.abs(chained - single).max() > 0


def test_a_control_lora_is_refused_by_name(control_files, random_pipeline, host, tmp_path_factory):
    import folder_paths
    from safetensors.torch import save_file

    from cli.comfy_host import HostError

    root = tmp_path_factory.mktemp("control-lora")
    folder_paths.add_model_folder_path("controlnet", str(root))
    # ComfyUI takes any file with this marker for a Control-LoRA and builds it only when sampling.
    save_file({"lora_controlnet": torch.zeros(1)}, str(root / "control-lora-random.safetensors"))
    with pytest.raises(HostError, match=r"(?s)Control-LoRA.*full SD ControlNet"):
        host.run(_graph(random_pipeline.path.name, [("control-lora-random.safetensors", 1.0, 0.0, 1.0)]))
