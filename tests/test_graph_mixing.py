"""BK-SDM mixed with the rest of a real ComfyUI graph: LoRA, embeddings, merging, model
patches, tiled decode, and export through the stock Save Checkpoint node."""

import logging
import os
import shutil

import graphs
import numpy as np
import pytest
import torch
from factories import unet_config, write_unet_folder
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_lora_transfer import synthetic_teacher_lora

from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.unet_keys import diffusers_to_ldm

pytestmark = pytest.mark.host
SIZE = 128  # patches such as FreeU normalise over the bottom level's pixels: keep it above 1x1


def _unet_name(random_pipeline):
    return {"sd1": "v1_bk_small", "sd2": "v2-base-512_bk_tiny"}[random_pipeline.family]


@pytest.fixture(scope="module")
def second_unet(random_pipeline, diffusers_root):
    """Another U-Net of the pipeline's layout (other weights), as a bare U-Net folder."""
    name = f"unet-{random_pipeline.family}-second"
    write_unet_folder(diffusers_root / name, _unet_name(random_pipeline), seed=200)
    yield name
    shutil.rmtree(diffusers_root / name)  # gigabytes, in the session's model folder


def _run(host, prompt):
    return graphs.saved_image(host.run(prompt))


@pytest.fixture(scope="module")
def baseline(random_pipeline, host):
    return _run(host, graphs.txt2img(graphs.pipeline_loader(random_pipeline.path.name), size=SIZE))


PATCHES = {  # node -> inputs, and whether it must change the image
    "FreeU_V2": ({"b1": 1.3, "b2": 1.4, "s1": 0.9, "s2": 0.2}, True),
    "ModelSamplingDiscrete": ({"sampling": "v_prediction", "zsnr": False}, True),
    "RescaleCFG": ({"multiplier": 0.7}, False),
}


@pytest.mark.parametrize("node", sorted(PATCHES))
def test_model_patch_nodes_run_on_bk_sdm(node, random_pipeline, baseline, host):
    inputs, changes = PATCHES[node]
    loader = graphs.pipeline_loader(random_pipeline.path.name)
    image = _run(host, graphs.txt2img(loader, size=SIZE, patches=[(node, inputs)]))
    assert image.shape == baseline.shape
    if changes:
        assert np.abs(image - baseline).max() > 0


@pytest.fixture
def base_unet(diffusers_root):
    """A BK-SDM Base U-Net as a bare U-Net folder."""
    folder = diffusers_root / "unet-sd1-base"
    write_unet_folder(folder, "v1_bk_base", seed=300)
    yield folder.name
    shutil.rmtree(folder)  # gigabytes, in the session's model folder


def test_attention_guidance_works_on_bk_base_with_the_unet_only_loader(sd1_pipeline, base_unet, host):
    # SAG blurs by the middle block's attention map, which needs a few pixels at that level.
    prompt = graphs.txt2img(graphs.pipeline_loader(sd1_pipeline.path.name), size=256)
    prompt["unet"] = {"class_type": "BKSDMUNetLoader",
                      "inputs": {"model_name": base_unet, "weight_dtype": "fp32", "prediction": "auto"}}
    prompt["sample"]["inputs"]["model"] = ["unet", 0]
    plain = _run(host, prompt)
    for node, inputs in (("SelfAttentionGuidance", {"scale": 0.5, "blur_sigma": 2.0}),
                         ("PerturbedAttentionGuidance", {"scale": 3.0})):
        prompt["guide"] = {"class_type": node, "inputs": {"model": ["unet", 0], **inputs}}
        prompt["sample"]["inputs"]["model"] = ["guide", 0]
        assert np.abs(_run(host, prompt) - plain).max() > 0, node


def test_merging_two_bk_sdm_models_of_the_same_layout(random_pipeline, second_unet, diffusers_root, host):
    loader = graphs.pipeline_loader(random_pipeline.path.name)
    other = {"model_name": second_unet, "weight_dtype": "fp32", "prediction": "auto"}
    nodes = host.nodes.NODE_CLASS_MAPPINGS
    first = nodes["BKSDMPipelineLoader"].execute(**loader["inputs"]).args[0]
    second = nodes["BKSDMUNetLoader"].execute(**other).args[0]
    merged, = nodes["ModelMergeSimple"]().merge(first, second, 0.5)
    key, diffusers_key = "input_blocks.1.1.proj_in.weight", "down_blocks.0.attentions.0.proj_in.weight"
    expected = 0.5 * random_pipeline.unet_state_dict()[diffusers_key] + \
        0.5 * load_file(diffusers_root / second_unet / "diffusion_pytorch_model.safetensors")[diffusers_key]
    merged.patch_model()  # the merge is a patch on model1's weights: apply it, read, restore
    try:
        assert torch.allclose(merged.model.diffusion_model.state_dict()[key], expected, atol=1e-6)
    finally:
        merged.unpatch_model()
    del first, second, merged
    graphs.release_memory(host)

    prompt = graphs.txt2img(loader, size=SIZE)  # and in a real graph
    prompt["other"] = {"class_type": "BKSDMUNetLoader", "inputs": other}
    prompt["merge"] = {"class_type": "ModelMergeSimple",
                       "inputs": {"model1": ["load", 0], "model2": ["other", 0], "ratio": 0.5}}
    prompt["sample"]["inputs"]["model"] = ["merge", 0]
    host.run(prompt)


def test_tiled_vae_decode(random_pipeline, baseline, host):
    prompt = graphs.txt2img(graphs.pipeline_loader(random_pipeline.path.name), size=SIZE)
    prompt["decode"] = {"class_type": "VAEDecodeTiled", "inputs": {
        "samples": ["sample", 0], "vae": ["load", 2], "tile_size": 512, "overlap": 64, "temporal_size": 64,
        "temporal_overlap": 8}}
    assert np.abs(_run(host, prompt) - baseline).max() <= 2  # one tile covers the image: the same decode


@pytest.fixture(scope="module")
def loras(tmp_path_factory, host):
    import folder_paths

    root = tmp_path_factory.mktemp("loras")
    folder_paths.add_model_folder_path("loras", str(root))
    return root


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a NaN image would still "differ"
def test_sd_lora_through_the_transfer_node(random_pipeline, loras, baseline, host, caplog):
    family = random_pipeline.family
    student = spec_from_diffusers_config(unet_config(_unet_name(random_pipeline)))
    from bksdm.layout.block_map import teacher_spec

    lora, _ = synthetic_teacher_lora(teacher_spec(student), seed=7)
    lora = {k: v for k, v in lora.items() if not k.startswith("lora_te")}
    save_file(lora, str(loras / f"teacher-{family}.safetensors"))
    prompt = graphs.txt2img(graphs.pipeline_loader(random_pipeline.path.name), size=SIZE)
    prompt["lora"] = {"class_type": "BKSDMLoraLoader", "inputs": {
        "model": ["load", 0], "clip": ["load", 1], "lora_name": f"teacher-{family}.safetensors",
        "strength_model": 1.0, "strength_clip": 1.0}}
    prompt["sample"]["inputs"]["model"] = ["lora", 0]
    with caplog.at_level(logging.INFO):
        image = _run(host, prompt)
    assert "lora key not loaded" not in caplog.text
    assert "LoRA transfer to BK-SDM" in caplog.text
    assert np.abs(image - baseline).max() > 0


def test_textual_inversion_embeddings_work_with_the_loaders_clip(random_pipeline, tmp_path_factory, host):
    """An embedding holding the token vector of 'cat' encodes exactly like the word."""
    import folder_paths

    root = tmp_path_factory.mktemp("embeddings")
    folder_paths.add_model_folder_path("embeddings", str(root))
    te = random_pipeline.text_encoder_state_dict()
    cat_token = 2368  # 'cat</w>' in CLIP's BPE vocabulary
    vector = te["text_model.embeddings.token_embedding.weight"][cat_token:cat_token + 1].clone()
    name = f"fakecat-{random_pipeline.family}"  # both families' folders stay registered: names must differ
    save_file({"emb_params": vector}, str(root / f"{name}.safetensors"))
    clip = host.nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"].execute(
        model_name=random_pipeline.path.name, weight_dtype="fp32", prediction="epsilon").args[1]
    tokens = clip.tokenize("a photo of a cat")
    assert cat_token in [t for t, _ in next(iter(tokens.values()))[0]]
    with_embedding = clip.encode_from_tokens(clip.tokenize(f"a photo of a embedding:{name}"))
    assert torch.equal(with_embedding, clip.encode_from_tokens(tokens))


def test_stock_save_checkpoint_round_trips_through_the_single_file_loader(random_pipeline, host):
    import folder_paths

    prompt = {"load": graphs.pipeline_loader(random_pipeline.path.name),
              "save": {"class_type": "CheckpointSave", "inputs": {
                  "model": ["load", 0], "clip": ["load", 1], "vae": ["load", 2],
                  "filename_prefix": f"checkpoints/roundtrip-{random_pipeline.family}"}}}
    host.run(prompt)
    saved = folder_paths.get_output_directory() + "/checkpoints"
    folder_paths.add_model_folder_path("checkpoints", saved)
    name = f"roundtrip-{random_pipeline.family}_00001_.safetensors"
    nodes = host.nodes.NODE_CLASS_MAPPINGS
    original = nodes["BKSDMPipelineLoader"].execute(**prompt["load"]["inputs"]).args
    loaded = nodes["BKSDMCheckpointLoader"].execute(ckpt_name=name, weight_dtype="fp32", prediction="auto").args
    for a, b in ((loaded[0].model.diffusion_model, original[0].model.diffusion_model),
                 (loaded[2].first_stage_model, original[2].first_stage_model)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    tokens = original[1].tokenize("a lighthouse")
    assert torch.equal(loaded[1].encode_from_tokens(tokens), original[1].encode_from_tokens(tokens))
    os.remove(f"{saved}/{name}")  # gigabytes


def test_convert_node_and_command_write_a_loadable_checkpoint(random_pipeline, host, scratch):
    import folder_paths

    from cli import convert

    tmp_path = scratch
    root = tmp_path / "checkpoints"
    root.mkdir()
    folder_paths.add_model_folder_path("checkpoints", str(root), is_default=True)
    name = f"converted-{random_pipeline.family}.safetensors"
    host.run({"convert": {"class_type": "BKSDMConvertToCheckpoint", "inputs": {
        "model_name": random_pipeline.path.name, "filename": name, "precision": "fp16"}}})
    graphs.release_memory(host)
    by_command = tmp_path / "by-command.safetensors"
    assert convert.main([str(random_pipeline.path), str(by_command), "--precision", "fp16"]) == 0
    spec = spec_from_diffusers_config(unet_config(_unet_name(random_pipeline)))
    mapping, original = diffusers_to_ldm(spec), random_pipeline.unet_state_dict()
    keys = []
    for path in (root / name, by_command):  # read tensor by tensor: these files are gigabytes
        with safe_open(str(path), framework="pt") as f:
            keys.append(set(f.keys()))
            assert {k for k in keys[-1] if k.startswith("model.diffusion_model.")} == \
                {f"model.diffusion_model.{ldm}" for ldm in mapping.values()}
            assert all(torch.equal(f.get_tensor(f"model.diffusion_model.{ldm}"), original[d].half())
                       for d, ldm in mapping.items())
    assert keys[0] == keys[1]
    before = by_command.read_bytes()
    assert convert.main([str(random_pipeline.path), str(by_command)]) == 1  # never overwrites
    assert by_command.read_bytes() == before
