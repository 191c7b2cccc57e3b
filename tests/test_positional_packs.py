"""Popular SD-1.5 node packs that take the U-Net's blocks by SD position, run on BK-SDM in a real
ComfyUI with their pinned commits (tests/thirdparty.py), each with its verdict asserted:

- ComfyUI-BrushNet (BrushNet, PowerPaint, RAUNet) and Advanced-ControlNet's reference-only control
  walk ``input_blocks[i]`` by SD index inside their own sampling code: the run stops before sampling
  with the pack's error, never an IndexError inside them or residuals on other blocks;
- jankhidiffusion's RAU-Net works with BK-SDM's numbers for the Downsample / Upsample it replaces
  (it looks them up in the model object) and SD's numbers for its cross-attention blocks (block
  patches, translated): each student block is reshaped exactly as its teacher block is on SD;
- layerdiffuse reads 32 SD module paths from the model object inside its own node, before any
  sampling: ComfyUI's AttributeError from that node, which no public point lets the pack turn
  into its own (said in the README).
"""

import pytest
import torch
from factories import TEACHER_CONFIGS, random_vae
from test_sd_weights import _sample
from test_teacher_addressing import bk_model, unet_blocks

from bksdm.errors import UnsupportedModelError
from bksdm.layout.addresses import teacher_addresses

pytestmark = pytest.mark.host
V1_LAYOUTS = ["v1_bk_base", "v1_bk_small", "v1_bk_tiny"]


def _cond(seed=2):
    return [[torch.randn(1, 77, 768, generator=torch.Generator().manual_seed(seed)), {}]]


@pytest.fixture(scope="module")
def sd15(pack):
    """A random SD-1.5 U-Net as a MODEL, the reference each verdict is checked against."""
    return bk_model(pack, TEACHER_CONFIGS["sd1"], seed=21)[0]


@pytest.fixture(scope="module")
def vae(pack):
    return pack("nodes.build").build_vae(random_vae(seed=12).state_dict())


@pytest.fixture(scope="module")
def brushnet_file(host, thirdparty, model_folder):
    """A BrushNet SD-1.5 model file with the real keys and shapes (its own class, from its own config)."""
    import folder_paths
    from accelerate import init_empty_weights
    from safetensors.torch import save_file

    path = thirdparty("ComfyUI-BrushNet")
    model_class = _pack_module(path, "brushnet.brushnet").BrushNetModel
    with init_empty_weights():
        model = model_class.from_config(model_class.load_config(str(path / "brushnet" / "brushnet.json")))
    g = torch.Generator().manual_seed(6)
    tensors = {k: (torch.randn(v.shape, generator=g) * 0.02).half() for k, v in model.state_dict().items()}
    with model_folder("inpaint") as root:
        save_file(tensors, str(root / "brushnet-random.safetensors"))
        del tensors
        folder_paths.add_model_folder_path("inpaint", str(root))
        yield "brushnet-random.safetensors"


def _pack_module(path, name):
    """A module of a loaded third-party pack, by its file (ComfyUI names a pack's modules after its folder)."""
    import sys

    file = path / f"{name.replace('.', '/')}.py"
    return next(m for m in list(sys.modules.values()) if getattr(m, "__file__", None) == str(file))


# The pinned BrushNet (2025-03) calls comfy.ops.pick_operations with an argument ComfyUI 0.33 no
# longer takes: there its node fails on any model, SD-1.5 as much as BK-SDM.
BRUSHNET_RUNS_ON = {"0.3.64": True, "0.33.0": False}


def _brushnet(host, model, vae, brushnet_file):
    host.nodes.NODE_CLASS_MAPPINGS["BrushNetLoader"].INPUT_TYPES()  # lists the inpaint folder for the loader
    (brushnet,) = host.call("BrushNetLoader", brushnet=brushnet_file, dtype="float32")
    image, mask = torch.rand(1, 64, 64, 3), torch.zeros(1, 64, 64)
    mask[:, 16:48, 16:48] = 1
    return host.call("BrushNet", model=model, vae=vae, image=image, mask=mask, brushnet=brushnet,
                     positive=_cond(), negative=_cond(3), scale=1.0, start_at=0, end_at=10000)


@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_brushnet_stops_before_sampling_with_the_pack_error(name, brushnet_file, vae, sd15, host, pack):
    import nodes
    from cli.comfy_host import comfyui_version

    model, _ = bk_model(pack, name)
    if not BRUSHNET_RUNS_ON[comfyui_version(host.path)]:
        with pytest.raises(TypeError, match="pick_operations"):
            _brushnet(host, sd15, vae, brushnet_file)
        with pytest.raises(TypeError, match="pick_operations"):
            _brushnet(host, model, vae, brushnet_file)
        return
    patched, positive, negative, latent = _brushnet(host, model, vae, brushnet_file)
    with pytest.raises(UnsupportedModelError) as raised:
        nodes.common_ksampler(patched, 1, 1, 5.0, "euler", "normal", positive, negative, latent)
    assert "ComfyUI-BrushNet's BrushNet / PowerPaint node" in raised.value.found
    assert f"BK-SDM {name.rsplit('_', 1)[1]} removed" in raised.value.found
    _sample(model, "sd1", size=8)  # the MODEL it was given is untouched


@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_advanced_controlnet_reference_only_stops_before_sampling(name, vae, host, pack, thirdparty):
    thirdparty("ComfyUI-Advanced-ControlNet")
    model, _ = bk_model(pack, name)
    latent = {"samples": torch.zeros(1, 4, 8, 8)}
    (reference,) = host.call("ACN_ReferenceControlNet", reference_type="reference_attn",
                             style_fidelity=0.5, ref_weight=1.0)
    (hint,) = host.call("ACN_ReferencePreprocessor", image=torch.rand(1, 64, 64, 3), vae=vae,
                        latent_size=latent)
    positive, negative = host.call("ACN_AdvancedControlNetApply_v2", positive=_cond(), negative=_cond(3),
                                   control_net=reference, image=hint, strength=1.0, start_percent=0.0,
                                   end_percent=1.0)
    import nodes

    with pytest.raises(UnsupportedModelError) as raised:
        nodes.common_ksampler(model, 1, 1, 5.0, "euler", "normal", positive, negative, latent)
    assert "Advanced-ControlNet's reference-only control in this run's conditioning" in raised.value.found


def block_sizes(unet) -> tuple[dict, list]:
    """Records the spatial size each block of a ComfyUI U-Net puts out, by its address (at its last
    layer: ComfyUI runs a block's layers one by one, never the block as a module); and the hooks."""
    sizes, handles = {}, []
    for address, block in unet_blocks(unet):
        def record(module, args, out, address=address):
            sizes.setdefault(address, tuple(out.shape[-2:]))
        handles.append(block[-1].register_forward_hook(record))
    return sizes, handles


def _raunet(host, model, input_block: int, output_block: int):
    """jankhidiffusion's advanced RAU-Net node, its SD-1.5 preset, active over the whole run."""
    cls = host.nodes.NODE_CLASS_MAPPINGS["ApplyRAUNet"]
    required = cls.INPUT_TYPES()["required"]
    inputs = {k: (v[1].get("default") if len(v) > 1 and "default" in v[1] else v[0][0])
              for k, v in required.items() if k != "model"}
    inputs.update(input_blocks=str(input_block), output_blocks=str(output_block), start_time=0.0, end_time=1.0,
                  ca_start_time=0.0, ca_end_time=1.0, ca_input_blocks="1", ca_output_blocks="11")
    return cls.patch(model=model, **inputs)[0]


def _sizes_while_sampling(model, size):
    sizes, handles = block_sizes(model.model.diffusion_model)
    try:
        _sample(model, "sd1", size=size)
    finally:
        for handle in handles:
            handle.remove()
    return sizes


# BK-SDM's numbers for the teacher's input block 3 (a Downsample) and output block 8 (an Upsample).
RAUNET_BLOCKS = {"v1_bk_base": (2, 5), "v1_bk_small": (2, 5), "v1_bk_tiny": (2, 3)}


RAUNET_SIZE = 32  # latent side


@pytest.fixture(scope="module")
def raunet_on_sd15(sd15, host, thirdparty):
    """Each SD-1.5 block's output size with RAU-Net (its SD-1.5 numbers) and without."""
    thirdparty("comfyui_jankhidiffusion")
    return (_sizes_while_sampling(_raunet(host, sd15, 3, 8), RAUNET_SIZE),
            _sizes_while_sampling(sd15, RAUNET_SIZE))


@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_raunet_reshapes_each_student_block_as_on_its_teacher_block(name, raunet_on_sd15, host, pack):
    on_teacher, plain = raunet_on_sd15
    assert on_teacher != plain  # RAU-Net reshapes the teacher at this size and time
    model, spec = bk_model(pack, name)
    on_student = _sizes_while_sampling(_raunet(host, model, *RAUNET_BLOCKS[name]), RAUNET_SIZE)
    teacher_of = teacher_addresses(spec).teacher_of
    assert any(on_teacher[t] != plain[t] for t in teacher_of.values())  # blocks BK-SDM kept are reshaped
    assert on_student == {block: on_teacher[teacher_of[block]] for block in on_student}


def test_raunet_simple_node_fails_at_the_node_on_sd_numbers(host, pack, thirdparty):
    """The simple node takes SD's numbers from its preset and looks both blocks up in the model
    object at the node, before any sampling, in the order of a Python set (so either comes first):
    at BK-SDM's input block 3 it finds a SpatialTransformer (its own ValueError), and BK-Small has
    no output block 8 (ComfyUI's AttributeError)."""
    thirdparty("comfyui_jankhidiffusion")
    model, _ = bk_model(pack, "v1_bk_small")
    with pytest.raises((ValueError, AttributeError), match=r"input 3 requires targeting an Downsample block but got "
                       r"block of type SpatialTransformer|'ModuleList' object has no attribute '8'"):
        host.call("ApplyRAUNetSimple", model=model, model_type="SD15", res_mode="high (1536-2048)",
                  upscale_mode="default", ca_upscale_mode="default")


@pytest.fixture(scope="module")
def layerdiffuse(sd15, host, thirdparty, model_folder):
    """layerdiffuse, loaded with its SD-1.5 attention-sharing weights in place: their real keys and
    shapes, made by its own module on an SD-1.5 U-Net."""
    import folder_paths
    from safetensors.torch import save_file

    with model_folder("layer_model") as root:
        folder_paths.add_model_folder_path("layer_model", str(root))  # before the pack reads it at import
        sharing = _pack_module(thirdparty("ComfyUI-layerdiffuse"), "lib_layerdiffusion.attention_sharing")
        weights = sharing.AttentionSharingPatcher(sd15.clone(), frames=1, use_control=False).state_dict()
        save_file({k: v.contiguous() for k, v in weights.items()},
                  str(root / "layer_sd15_transparent_attn.safetensors"))
        yield


@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_layerdiffuse_fails_in_its_own_node_on_sd_module_paths(name, layerdiffuse, host, pack):
    model, _ = bk_model(pack, name)
    with pytest.raises(AttributeError, match="'TimestepEmbedSequential' object has no attribute '1'"):
        host.call("LayeredDiffusionApply", model=model, config="SD15, Attention Injection, attn_sharing",
                  weight=1.0)
