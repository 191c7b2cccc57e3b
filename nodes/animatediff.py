"""AnimateDiff-Evolved's motion modules on a BK-SDM U-Net, where the init map puts them.

AnimateDiff-Evolved places an SD motion-module file's modules by walking ``input_blocks``, then
``output_blocks``, then the middle block with one counter, a module after each block that holds
a res block (``AnimateDiffModel._inject``). On a BK-SDM U-Net that walk puts modules in other
blocks, at other widths, and runs past the last block. It lets whoever holds a motion model pick
the U-Net it walks (``AnimateDiffModel.get_unet_func``, its ``InitKwargs.GET_UNET_FUNC``): the pack
hands it the teacher's block sequence, each position the student block initialised from it
(``bksdm.layout.motion_modules``) or, where the student removed it, a throwaway list with the
teacher block's kinds of layer, which takes that position's module out of the run. No node in
the graph changes; of AnimateDiff-Evolved only that function is replaced, per motion model, and
a motion model is cast to the dtype its MODEL computes in. AnimateLCM-I2V, whose reference image
enters through modules of blocks BK-SDM removed, is refused rather than run without its image.

After ComfyUI injects a MODEL, every motion module is checked to sit in its home block, so a
release of AnimateDiff-Evolved that walks otherwise stops with the pack's error rather than
running modules in the wrong blocks. This module is the one place that knows
AnimateDiff-Evolved's internals (tested against both pinned commits, one per ComfyUI release).
"""

from __future__ import annotations

import logging

from comfy.ldm.modules.attention import SpatialTransformer
from comfy.ldm.modules.diffusionmodules.openaimodel import Downsample, ResBlock, Upsample

from ..bksdm.errors import BKSDMError, UnsupportedModelError
from ..bksdm.layout.motion_modules import MotionModule, motion_module_homes, teacher_block_sequence
from ..bksdm.layout.unet_keys import MIDDLE
from ..bksdm.layout.unet_spec import UNetSpec
from ..bksdm.layout.variants import classify_layout
from .build import compute_dtype, spec_of

log = logging.getLogger(__name__)

# The ComfyUI layers a teacher block is made of, by the kind bksdm.layout names them: what
# AnimateDiff-Evolved looks for in a block to decide whether a motion module goes there.
LAYER_KINDS = {"resnet": ResBlock, "attention": SpatialTransformer, "downsampler": Downsample, "upsampler": Upsample}

# ModelPatcherHelper.ADE: the key of AnimateDiff-Evolved's motion models among a MODEL's additional models.
ADE_KEY = "ADE"
TESTED = "90fb1331 (2025-08-05) and d8d163cd (2026-03-29)"  # the pinned commits of tests/thirdparty.py
UPDATE = (f"use AnimateDiff-Evolved at a commit this pack was tested with ({TESTED}), or a release of this pack "
          "tested with yours; if yours is the newest, please report it to the pack")
BLOCK_LISTS = {"down": "down_blocks", "up": "up_blocks", "mid": "mid_block"}
I2V_MODULE_INDEX = 1  # the encoder modules AnimateLCM-I2V's image features enter by


class TeacherShapedUNet:
    """What AnimateDiff-Evolved walks for a BK-SDM U-Net: the teacher's blocks, in order."""

    def __init__(self, unet, spec: UNetSpec):
        sequence = teacher_block_sequence(spec)
        layers = [layer for block in (*unet.input_blocks, *unet.output_blocks) for layer in block]

        def block_at(teacher):
            if teacher.student is not None:
                return _student_block(unet, teacher.student)
            # a removed block: a list of layers of its kinds, which takes its module out of the run
            return [next(layer for layer in layers if type(layer) is LAYER_KINDS[kind]) for kind in teacher.kinds]

        by_path = {path: [block_at(t) for t in sequence if t.address[0] == path] for path in ("input", "output")}
        self.input_blocks, self.output_blocks = by_path["input"], by_path["output"]
        self.middle_block = block_at(next(t for t in sequence if t.address == MIDDLE))


def _student_block(unet, address):
    kind, number = address
    return unet.middle_block if address == MIDDLE else getattr(unet, f"{kind}_blocks")[number]


class TeacherShapedWalk:
    """``AnimateDiffModel.get_unet_func`` for any MODEL: a BK-SDM U-Net in its teacher's shape,
    any other as the function it replaces gives it. One motion model may serve an SD MODEL and
    BK-SDM MODELs of several layouts in one graph, and ejection comes later than injection, so
    the shape is taken from the MODEL at each call."""

    def __init__(self, previous):
        self.previous = previous

    def __call__(self, animatediff, model):
        unet = self.previous(animatediff, model)
        spec = _bk_spec(model)
        return unet if spec is None else TeacherShapedUNet(unet, spec)


def _bk_spec(model) -> UNetSpec | None:
    try:
        spec = spec_of(model)
    except BKSDMError:  # not an SD 1.x/2.x MODEL: nothing to reshape
        return None
    return None if classify_layout(spec) in ("teacher", "custom") else spec


def motion_models(model) -> list:
    return [patcher.model for patcher in model.get_additional_models_with_key(ADE_KEY)]


class PlaceMotionModules:
    """A ModelPatcher callback (ON_REGISTER_ALL_HOOK_PATCHES): once per sampling run, before
    ComfyUI loads and so injects the MODEL, each motion model on it takes the MODEL's compute
    dtype and, on a BK-SDM layout, the teacher-shaped walk."""

    def __init__(self, spec: UNetSpec):
        self.spec = spec
        self._reported: set = set()

    def __call__(self, model, hooks, target_dict, model_options, registered):
        for animatediff in motion_models(model):
            compute_like(animatediff, model)
        if classify_layout(self.spec) != "teacher":
            place_motion_modules(model, self.spec, self._reported)


def compute_like(animatediff, model) -> None:
    """A motion model in the dtype its MODEL computes in. AnimateDiff-Evolved builds one in
    ComfyUI's global U-Net dtype (its Gen1 loader then casts it to its MODEL's), while the pack
    computes a MODEL on a CPU with native bf16 in bf16 (nodes/cpu.py): the U-Net's activations
    would meet fp32 weights inside the motion modules."""
    dtype = compute_dtype(model)
    if any(p.dtype != dtype for p in animatediff.parameters()):
        animatediff.to(dtype)


def place_motion_modules(model, spec: UNetSpec, reported: set) -> None:
    layout = classify_layout(spec)
    for animatediff in motion_models(model):
        if layout == "custom":
            raise UnsupportedModelError(
                path=None, expected="a BK-SDM U-Net of a published layout (Base, Small, Tiny), whose init map "
                "places each SD motion module",
                found="AnimateDiff motion modules on a U-Net of a custom layout, for which no map says where SD's "
                "modules belong", fix="use AnimateDiff with a BK-SDM Base, Small or Tiny model")
        if getattr(animatediff, "img_encoder", None) is not None:
            _refuse_lost_image_features(spec, layout)
        if not hasattr(animatediff, "get_unet_func"):
            raise UnsupportedModelError(
                path=None, expected=f"AnimateDiff-Evolved's motion model to take the U-Net to walk from its "
                f"get_unet_func, as its commits {TESTED} do", found=f"a {type(animatediff).__name__} without it: this "
                "AnimateDiff-Evolved places its modules in a way the pack cannot map onto BK-SDM's blocks",
                fix=UPDATE)
        if not isinstance(animatediff.get_unet_func, TeacherShapedWalk):
            animatediff.get_unet_func = TeacherShapedWalk(animatediff.get_unet_func)
        _report_unplaced(animatediff, spec, layout, reported)


def _refuse_lost_image_features(spec: UNetSpec, layout: str) -> None:
    """AnimateLCM-I2V adds its reference image's features in one module per SD encoder level, the
    one after the level's second res block (``VanillaTemporalModule.should_handle_img_features``).
    Where BK-SDM removed that block, the module does not run and the image would be ignored."""
    lost = [f"down {level}.{index}" for (path, level, index), home in motion_module_homes(spec).items()
            if path == "down" and index == I2V_MODULE_INDEX and home is None]
    if lost:
        raise UnsupportedModelError(
            path=None, expected="a motion model whose every contribution runs on BK-SDM "
            f"{layout}", found=f"AnimateLCM-I2V's image encoder, whose reference image enters through the "
            f"{', '.join(lost)} motion modules: BK-SDM {layout} removed their SD blocks, so the image would "
            "be ignored", fix="use AnimateLCM-I2V with an SD-1.5 model; on BK-SDM, the AnimateLCM text-to-video "
            "motion model (Load AnimateDiff Model), with IP-Adapter for a reference image")


def _report_unplaced(animatediff, spec: UNetSpec, layout: str, reported: set) -> None:
    unplaced = tuple(f"{path} {level}.{index}" for (path, level, index), home in motion_module_homes(spec).items()
                     if home is None and _module(animatediff, (path, level, index)) is not None)
    if unplaced and (layout, unplaced) not in reported:
        reported.add((layout, unplaced))
        log.info("BK-SDM %s: %d AnimateDiff motion module(s) of SD blocks it removed are not run: %s",
                 layout, len(unplaced), ", ".join(unplaced))


def _module(animatediff, place: MotionModule):
    path, level, index = place
    blocks = getattr(animatediff, BLOCK_LISTS[path], None)
    if blocks is None:
        return None
    modules = (blocks if path == "mid" else blocks[level]).motion_modules
    return modules[index]


def check_placement(model) -> None:
    """After injection: each motion module sits in its home student block, and only there."""
    spec = _bk_spec(model)
    if spec is None:
        return
    unet = model.model.diffusion_model
    found = {}
    for path, blocks in (("input", unet.input_blocks), ("middle", [unet.middle_block]), ("output", unet.output_blocks)):
        for number, block in enumerate(blocks):
            for layer in block or ():
                found.setdefault(id(layer), []).append((path, number))
    for animatediff in motion_models(model):
        for place, home in motion_module_homes(spec).items():
            module = _module(animatediff, place)
            if module is None:  # a file without this module (v1 and v3 have no middle one)
                continue
            where = found.get(id(module), [])
            if where == ([home] if home else []):
                continue
            name = "AnimateDiff's {} {}.{} motion module".format(*place)
            raise UnsupportedModelError(
                path=None, expected=f"{name} in BK-SDM {classify_layout(spec)}'s block {home}" if home else
                f"{name} out of the U-Net (BK-SDM {classify_layout(spec)} removed its SD block)",
                found=f"it in block(s) {', '.join(map(str, where)) or 'none'}: this AnimateDiff-Evolved places "
                f"its modules otherwise than its commits {TESTED}", fix=UPDATE)
