"""AnimateDiff-Evolved on BK-SDM, in a real ComfyUI with its pinned commit for that release
(tests/thirdparty.py): its own Gen1 and Gen2 nodes, unchanged, on the pack's MODELs, with random
SD-1.5 motion-module files of the real names and shapes (random_models/motion_modules.py).

Proven by what runs: each motion module runs in the student block initialised from its teacher
block, at that block's width, and nowhere else; the modules of removed blocks never run; 16 frames
through a sliding context window sample to finite frames that differ from the run without
AnimateDiff; on an SD-1.5 MODEL the same motion model still places all of its modules as
AnimateDiff-Evolved alone does; an AnimateDiff-Evolved that does not take the pack's walk stops
with the pack's error. A motion LoRA and per-block effect and scale act on the motion modules they
name by SD's numbers, wherever those run. Advanced-ControlNet's ControlNet and SparseCtrl control,
what AnimateDiff workflows steer frames with, reach BK-SDM's skips as the stock node's does.
"""

import contextlib
import functools

import pytest
import torch
from factories import TEACHER_CONFIGS, random_controlnet
from test_positional_packs import _cond
from test_teacher_addressing import bk_model, unet_blocks

from bksdm.errors import UnsupportedModelError
from bksdm.layout.block_map import keeps_middle_residual, skip_alignment
from bksdm.layout.controlnet import DEFAULT_ALIGNMENT
from bksdm.layout.motion_modules import motion_module_homes
from random_models.motion_modules import (
    KINDS,
    motion_lora_prefix,
    sparsectrl_motion_tensors,
    write_motion_lora,
    write_motion_module,
)

pytestmark = pytest.mark.host
V1_LAYOUTS = ["v1_bk_base", "v1_bk_small", "v1_bk_tiny"]
FRAMES, CONTEXT, OVERLAP = 16, 8, 4
BLOCK_LISTS = {"down": "down_blocks", "up": "up_blocks", "mid": "mid_block"}


@pytest.fixture(scope="module")
def motion_files(host, thirdparty, model_folder):
    """One random motion-module file per kind, where AnimateDiff-Evolved's loaders look."""
    import folder_paths

    thirdparty("ComfyUI-AnimateDiff-Evolved")
    with model_folder("animatediff_models") as root:
        names = {}
        for seed, kind in enumerate(KINDS):
            names[kind] = write_motion_module(root / f"random-{kind}.safetensors", kind, seed=30 + seed).name
        names["animatelcm-i2v"] = write_motion_module(root / "random-animatelcm-i2v.safetensors", "animatelcm",
                                                      seed=35, image_encoder=True).name
        folder_paths.add_model_folder_path("animatediff_models", str(root))
        yield names


@pytest.fixture(scope="module")
def models(pack):
    """The pack's MODEL per layout (and SD-1.5's), built once for the module."""
    @functools.cache
    def model(name):
        if name == "sd15":
            return bk_model(pack, TEACHER_CONFIGS["sd1"], seed=21)
        return bk_model(pack, name)
    return model


def motion_modules(animatediff) -> dict:
    """Each motion module of a loaded motion model, by its place in the file."""
    found = {}
    for path, attribute in BLOCK_LISTS.items():
        blocks = getattr(animatediff, attribute)
        if blocks is None:
            continue
        for level, block in enumerate([blocks] if path == "mid" else blocks):
            for index, module in enumerate(block.motion_modules):
                found[(path, level, index)] = module
    return found


def _runs(animated, animatediff) -> tuple[dict, torch.Tensor]:
    """What each motion module ran in, and at what width, while the MODEL samples once; and the
    frames it made. Hooks record the U-Net block holding the module as it runs."""
    unet = animated.model.diffusion_model
    runs, handles = {}, []
    for place, module in motion_modules(animatediff).items():
        def record(module, args, place=place):
            blocks = {address for address, block in unet_blocks(unet) if any(layer is module for layer in block)}
            runs.setdefault(place, set()).update((address, args[0].shape[1]) for address in blocks or {None})
        handles.append(module.register_forward_pre_hook(record))
    try:
        frames = _sample(animated)
    finally:
        for handle in handles:
            handle.remove()
    return runs, frames


def _animate(host, model, motion, context: bool = True, **applied):
    """A MODEL with a loaded motion model applied, as Apply AnimateDiff Model and Use Evolved
    Sampling give it; with a sliding context window or not; ``applied``: the advanced Apply node's
    options (motion LoRA, per block)."""
    if applied:
        (m_models,) = host.call("ADE_ApplyAnimateDiffModel", motion_model=motion, start_percent=0.0,
                                end_percent=1.0, **applied)
    else:
        (m_models,) = host.call("ADE_ApplyAnimateDiffModelSimple", motion_model=motion)
    options = {}
    if context:
        (options["context_options"],) = host.call("ADE_StandardUniformContextOptions", context_length=CONTEXT,
                                                  context_stride=1, context_overlap=OVERLAP)
    return host.call("ADE_UseEvolvedSampling", model=model, beta_schedule="autoselect", m_models=m_models,
                     **options)[0]


def _gen2(host, model, motion_file, context: bool = True):
    (motion,) = host.call("ADE_LoadAnimateDiffModel", model_name=motion_file)
    return _animate(host, model, motion, context), motion.model


def _sample(model, seed=3, positive=None, negative=None):
    import nodes

    latent = {"samples": torch.zeros(FRAMES, 4, 8, 8)}
    return nodes.common_ksampler(model, seed, 1, 5.0, "euler", "normal", positive or _cond(), negative or _cond(),
                                 latent)[0]["samples"]


def _expected(spec, animatediff) -> dict:
    unet_width = {("down", lvl): c for lvl, c in enumerate((320, 640, 1280, 1280))}
    unet_width |= {("up", lvl): c for lvl, c in enumerate((1280, 1280, 640, 320))} | {("mid", 0): 1280}
    return {place: {(home, unet_width[place[:2]])} for place, home in motion_module_homes(spec).items()
            if home is not None and place in motion_modules(animatediff)}


@pytest.mark.parametrize("kind", list(KINDS))
@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_each_motion_module_runs_in_the_block_of_its_teacher_position(name, kind, motion_files, models, host):
    model, spec = models(name)
    animated, animatediff = _gen2(host, model, motion_files[kind])
    runs, frames = _runs(animated, animatediff)
    assert runs == _expected(spec, animatediff)  # and so no module of a removed block ran
    assert ("mid", 0, 0) in motion_modules(animatediff) or kind == "v1"
    assert frames.shape[0] == FRAMES and torch.isfinite(frames).all()
    assert not torch.equal(frames, _sample(model))  # AnimateDiff changed the frames
    assert (frames[1:] - frames[:1]).abs().flatten(1).amax(1).min() > 0  # every frame differs from the first


def test_gen1_loader_places_as_gen2(motion_files, models, host):
    model, spec = models("v1_bk_small")
    (animated,) = host.call("ADE_AnimateDiffLoaderGen1", model=model, model_name=motion_files["v2"],
                            beta_schedule="autoselect")
    (animatediff,) = [m.model for m in animated.get_additional_models_with_key("ADE")]
    assert _runs(animated, animatediff)[0] == _expected(spec, animatediff)


def test_one_motion_model_on_bk_sdm_then_on_sd15(motion_files, models, host, pack):
    """One loaded motion model applied to a BK-SDM MODEL and to an SD-1.5 one: after the pack gave
    it the teacher-shaped walk, it still places every module at its SD block on SD-1.5, as
    AnimateDiff-Evolved alone does, and again where the init map says on BK-SDM."""
    (motion,) = host.call("ADE_LoadAnimateDiffModel", model_name=motion_files["v2"])

    def animate(model):
        return _animate(host, model, motion, context=False)

    (tiny, tiny_spec), (sd15, sd15_spec) = models("v1_bk_tiny"), models("sd15")
    assert _runs(animate(tiny), motion.model)[0] == _expected(tiny_spec, motion.model)
    assert isinstance(motion.model.get_unet_func, pack("nodes.animatediff").TeacherShapedWalk)
    homes = motion_module_homes(sd15_spec)
    assert len(homes) == 21 and None not in homes.values()
    assert _runs(animate(sd15), motion.model)[0] == _expected(sd15_spec, motion.model)
    assert _runs(animate(tiny), motion.model)[0] == _expected(tiny_spec, motion.model)


@pytest.mark.parametrize("name", ["v1_bk_tiny", "sd15"])
def test_a_bf16_model_runs_its_motion_modules_in_the_dtype_it_computes_in(name, motion_files, host, pack):
    """The pack computes a bf16 MODEL in bf16 on a CPU with native bf16 (nodes/cpu.py; elsewhere
    ComfyUI casts it to fp32), where AnimateDiff-Evolved's Gen2 motion model is fp32 (ComfyUI's
    global dtype on the CPU): each motion model follows its MODEL, on BK-SDM and SD alike."""
    model, _ = bk_model(pack, TEACHER_CONFIGS["sd1"] if name == "sd15" else name, dtype=torch.bfloat16)
    animated, animatediff = _gen2(host, model, motion_files["v2"], context=False)
    frames = _sample(animated)
    computed = model.get_model_object("manual_cast_dtype") or model.model.get_dtype()
    assert {p.dtype for p in animatediff.parameters()} == {computed}
    assert torch.isfinite(frames).all()


def test_an_animatediff_without_the_walk_stops_before_sampling(motion_files, models, host):
    """A release of AnimateDiff-Evolved whose motion model no longer takes the U-Net from
    get_unet_func: the pack's error naming the tested commits, before AnimateDiff walks anything."""
    model, _ = models("v1_bk_tiny")
    animated, animatediff = _gen2(host, model, motion_files["v1"], context=False)
    saved = animatediff.get_unet_func
    del animatediff.get_unet_func
    try:
        with pytest.raises(UnsupportedModelError) as raised:
            _sample(animated)
    finally:
        animatediff.get_unet_func = saved
    assert "without it" in raised.value.found
    assert "90fb1331" in raised.value.fix and "d8d163cd" in raised.value.fix


def test_a_module_out_of_its_block_stops_the_run(motion_files, models, host, pack):
    """The check after injection, on what an AnimateDiff-Evolved that walked otherwise would leave:
    a motion module in another block of the student than its home."""
    model, spec = models("v1_bk_base")
    animated, animatediff = _gen2(host, model, motion_files["v1"], context=False)
    pack("nodes.animatediff").place_motion_modules(animated, spec, set())
    animated.inject_model()  # AnimateDiff-Evolved's injection, checked as it ends
    unet = animated.model.diffusion_model
    stray = motion_modules(animatediff)[("down", 0, 1)]  # SD's input block 2: BK-Base removed it
    unet.input_blocks[2].append(stray)
    try:
        with pytest.raises(UnsupportedModelError) as raised:
            pack("nodes.animatediff").check_placement(animated)
    finally:
        del unet.input_blocks[2][-1]
        animated.eject_model()
    assert not any("VanillaTemporalModule" in type(layer).__name__ for _, block in unet_blocks(unet) for layer in block)
    assert "down 0.1 motion module out of the U-Net" in raised.value.expected
    assert "('input', 2)" in raised.value.found


@pytest.mark.parametrize("name", [*V1_LAYOUTS, "sd15"])
def test_animatelcm_i2v_stops_before_sampling_where_its_image_would_be_ignored(name, motion_files, models, host):
    """AnimateLCM-I2V's reference image enters through the encoder's second module of each level,
    whose SD blocks BK-SDM removed: the pack's error before sampling, where AnimateDiff-Evolved
    would sample with the image silently ignored. On SD-1.5 the same graph samples."""
    model, _ = models(name)
    (motion, _) = host.call("ADE_LoadAnimateLCMI2VModel", model_name=motion_files["animatelcm-i2v"])
    (m_models,) = host.call("ADE_ApplyAnimateLCMI2VModel", motion_model=motion,
                            ref_latent={"samples": torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(6))},
                            ref_drift=0.0, apply_ref_when_disabled=False, start_percent=0.0, end_percent=1.0)
    (animated,) = host.call("ADE_UseEvolvedSampling", model=model, beta_schedule="autoselect", m_models=m_models)
    if name == "sd15":
        assert torch.isfinite(_sample(animated)).all()
        return
    with pytest.raises(UnsupportedModelError) as raised:
        _sample(animated)
    assert "AnimateLCM-I2V" in raised.value.found and "down 0.1, down 1.1, down 2.1" in raised.value.found
    assert "SD-1.5" in raised.value.fix


@pytest.fixture(scope="module")
def motion_lora(motion_files, model_folder):
    """A random motion LoRA for the v2 file, where AnimateDiff-Evolved looks for motion LoRAs."""
    import folder_paths

    with model_folder("animatediff_motion_lora") as root:
        write_motion_lora(root / "random-motion-lora.safetensors", "v2", rank=8, seed=40)
        folder_paths.add_model_folder_path("animatediff_motion_lora", str(root))
        yield "random-motion-lora.safetensors"


@torch.no_grad()
def _merge_motion_lora(motion_model, lora_path, strength):
    """The motion model with the LoRA added into its weights, as the LoRA's names say."""
    from safetensors.torch import load_file

    lora = load_file(lora_path)
    for name, weight in motion_model.state_dict().items():
        if (prefix := motion_lora_prefix(name)) is not None:
            up, down = lora[f"{prefix}.up.weight"].float(), lora[f"{prefix}.down.weight"].float()
            weight += strength * (up @ down)


def test_a_motion_lora_acts_on_the_motion_modules_it_names(motion_files, motion_lora, models, host):
    """A motion LoRA through AnimateDiff-Evolved's loader, on BK-Tiny: the frames of the motion
    model merged with it by hand, with every module still in its teacher block."""
    import folder_paths

    model, spec = models("v1_bk_tiny")
    strength = 0.8
    (loras,) = host.call("ADE_AnimateDiffLoRALoader", name=motion_lora, strength=strength)
    (motion,) = host.call("ADE_LoadAnimateDiffModel", model_name=motion_files["v2"])
    runs, frames = _runs(_animate(host, model, motion, motion_lora=loras), motion.model)
    assert runs == _expected(spec, motion.model)

    (merged,) = host.call("ADE_LoadAnimateDiffModel", model_name=motion_files["v2"])
    without = _sample(_animate(host, model, merged))
    _merge_motion_lora(merged.model, folder_paths.get_full_path("animatediff_motion_lora", motion_lora), strength)
    torch.testing.assert_close(frames, _sample(_animate(host, model, merged)), rtol=0, atol=1e-4)
    assert (frames - without).abs().max() > 1e-3  # the LoRA matters


def test_per_block_effect_and_scale_reach_the_modules_they_name(motion_files, models, host):
    """AnimateDiff-Evolved's per-block nodes address motion modules by SD-1.5's blocks: on BK-Tiny,
    effect 0 leaves exactly the named modules' blocks as they were (the module returns its input)
    and a scale reaches exactly the attention of the module named, wherever the init map put them.
    Naming a module of a removed block (down 3) changes nothing that runs."""
    model, spec = models("v1_bk_tiny")
    homes = motion_module_homes(spec)
    off, scaled, removed = ("down", 1, 0), ("up", 2, 2), ("down", 3, 0)
    assert homes[off] is not None and homes[scaled] is not None and homes[removed] is None
    (no_effect,) = host.call("ADE_ADBlockCombo", effect=0.0)
    (twice,) = host.call("ADE_ADBlockCombo", scale=2.0)
    (per_block,) = host.call("ADE_PerBlock_SD15_LowLevel", down_1__0=no_effect, up_2__2=twice, down_3__0=no_effect)
    (motion,) = host.call("ADE_LoadAnimateDiffModel", model_name=motion_files["v2"])
    animated = _animate(host, model, motion, per_block=per_block)

    seen, handles = {}, []
    for place, module in motion_modules(motion.model).items():
        def record(module, args, output, place=place):
            attentions = module.temporal_transformer.transformer_blocks[0].attention_blocks
            unchanged = output is args[0] or torch.equal(output, args[0])
            seen.setdefault(place, set()).add((unchanged, frozenset(attention.scale for attention in attentions)))
        handles.append(module.register_forward_hook(record))
    try:
        _sample(animated)
    finally:
        for handle in handles:
            handle.remove()
    ran = {place for place, home in homes.items() if home is not None}
    assert set(seen) == ran
    assert {place for place, records in seen.items() if any(unchanged for unchanged, _ in records)} == {off}
    assert all(len(records) == 1 for records in seen.values())  # every step, every window alike
    assert {place for place, [(_, scales)] in seen.items() if scales != {1.0}} == {scaled}
    assert seen[scaled] == {(False, frozenset({2.0}))}


@pytest.fixture(scope="module")
def control_files(host, model_folder):
    """A random SD-1.5 ControlNet and a random T2I-Adapter, where both control loaders look."""
    import folder_paths
    from factories import random_t2i_adapter
    from safetensors.torch import save_file

    with model_folder("controlnet") as root:
        names = {"controlnet": "sd15-controlnet.safetensors", "t2i-adapter": "sd15-t2i-adapter.safetensors"}
        for kind, module in (("controlnet", random_controlnet("sd1", seed=5)), ("t2i-adapter", random_t2i_adapter())):
            save_file({k: v.contiguous() for k, v in module.state_dict().items()}, str(root / names[kind]))
            del module
        folder_paths.add_model_folder_path("controlnet", str(root))
        yield names


@pytest.mark.parametrize("kind", ["controlnet", "t2i-adapter"])
@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_advanced_controlnet_control_lands_where_the_stock_nodes_does(name, kind, control_files, models, host,
                                                                       thirdparty):
    """Advanced-ControlNet's loader and Apply node with an SD-1.5 ControlNet or T2I-Adapter give the
    stock nodes' sample: its control reaches the student's skips through the same translation."""
    import nodes

    thirdparty("ComfyUI-Advanced-ControlNet")
    model, _ = models(name)
    hint = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(8))
    latent = {"samples": torch.zeros(2, 4, 8, 8)}
    applied = dict(positive=_cond(), negative=_cond(3), image=hint, strength=1.0, start_percent=0.0,
                   end_percent=1.0)
    (stock,) = host.call("ControlNetLoader", control_net_name=control_files[kind])
    (advanced,) = host.call("ACN_ControlNetLoaderAdvanced", cnet=control_files[kind])
    samples = {}
    for label, node, control_net in (("stock", "ControlNetApplyAdvanced", stock),
                                     ("advanced", "ACN_AdvancedControlNetApply_v2", advanced)):
        positive, negative = host.call(node, control_net=control_net, **applied)[:2]
        samples[label] = nodes.common_ksampler(model, 4, 1, 5.0, "euler", "normal", positive, negative,
                                               latent)[0]["samples"]
    plain = nodes.common_ksampler(model, 4, 1, 5.0, "euler", "normal", _cond(), _cond(3), latent)[0]["samples"]
    assert (samples["stock"] - plain).abs().max() > 1e-2  # the control does something...
    torch.testing.assert_close(samples["advanced"], samples["stock"], rtol=0, atol=1e-5)  # ...the same through both


@pytest.fixture(scope="module")
def sparsectrl_file(host, model_folder):
    """A random SparseCtrl file of the sketch model's layout (an SD-1.5 ControlNet taking an image and
    its mask, with the encoder's motion modules), where Advanced-ControlNet's loader looks."""
    import folder_paths
    from safetensors.torch import save_file

    with model_folder("controlnet") as root:
        controlnet = random_controlnet("sd1", seed=11, conditioning_channels=4)
        state = {k: v.half() for k, v in controlnet.state_dict().items()}
        save_file(state | sparsectrl_motion_tensors(seed=12), str(root / "sd15-sparsectrl.safetensors"))
        del state, controlnet
        folder_paths.add_model_folder_path("controlnet", str(root))
        yield "sd15-sparsectrl.safetensors"


@contextlib.contextmanager
def _controls_around_translation(model):
    """A copy of ``model`` that records, per U-Net call, the control that reaches the U-Net (in SD's
    skips, as the control nodes make it) and the control its blocks receive after the pack's
    translation (by a DIFFUSION_MODEL wrapper inside the pack's); with the two lists."""
    import comfy.patcher_extension

    arriving, received = [], []

    def before(module, args, kwargs):
        arriving.append({kind: list(kwargs["control"][kind]) for kind in ("output", "middle")})

    def after(executor, x, timesteps=None, context=None, y=None, control=None, transformer_options=None, **kwargs):
        received.append({kind: list(control[kind]) for kind in ("output", "middle")})
        return executor(x, timesteps, context, y, control, transformer_options, **kwargs)

    recorded = model.clone()
    recorded.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL, "test-record", after)
    handle = recorded.model.diffusion_model.register_forward_pre_hook(before, with_kwargs=True)
    try:
        yield recorded, arriving, received
    finally:
        handle.remove()


@pytest.mark.parametrize("name", V1_LAYOUTS)
def test_sparsectrl_control_lands_on_the_skips_of_the_stock_controls(name, sparsectrl_file, motion_files, models,
                                                                     host, thirdparty):
    """Advanced-ControlNet's SparseCtrl (two keyframe hints spread over 16 frames, its own motion
    modules on) with AnimateDiff in a sliding context on BK-SDM: the residuals its SD-1.5 ControlNet
    makes for SD's 12 skips reach the student's skips the init map gives a ControlNet's (the same
    tensors, by identity), the middle residual where BK-SDM keeps one; the frames change."""
    thirdparty("ComfyUI-Advanced-ControlNet")
    model, spec = models(name)
    (sparsectrl,) = host.call("ACN_SparseCtrlLoaderAdvanced", sparsectrl_name=sparsectrl_file, use_motion=True,
                              motion_strength=1.0, motion_scale=1.0)
    hints = torch.rand(2, 64, 64, 3, generator=torch.Generator().manual_seed(9))
    positive, negative = host.call("ACN_AdvancedControlNetApply_v2", positive=_cond(), negative=_cond(3),
                                   control_net=sparsectrl, image=hints, strength=1.0, start_percent=0.0,
                                   end_percent=1.0)[:2]
    animated, _ = _gen2(host, model, motion_files["v1"])
    with _controls_around_translation(animated) as (recorded, arriving, received):
        frames = _sample(recorded, positive=positive, negative=negative)

    assert len(arriving) == len(received) > 0
    skips = skip_alignment(spec, DEFAULT_ALIGNMENT)
    for teacher, student in zip(arriving, received, strict=True):
        assert len(teacher["output"]) == 12 and len(teacher["middle"]) == 1
        assert all(got is teacher["output"][i] for got, i in zip(student["output"], skips, strict=True))
        assert [id(t) for t in student["middle"]] == [id(t) for t in teacher["middle"] if keeps_middle_residual(spec)]
    assert torch.isfinite(frames).all()
    assert (frames - _sample(animated, negative=_cond(3))).abs().max() > 1e-2  # the control does something
