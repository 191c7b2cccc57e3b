"""The three loader nodes in a real ComfyUI: what they return, which files they read,
and single-file checkpoints (contiguous and gapped) giving the same model as the folder."""

import pytest
import torch
from factories import gapped_checkpoint
from safetensors.torch import load_file, save_file

pytestmark = pytest.mark.host


def node(host, node_id):
    return host.nodes.NODE_CLASS_MAPPINGS[node_id]


def outputs(host, node_id, **inputs):
    return node(host, node_id).execute(**inputs).args


@pytest.fixture(scope="module")
def loaded(random_pipeline, host):
    name = random_pipeline.path.name
    return outputs(host, "BKSDMPipelineLoader", model_name=name, weight_dtype="fp32", prediction="auto")


def test_nodes_are_registered_with_help(host):
    for node_id in ("BKSDMPipelineLoader", "BKSDMUNetLoader", "BKSDMCheckpointLoader"):
        info = node(host, node_id).GET_NODE_INFO_V1()
        assert info["category"] == "loaders/BK-SDM" and info["description"]
        assert all(spec[1].get("tooltip") for spec in info["input"]["required"].values())


def test_folder_list_offers_the_pipelines(random_pipeline, host):
    options = node(host, "BKSDMPipelineLoader").GET_NODE_INFO_V1()["input"]["required"]["model_name"][1]["options"]
    assert random_pipeline.path.name in options


def test_pipeline_loader_returns_stock_comfyui_objects(loaded, random_pipeline):
    import comfy.model_patcher
    import comfy.sd
    from comfy.ldm.modules.diffusionmodules.openaimodel import UNetModel

    model, clip, vae = loaded
    assert type(model) is getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)
    assert type(model.model.diffusion_model) is UNetModel
    assert type(clip) is comfy.sd.CLIP and type(vae) is comfy.sd.VAE
    assert type(model.model.model_config).__name__ == {"sd1": "SD15", "sd2": "SD20"}[random_pipeline.family]


def test_model_is_built_by_the_patcher_comfyui_names_now(random_pipeline, host, monkeypatch):
    """main.py rebinds comfy.model_patcher.CoreModelPatcher (to the DynamicVRAM patcher on CUDA);
    the loaders build whatever it names at load time (0.3.64, which has no such name: the plain
    ModelPatcher), the MODEL can be built again from its files where ComfyUI asks for that
    (cached_patcher_init), and a KSampler graph samples with it."""
    import comfy.model_management
    import comfy.model_patcher
    from graphs import pipeline_loader, saved_image, txt2img

    expected = comfy.model_patcher.ModelPatcher
    if hasattr(comfy.model_patcher, "CoreModelPatcher"):
        expected = type("RecordingPatcher", (comfy.model_patcher.ModelPatcher,), {})
        monkeypatch.setattr(comfy.model_patcher, "CoreModelPatcher", expected)
    for node_id in ("BKSDMUNetLoader", "BKSDMPipelineLoader"):
        model = outputs(host, node_id, model_name=random_pipeline.path.name, weight_dtype="fp32",
                        prediction="auto")[0]
        assert type(model) is expected, node_id
        if hasattr(model, "cached_patcher_init"):
            factory, args = model.cached_patcher_init
            again = factory(*args, disable_dynamic=True)
            assert type(again) is comfy.model_patcher.ModelPatcher
            a, b = again.model.diffusion_model.state_dict(), model.model.diffusion_model.state_dict()
            assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    image = saved_image(host.run(txt2img(pipeline_loader(random_pipeline.path.name), prefix="rebound")))
    assert image.std() > 0
    assert any(type(loaded.model) is expected for loaded in comfy.model_management.current_loaded_models)


def test_weight_dtype_picks_matching_files(random_pipeline, host):
    name = random_pipeline.path.name
    fp16_file = load_file(random_pipeline.path / "unet" / "diffusion_pytorch_model.fp16.safetensors")
    fp32_file = load_file(random_pipeline.path / "unet" / "diffusion_pytorch_model.safetensors")
    half, = outputs(host, "BKSDMUNetLoader", model_name=name, weight_dtype="fp16", prediction="auto")
    full, = outputs(host, "BKSDMUNetLoader", model_name=name, weight_dtype="fp32", prediction="auto")
    key, ldm = "conv_in.weight", "input_blocks.0.0.weight"
    assert torch.equal(half.model.diffusion_model.state_dict()[ldm], fp16_file[key])
    assert torch.equal(full.model.diffusion_model.state_dict()[ldm], fp32_file[key])


def test_unet_loader_gives_the_pipelines_unet(loaded, random_pipeline, host):
    unet, = outputs(host, "BKSDMUNetLoader", model_name=random_pipeline.path.name, weight_dtype="fp32",
                    prediction="auto")
    a, b = unet.model.diffusion_model.state_dict(), loaded[0].model.diffusion_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture(scope="module")
def checkpoints(loaded, random_pipeline, model_folder, host, pack):
    """The folder model saved by ComfyUI's own Save Checkpoint code, and the same file with the
    gapped numbering of diffusers' conversion script."""
    import comfy.sd
    import folder_paths

    with model_folder("checkpoints") as root:
        folder_paths.add_model_folder_path("checkpoints", str(root))
        family = random_pipeline.family
        contiguous = root / f"{family}-contiguous.safetensors"
        comfy.sd.save_checkpoint(str(contiguous), *loaded)
        spec = pack("nodes.build").spec_of(loaded[0])
        save_file(gapped_checkpoint(load_file(contiguous), spec), str(root / f"{family}-gapped.safetensors"))
        yield contiguous.name, f"{family}-gapped.safetensors"


@pytest.mark.parametrize("which", [0, 1], ids=["contiguous", "gapped"])
@torch.no_grad()
def test_single_file_loader_gives_the_folder_model(which, checkpoints, loaded, host):
    model, clip, vae = outputs(host, "BKSDMCheckpointLoader", ckpt_name=checkpoints[which], weight_dtype="fp32",
                               prediction="auto")
    a, b = model.model.diffusion_model.state_dict(), loaded[0].model.diffusion_model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    if hasattr(model, "cached_patcher_init"):  # 0.33: ComfyUI can build the MODEL again from the file
        factory, args = model.cached_patcher_init
        c = factory(*args, disable_dynamic=True).model.diffusion_model.state_dict()
        assert c.keys() == b.keys() and all(torch.equal(c[k], b[k]) for k in c)
    tokens = clip.tokenize("a lighthouse")
    assert torch.equal(clip.encode_from_tokens(tokens), loaded[1].encode_from_tokens(tokens))
    latent = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    assert torch.equal(vae.decode(latent), loaded[2].decode(latent))


def test_stock_checkpoint_loader_cannot_load_the_gapped_file(checkpoints, host):
    """Why the single-file loader exists: stock ComfyUI misreads the gapped numbering."""
    import comfy.sd
    import folder_paths

    with pytest.raises(RuntimeError, match=r"size mismatch|Could not detect"):
        comfy.sd.load_checkpoint_guess_config(folder_paths.get_full_path("checkpoints", checkpoints[1]))


def test_v_prediction_from_the_scheduler_config(random_pipeline, host):
    import comfy.model_base

    config = random_pipeline.path / "scheduler" / "scheduler_config.json"
    text = config.read_text()
    try:
        config.write_text(text.replace('"steps_offset": 1', '"steps_offset": 1, "prediction_type": "v_prediction"'))
        model, = outputs(host, "BKSDMUNetLoader", model_name=random_pipeline.path.name, weight_dtype="fp32",
                         prediction="auto")
        assert model.model.model_type == comfy.model_base.ModelType.V_PREDICTION
        forced, = outputs(host, "BKSDMUNetLoader", model_name=random_pipeline.path.name, weight_dtype="fp32",
                          prediction="epsilon")
        assert forced.model.model_type == comfy.model_base.ModelType.EPS
    finally:
        config.write_text(text)
