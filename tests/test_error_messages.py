"""Each error says what happened and what to do, in the words of the README's Troubleshooting
table: the kind (and so the title) and the fix of every message reworded in issue 24 (item 7),
pinned. Every error is raised the way a user meets it: files written here, a real ComfyUI."""

import inspect
import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from factories import unet_config
from safetensors.torch import load_file, save, save_file
from test_bad_input import _linked_copy
from test_ipadapter import apply_embeds, ipadapter  # noqa: F401  (ipadapter: the fixture)
from test_teacher_addressing import bk_model, run_unet

import pack_import
from bksdm import errors
from bksdm.files import components, pipeline

# Where a model the pack refuses loads instead, by what the user gave it (errors.ELSEWHERE).
FILE_FIX = ("if ComfyUI supports this model, load the file with ComfyUI's own Load Checkpoint (a whole checkpoint, "
            "in models/checkpoints) or Load Diffusion Model (a U-Net or transformer alone, in models/diffusion_models)")
FOLDER_FIX = ("if ComfyUI supports this model, use ComfyUI's own loaders: Load Diffusers Model reads a pipeline folder "
              "in models/diffusers whose unet/ ComfyUI recognises (SD 1.x/2.x, SDXL; not SD3 or Flux), Load Diffusion "
              "Model a U-Net or transformer file in models/diffusion_models, Load Checkpoint a single-file checkpoint")
WHOLE_CHECKPOINT_FIX = ("Load BK-SDM Checkpoint needs the U-Net, text encoder and VAE in one file: choose the model's "
                        "whole checkpoint (Convert BK-SDM Folder to Checkpoint writes one), or load its diffusers "
                        "folder with Load BK-SDM Pipeline")
# A custom layout: SD 1.x widths narrowed, which no init map covers.
NARROW = dict(unet_config("v1_bk_small"), block_out_channels=[256, 512, 1024, 1024])


def pinned(raised, kind: type, title: str, fix: str) -> errors.BKSDMError:
    """The error is of ``kind``, carries ``title`` and exactly ``fix``, and says both."""
    error = raised.value
    assert type(error) is kind, f"{type(error).__name__}: {error}"
    assert error.title == title and str(error).startswith(f"BK-SDM: {title}:")
    assert error.fix == fix, error.fix
    assert str(error).endswith(f"  fix:      {fix}")
    return error


def _node(host, node_id):
    return host.nodes.NODE_CLASS_MAPPINGS[node_id]


@pytest.fixture
def comfy_folder(monkeypatch, tmp_path):
    """A fresh folder of a ComfyUI model kind, listed first (where the convert node writes), for this test only."""
    import folder_paths

    def register(kind: str):
        root = tmp_path / kind
        root.mkdir()
        paths, extensions = folder_paths.folder_names_and_paths[kind]
        monkeypatch.setitem(folder_paths.folder_names_and_paths, kind, ([str(root), *paths], extensions))
        return root

    return register


@pytest.fixture
def sd1_folder(sd1_pipeline, tmp_path):
    return lambda name, replace=None: _linked_copy(sd1_pipeline.path, tmp_path / name, replace)


@pytest.fixture(scope="module")
def narrow_model(host, pack):
    """A BK-layout MODEL from the pack's build, of a custom layout, with the teacher addressing installed."""
    model, _ = bk_model(pack, "narrow", NARROW)
    return model


# --- writing a checkpoint --------------------------------------------------------------


@pytest.mark.host
def test_convert_refuses_an_existing_file_as_a_file_it_cannot_write(host, sd1_pipeline, comfy_folder):
    root = comfy_folder("checkpoints")
    (root / "mine.safetensors").write_bytes(b"the user's own file")
    with pytest.raises(errors.ExportError) as raised:
        _node(host, "BKSDMConvertToCheckpoint").execute(model_name=sd1_pipeline.path.name,
                                                        filename="mine.safetensors", precision="fp16")
    pinned(raised, errors.ExportError, "cannot write the file",
           "type another file name, or delete or move the old file yourself first; nothing was written")
    assert raised.value.path == str(root / "mine.safetensors")
    assert (root / "mine.safetensors").read_bytes() == b"the user's own file"
    assert [p.name for p in root.iterdir()] == ["mine.safetensors"]


@pytest.mark.host
def test_a_file_that_takes_the_name_while_the_export_is_written_is_kept(host, tmp_path):
    """The last step of the export never replaces a file: one made under the name since the
    first check stays, and the export fails as if it had been there from the start."""
    convert = pack_import.pack_module("nodes.convert")
    written, users = tmp_path / "mine.safetensors.partial-1", tmp_path / "mine.safetensors"
    written.write_bytes(b"the checkpoint")
    users.write_bytes(b"the user's own file")
    with pytest.raises(FileExistsError):
        convert._move_into_place(str(written), str(users))
    assert users.read_bytes() == b"the user's own file"
    users.unlink()
    convert._move_into_place(str(written), str(users))
    assert users.read_bytes() == b"the checkpoint"
    assert [p.name for p in tmp_path.iterdir()] == ["mine.safetensors"]


@pytest.mark.host
def test_convert_refuses_a_name_with_a_folder_as_a_file_it_cannot_write(host, sd1_pipeline):
    with pytest.raises(errors.ExportError) as raised:
        _node(host, "BKSDMConvertToCheckpoint").execute(model_name=sd1_pipeline.path.name,
                                                        filename="../escape.safetensors", precision="fp16")
    error = pinned(raised, errors.ExportError, "cannot write the file",
                   "type only a file name, without folders, such as bk-sdm-small.safetensors; it is written into "
                   "models/checkpoints")
    assert error.found == "'../escape.safetensors'"


# --- models of other families: what loads them instead ---------------------------------


def _pipeline_folder(root, index: dict):
    root.mkdir()
    (root / "model_index.json").write_text(json.dumps(index))
    return str(root)


def test_an_sdxl_pipeline_folder_is_sent_to_comfyuis_diffusers_loader(tmp_path):
    folder = _pipeline_folder(tmp_path / "sdxl", {"_class_name": "StableDiffusionXLPipeline", "unet": [],
                                                  "text_encoder_2": []})
    with pytest.raises(errors.UnsupportedModelError) as raised:
        pipeline.open_model_folder(folder)
    pinned(raised, errors.UnsupportedModelError, "unsupported model",
           "load this folder with ComfyUI's own Load Diffusers Model node (it lists the pipeline folders in "
           "models/diffusers), or an SDXL single-file checkpoint with Load Checkpoint")


def test_a_transformer_pipeline_folder_is_sent_to_single_files(tmp_path):
    folder = _pipeline_folder(tmp_path / "flux", {"_class_name": "FluxPipeline", "transformer": []})
    with pytest.raises(errors.UnsupportedModelError) as raised:
        pipeline.open_model_folder(folder)
    pinned(raised, errors.UnsupportedModelError, "unsupported model",
           "ComfyUI loads no diffusers folder of a transformer model (SD3, Flux...): get the model's single-file "
           "release and load it with Load Checkpoint (a whole checkpoint, in models/checkpoints) or Load Diffusion "
           "Model (the transformer alone, in models/diffusion_models)")


def _unet_folder(root, config: dict | None, tensors: dict | None = None) -> pipeline.ModelFolder:
    """A pipeline folder with only its U-Net: the config.json if given, and weights."""
    (root / "unet").mkdir(parents=True)
    (root / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline",
                                                       "unet": ["diffusers", "UNet2DConditionModel"]}))
    if config is not None:
        (root / "unet" / "config.json").write_text(json.dumps(config))
    save_file(tensors or {"conv_in.weight": torch.zeros(1)}, str(root / "unet" / "diffusion_pytorch_model.safetensors"))
    return pipeline.open_model_folder(str(root))


def test_an_sdxl_unet_folder_is_sent_to_what_loads_sdxl(tmp_path):
    sdxl = dict(unet_config("v1_bk_small"), cross_attention_dim=2048)
    with pytest.raises(errors.UnsupportedModelError) as raised:
        components.load_unet(_unet_folder(tmp_path / "sdxl-unet", sdxl), prefer_half=False)
    pinned(raised, errors.UnsupportedModelError, "unsupported model",
           "load SDXL with ComfyUI's own loaders: Load Diffusers Model reads a whole SDXL pipeline folder in "
           "models/diffusers, Load Diffusion Model an SDXL U-Net's diffusion_pytorch_model.safetensors in "
           "models/diffusion_models, Load Checkpoint a single-file SDXL checkpoint")


def test_an_inpainting_unet_folder_is_sent_to_comfyuis_loaders(tmp_path):
    inpainting = dict(unet_config("v1_bk_small"), in_channels=9)
    with pytest.raises(errors.UnsupportedModelError) as raised:
        components.load_unet(_unet_folder(tmp_path / "inpainting", inpainting), prefer_half=False)
    pinned(raised, errors.UnsupportedModelError, "unsupported model", FOLDER_FIX)


@pytest.mark.host
def test_the_fix_for_another_architecture_follows_where_it_came_from(host, comfy_folder, tmp_path):
    """The same SDXL U-Net: in a diffusers folder without config.json, and as a single-file checkpoint."""
    folder = _unet_folder(tmp_path / "no-config", None, {"conv_in.weight": torch.zeros(320, 4, 3, 3),
                                                       "add_embedding.linear_1.weight": torch.zeros(1280, 2816)})
    with pytest.raises(errors.UnsupportedModelError) as raised:
        components.load_unet(folder, prefer_half=False)
    pinned(raised, errors.UnsupportedModelError, "unsupported model", FOLDER_FIX)
    root = comfy_folder("checkpoints")
    save_file({"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
               "model.diffusion_model.label_emb.0.0.weight": torch.zeros(1280, 2816)}, str(root / "sdxl.safetensors"))
    with pytest.raises(errors.UnsupportedModelError) as raised:
        _node(host, "BKSDMCheckpointLoader").execute(ckpt_name="sdxl.safetensors", weight_dtype="default",
                                                     prediction="auto")
    pinned(raised, errors.UnsupportedModelError, "unsupported model", FILE_FIX)


# --- weights in parts ------------------------------------------------------------------


def _shard(state: dict, folder, stem: str, index: str, suffix: str, write) -> None:
    """``state`` in two parts and their index, as diffusers and transformers save big models."""
    names = sorted(state)
    parts = {f"{stem}-0000{n + 1}-of-00002{suffix}": names[n::2] for n in range(2)}
    for part, keys in parts.items():
        write({k: state[k] for k in keys}, str(folder / part))
    (folder / index).write_text(json.dumps({"metadata": {}, "weight_map": {
        k: part for part, keys in parts.items() for k in keys}}))


@pytest.mark.parametrize("component", ["vae", "text_encoder"])
def test_weights_in_parts_are_refused_with_a_command_that_joins_them(component, sd1_folder, sd1_pipeline):
    folder = sd1_folder(f"sharded-{component}")
    directory = folder / component
    if component == "vae":  # fp16 variant safetensors, named as diffusers names them
        state = load_file(str(sd1_pipeline.path / "vae" / "diffusion_pytorch_model.fp16.safetensors"))
        stem, index, suffix, write, joined = ("diffusion_pytorch_model.fp16", "diffusion_pytorch_model.safetensors"
                                              ".index.fp16.json", ".safetensors", save_file,
                                              "diffusion_pytorch_model.fp16.safetensors")
    else:  # pickles, as transformers names them
        state = load_file(str(sd1_pipeline.path / "text_encoder" / "model.fp16.safetensors"))
        stem, index, suffix, write, joined = ("pytorch_model", "pytorch_model.bin.index.json", ".bin", torch.save,
                                              "model.safetensors")
    for weights in directory.glob("*.safetensors"):
        weights.unlink()
    _shard(state, directory, stem, index, suffix, write)
    opened = pipeline.open_model_folder(str(folder))
    load = (lambda: components.load_vae(opened, prefer_half=True)) if component == "vae" else \
        (lambda: components.load_text_encoder(opened, components.read_unet_spec(opened), prefer_half=True))
    with pytest.raises(errors.UnsupportedModelError) as raised:
        load()
    error = raised.value
    assert type(error) is errors.UnsupportedModelError and error.title == "unsupported model"
    assert f"weights split into parts ({index}), which this pack does not read" == error.found
    lead = ("download the model's weights as one file into this folder, or merge the parts into one with ComfyUI's "
            "Python: python -c ")
    assert error.fix.startswith(lead), error.fix
    # The command the message gives, run as given (with this Python), makes the folder load.
    command = shlex.split(error.fix[len(lead) - len("python -c "):])
    assert command[:2] == ["python", "-c"] and len(command) == 3
    run = subprocess.run([sys.executable, *command[1:]], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert (directory / joined).is_file()
    original = pipeline.open_model_folder(str(sd1_pipeline.path))
    expected = components.load_vae(original, prefer_half=True) if component == "vae" else \
        components.load_text_encoder(original, components.read_unet_spec(original), prefer_half=True)
    loaded = load()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())
    # The same command as a Windows user gets it: one double-quoted argument, which cmd and
    # PowerShell pass on whole, so no double quote inside; it joins the parts alike.
    (directory / joined).unlink()
    windows = pipeline.merge_shards_command(str(directory), index, joined.split(".")[0], windows=True)
    assert windows.startswith('python -c "') and windows.endswith('"') and windows.count('"') == 2
    run = subprocess.run([sys.executable, "-c", windows[len('python -c "'):-1]], capture_output=True, text=True,
                         timeout=600)
    assert run.returncode == 0, run.stderr
    loaded = load()
    assert loaded.keys() == expected.keys() and all(torch.equal(loaded[k], v) for k, v in expected.items())


# --- control and patches from other nodes on a layout without a map --------------------


@pytest.mark.host
@pytest.mark.parametrize("kind", ["ControlNet", "T2I-Adapter"])
def test_sd_control_on_a_custom_layout_names_the_kind_and_the_node(kind, narrow_model):
    # What an SD ControlNet (12 skip residuals and the middle one) or T2I-Adapter (12 features) hands the U-Net.
    control = {"output": [torch.zeros(1, 320, 2, 2)] * 12, "middle": [torch.zeros(1, 1280, 2, 2)]} \
        if kind == "ControlNet" else {"input": [None] * 11 + [torch.zeros(1, 320, 2, 2)]}
    with pytest.raises(errors.UnsupportedModelError) as raised:
        run_unet(narrow_model, control=control)
    error = pinned(raised, errors.UnsupportedModelError, "unsupported model",
                   f"remove the Apply ControlNet node (or other control node) that applies the SD {kind} to this "
                   "model's conditioning, or apply one trained for this U-Net: SD control maps onto the published "
                   "BK-SDM layouts (Base, Small, Tiny) only")
    assert error.found.startswith(f"control from an SD {kind}, made for the full SD U-Net (12 skips)")


@pytest.mark.host
def test_an_ip_adapter_that_does_not_fit_its_block_names_its_node_pack(ipadapter, narrow_model, host):  # noqa: F811
    patched = apply_embeds(host, narrow_model)
    replace = next(iter(patched.model_options["transformer_options"]["patches_replace"]["attn2"].values()))
    pack_folder = Path(inspect.getfile(type(replace))).parent.name  # cubiq's pack, as ComfyUI loaded it
    with pytest.raises(errors.PatchMisfitError) as raised:
        run_unet(patched, options={"cond_or_uncond": [0]})
    patch = f"Attn2Replace (from {pack_folder})"
    error = pinned(raised, errors.PatchMisfitError, "a model patch does not fit this U-Net",
                   f"remove the node that adds this patch ({patch}) from this model's path, or use one made for this "
                   "U-Net: SD patches map onto the published BK-SDM layouts (Base, Small, Tiny) only")
    assert pack_folder.startswith("ComfyUI_IPAdapter_plus")
    assert error.expected.startswith(f"the attn2 replace patch {patch} for SD block ('input', 1)")


@pytest.mark.host
def test_an_sd_lora_on_a_custom_layout_says_which_loader_to_use(host, narrow_model, comfy_folder):
    root = comfy_folder("loras")
    save_file({"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320)},
              str(root / "sd-lora.safetensors"))
    with pytest.raises(errors.UnsupportedModelError) as raised:
        _node(host, "BKSDMLoraLoader").execute(model=narrow_model, lora_name="sd-lora.safetensors",
                                               strength_model=1.0, strength_clip=1.0)
    error = pinned(raised, errors.UnsupportedModelError, "unsupported model",
                   "load a LoRA trained on this U-Net with the stock Load LoRA node instead: Load SD LoRA onto BK-SDM "
                   "maps SD LoRAs onto the published BK-SDM layouts (Base, Small, Tiny) only")
    assert error.path == str(root / "sd-lora.safetensors")


@pytest.mark.host
def test_the_alignment_node_on_a_custom_layout_says_to_remove_it(host, narrow_model):
    with pytest.raises(errors.UnsupportedModelError) as raised:
        _node(host, "BKSDMControlNetAdapter").execute(model=narrow_model, alignment="stage_output")
    pinned(raised, errors.UnsupportedModelError, "unsupported model",
           "remove BK-SDM ControlNet Alignment and apply a ControlNet trained for this U-Net, which needs no "
           "alignment: SD ControlNets map onto the published BK-SDM layouts (Base, Small, Tiny) only")


def _call(host, node_id, **inputs):
    """A stock (V1) node's function, as the executor calls it."""
    node = _node(host, node_id)
    return getattr(node(), node.FUNCTION)(**inputs)


@pytest.mark.host
def test_a_control_lora_names_its_conditioning_and_its_loader(host, sd1_pipeline, comfy_folder):
    root = comfy_folder("controlnet")
    save_file({"lora_controlnet": torch.zeros(1)}, str(root / "control-lora.safetensors"))  # ComfyUI's marker
    model, clip, _ = _node(host, "BKSDMPipelineLoader").execute(model_name=sd1_pipeline.path.name,
                                                                weight_dtype="fp32", prediction="auto").args
    (text,) = _call(host, "CLIPTextEncode", clip=clip, text="a house")
    (control,) = _call(host, "ControlNetLoader", control_net_name="control-lora.safetensors")
    positive, negative = _call(host, "ControlNetApplyAdvanced", positive=text, negative=text, control_net=control,
                               image=torch.ones(1, 64, 64, 3), strength=1.0, start_percent=0.0, end_percent=1.0)
    (latent,) = _call(host, "EmptyLatentImage", width=64, height=64, batch_size=1)
    with pytest.raises(errors.UnsupportedModelError) as raised:
        _call(host, "KSampler", model=model, seed=1, steps=1, cfg=5.0, sampler_name="euler", scheduler="normal",
              positive=positive, negative=negative, latent_image=latent, denoise=1.0)
    error = pinned(raised, errors.UnsupportedModelError, "unsupported model",
                   "in the node that loads it (Load ControlNet Model), pick the full SD ControlNet of the same kind "
                   "instead (its residuals are mapped), or one trained for BK-SDM")
    assert error.found.startswith("a Control-LoRA in the positive conditioning")


# --- what else the raise sites say -----------------------------------------------------


def test_an_unknown_prediction_type_says_which_input_to_set(sd1_folder, sd1_pipeline):
    config = json.loads((sd1_pipeline.path / "scheduler" / "scheduler_config.json").read_text())
    folder = sd1_folder("predicts-x0", {"scheduler/scheduler_config.json": json.dumps(
        dict(config, prediction_type="sample")).encode()})
    with pytest.raises(errors.UnsupportedModelError) as raised:
        pipeline.prediction_type(pipeline.open_model_folder(str(folder)))
    pinned(raised, errors.UnsupportedModelError, "unsupported model",
           "if the model was trained to predict noise or v, pick epsilon or v_prediction in the loader's prediction "
           "input instead of auto; ComfyUI's SD sampling runs no other kind")


def test_a_text_encoder_of_the_other_family_is_a_part_of_another_model(sd1_folder):
    sd2_width = {"text_model.embeddings.token_embedding.weight": torch.zeros(49408, 1024, dtype=torch.float16)}
    replace = {f"text_encoder/{name}": save(sd2_width) for name in ("model.safetensors", "model.fp16.safetensors")}
    folder = pipeline.open_model_folder(str(sd1_folder("mixed", replace)))
    with pytest.raises(errors.WeightsMismatchError) as raised:
        components.load_text_encoder(folder, components.read_unet_spec(folder), prefer_half=False)
    pinned(raised, errors.WeightsMismatchError, "weights do not match the model layout",
           "the text encoder belongs to another model than the U-Net: download the model folder again, all of it "
           "from the model's repository")


@pytest.mark.parametrize("component", ["text_encoder", "vae"])
def test_something_else_in_place_of_a_part_says_to_download_again(component, sd1_folder):
    names = ("model.safetensors", "model.fp16.safetensors") if component == "text_encoder" else \
        ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.fp16.safetensors")
    other = save({"encoder.layers.0.weight": torch.zeros(4, 4)})
    folder = pipeline.open_model_folder(str(sd1_folder(f"not-a-{component}",
                                                       {f"{component}/{n}": other for n in names})))
    with pytest.raises(errors.WeightsMismatchError) as raised:
        if component == "vae":
            components.load_vae(folder, prefer_half=False)
        else:
            components.load_text_encoder(folder, components.read_unet_spec(folder), prefer_half=False)
    part = "text encoder" if component == "text_encoder" else "VAE"
    pinned(raised, errors.WeightsMismatchError, "weights do not match the model layout",
           f"download the model again: its {part} is damaged or something else is in its place")


def test_blocks_numbered_with_a_gap_say_what_to_do(tmp_path):
    gapped = {"conv_in.weight": torch.zeros(320, 4, 3, 3), "down_blocks.0.resnets.0.conv1.weight": torch.zeros(1),
              "down_blocks.2.resnets.0.conv1.weight": torch.zeros(1)}
    with pytest.raises(errors.WeightsMismatchError) as raised:
        components.load_unet(_unet_folder(tmp_path / "gapped", None, gapped), prefer_half=False)
    pinned(raised, errors.WeightsMismatchError, "weights do not match the model layout",
           "the file is damaged, or a tool renumbered its blocks in a way the pack cannot repair: download it again, "
           "or convert the model folder with Convert BK-SDM Folder to Checkpoint")


@pytest.mark.host
@pytest.mark.parametrize("kind", ["diffusers U-Net", "LoRA"])
def test_a_file_without_a_checkpoints_unet_says_where_it_belongs(kind, host, comfy_folder):
    root = comfy_folder("checkpoints")
    tensors = {"conv_in.weight": torch.zeros(320, 4, 3, 3)} if kind == "diffusers U-Net" else \
        {"lora_unet_input_blocks_1_1_proj_in.lora_down.weight": torch.zeros(4, 320)}
    save_file(tensors, str(root / "part.safetensors"))
    with pytest.raises(errors.WeightsMismatchError) as raised:
        _node(host, "BKSDMCheckpointLoader").execute(ckpt_name="part.safetensors", weight_dtype="default",
                                                     prediction="auto")
    pinned(raised, errors.WeightsMismatchError, "weights do not match the model layout",
           "put it, as diffusion_pytorch_model.safetensors, in a folder in models/diffusers with the model's "
           "unet/config.json, and load that with Load BK-SDM U-Net" if kind == "diffusers U-Net" else
           "choose a whole SD 1.x/2.x checkpoint (U-Net, text encoder and VAE in one file); LoRAs, VAEs and "
           "ControlNets go in their own folders and nodes")


@pytest.mark.host
def test_a_checkpoint_without_its_text_encoder_says_what_loads_it(host, comfy_folder):
    from bksdm.files.unet_config import spec_from_diffusers_config
    from bksdm.layout.unet_keys import unet_tensors

    root = comfy_folder("checkpoints")
    spec = spec_from_diffusers_config(unet_config("v1_bk_tiny"))
    save_file({f"model.diffusion_model.{t.ldm}": torch.zeros(t.shape, dtype=torch.float16)
               for t in unet_tensors(spec)}, str(root / "unet-only.safetensors"))
    with pytest.raises(errors.WeightsMismatchError) as raised:
        _node(host, "BKSDMCheckpointLoader").execute(ckpt_name="unet-only.safetensors", weight_dtype="default",
                                                     prediction="auto")
    error = pinned(raised, errors.WeightsMismatchError, "weights do not match the model layout",
                   WHOLE_CHECKPOINT_FIX)
    assert error.found == "a checkpoint without the SD 1.x text encoder"
