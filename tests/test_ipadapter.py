"""cubiq's ComfyUI_IPAdapter_plus (pinned, loaded beside the pack as a user's custom_nodes would
hold it) on BK-SDM: its patches address SD-1.5's block numbers, and every student
cross-attention block runs the IP weights of the teacher block it was initialised from."""

import graphs
import numpy as np
import pytest
import torch
from factories import IP_ADAPTER_SD15_WIDTHS, random_ip_adapter_sd15
from safetensors.torch import save_file
from test_addresses import official
from test_teacher_addressing import Where, attention_modules, bk_model, run_unet

pytestmark = pytest.mark.host
PACK = "ComfyUI_IPAdapter_plus"
# IPAdapterPlus.py numbers SD-1.5's cross-attention blocks in this order, weights 1, 3, ..., 29;
# its middle entry (31) is registered at ("middle", 1), which ComfyUI never calls on any U-Net.
IP_ORDER = [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("output", i) for i in range(3, 12)]


@pytest.fixture(scope="module")
def ipadapter(host, thirdparty, tmp_path_factory):
    """The pack's nodes, a random ip-adapter_sd15-shaped file in an ipadapter folder, and ViT-H-sized embeds."""
    import folder_paths

    thirdparty(PACK)
    root = tmp_path_factory.mktemp("ipadapter")
    folder_paths.add_model_folder_path("ipadapter", str(root))
    weights = random_ip_adapter_sd15()
    save_file(weights, str(root / "ip-adapter_sd15-random.safetensors"))
    inputs = folder_paths.get_input_directory()
    torch.save(torch.randn(1, 1024, generator=torch.Generator().manual_seed(3)), f"{inputs}/random-image.ipadpt")
    torch.save(torch.zeros(1, 1024), f"{inputs}/no-image.ipadpt")  # the negative: with it no CLIP vision is needed
    return weights


def apply_embeds(host, model):
    nodes = host.nodes.NODE_CLASS_MAPPINGS
    (ipa,) = nodes["IPAdapterModelLoader"]().load_ipadapter_model("ip-adapter_sd15-random.safetensors")
    (embeds,) = nodes["IPAdapterLoadEmbeds"]().load("random-image.ipadpt")
    (negative,) = nodes["IPAdapterLoadEmbeds"]().load("no-image.ipadpt")
    outputs = nodes["IPAdapterEmbeds"]().apply_ipadapter(model, ipa, embeds, 1.0, "linear", 0.0, 1.0,
                                                          neg_embed=negative, embeds_scaling="V only")
    return outputs[0]  # its RETURN_TYPES name one output, MODEL; it returns more


@pytest.mark.parametrize("name", ["v1_bk_base", "v1_bk_small", "v1_bk_tiny"])
def test_each_block_runs_the_ip_weights_of_its_teacher_block(name, ipadapter, host, pack):
    model, _ = bk_model(pack, name)
    layout = official({"v1_bk_base": "base", "v1_bk_small": "small", "v1_bk_tiny": "tiny"}[name])
    patched = apply_embeds(host, model)
    replace = patched.model_options["transformer_options"]["patches_replace"]["attn2"]
    to_kvs = next(iter(replace.values())).kwargs[0]["ipadapter"].ip_layers.to_kvs
    where, ran = Where(model.model.diffusion_model), []
    hooks = [module.register_forward_hook(lambda m, args, out, key=key: ran.append((where.block, key, m.weight)))
             for key, module in to_kvs.items()]
    run_unet(patched, options={"cond_or_uncond": [0]})
    where.remove()
    for hook in hooks:
        hook.remove()
    numbers = {teacher: 2 * n + 1 for n, teacher in enumerate(IP_ORDER)}
    student_cross = {a for a, t in attention_modules(model.model.diffusion_model) if t.attn2 is not None}
    expected = {student: teacher for teacher, student in layout.items()
                if student in student_cross and teacher in numbers}
    assert {block for block, _, _ in ran} == set(expected)  # the middle block's entry never runs, as on SD-1.5
    for block, key, weight in ran:
        n = numbers[expected[block]]
        assert key in (f"{n}_to_k_ip", f"{n}_to_v_ip")  # the weights of the teacher block it came from...
        file_key = f"ip_adapter.{n}.{key.split('_', 1)[1]}.weight"
        assert torch.equal(weight, ipadapter[file_key])  # ...by value...
        assert weight.shape[0] == IP_ADAPTER_SD15_WIDTHS[(n - 1) // 2]  # ...at its own width, never reshaped
    assert {(block, key) for block, key, _ in ran} == {  # both projections at every block
        (block, f"{numbers[teacher]}_{kind}") for block, teacher in expected.items() for kind in ("to_k_ip", "to_v_ip")}


def test_ipadapter_changes_the_sample(ipadapter, sd1_pipeline, host):
    prompt = graphs.txt2img(graphs.pipeline_loader(sd1_pipeline.path.name), size=128)
    plain = graphs.saved_image(host.run(prompt))
    prompt["ipa"] = {"class_type": "IPAdapterModelLoader",
                     "inputs": {"ipadapter_file": "ip-adapter_sd15-random.safetensors"}}
    prompt["embeds"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": "random-image.ipadpt"}}
    prompt["negative"] = {"class_type": "IPAdapterLoadEmbeds", "inputs": {"embeds": "no-image.ipadpt"}}
    prompt["apply"] = {"class_type": "IPAdapterEmbeds", "inputs": {
        "model": ["load", 0], "ipadapter": ["ipa", 0], "pos_embed": ["embeds", 0], "neg_embed": ["negative", 0],
        "weight": 1.0,
        "weight_type": "linear", "start_at": 0.0, "end_at": 1.0, "embeds_scaling": "V only"}}
    prompt["sample"]["inputs"]["model"] = ["apply", 0]
    assert np.abs(graphs.saved_image(host.run(prompt)) - plain).max() > 0
