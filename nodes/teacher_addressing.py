"""A BK-SDM MODEL speaks the teacher's language to the rest of the graph.

Other nodes patch a MODEL in SD's terms: ControlNet and T2I-Adapter control per teacher
skip, replace patches keyed by teacher block address (IP-Adapter, SAG, PAG), block
patches that test teacher block numbers (Kohya Deep Shrink). One diffusion-model wrapper
(ComfyUI's patcher extension API), installed by the pack's loaders, translates all of
them on every U-Net call, through the one init map of ``bksdm.layout.addresses``:

- control goes onto the student's skips (``ControlRemap``);
- a replace patch runs at the student block initialised from its teacher block, sees the
  teacher's address and transformer index while it runs, and must fit that block's
  width; patches for removed teacher blocks are dropped, with one log line;
- block and attention patches see teacher block numbers;
- without a middle block, the bottom of the U-Net gets its own tensor (``separate_last_skip``).

A second wrapper, around sampling, refuses what cannot be mapped there (``RefuseUnmapped``):
a Control-LoRA, and whole weights merged in under SD's tensor names; a callback before it,
other packs that take SD's blocks by position from the U-Net object (``positional_packs``), and
gives AnimateDiff-Evolved's motion models the teacher's block sequence to place their modules
in, checked once they are in (``animatediff``).

What the wrappers build lives for one call, so a patch added, replaced or removed later is
always seen as it is.
"""

from __future__ import annotations

import functools
import inspect
import logging
import re

import comfy.controlnet
import comfy.patcher_extension

from ..bksdm.errors import PatchMisfitError, UnsupportedModelError
from ..bksdm.layout.addresses import Address, AttentionSite, TeacherAddresses, teacher_addresses
from ..bksdm.layout.controlnet import DEFAULT_ALIGNMENT, ControlRemap, skip_count
from ..bksdm.layout.unet_keys import MIDDLE
from ..bksdm.layout.unet_spec import UNetSpec
from ..bksdm.layout.variants import classify_layout
from ..bksdm.layout.weight_keys import sd_named_misfits
from .animatediff import PlaceMotionModules, check_placement
from .positional_packs import RefusePositionalPacks
from .weight_patches import whole_weight_shapes

log = logging.getLogger(__name__)

WRAPPER_KEY = "bksdm_teacher_addressing"
REPLACE_KINDS = ("attn1", "attn2")
BLOCK_PATCHES = ("input_block_patch", "input_block_patch_after_skip", "output_block_patch")
ATTENTION_PATCHES = ("attn1_patch", "attn2_patch", "attn1_output_patch", "attn2_output_patch", "middle_patch")


class AtTeacherSite:
    """A replace patch made for a teacher block, running at the student block that carries it.

    On the published layouts that block has the teacher block's width by construction (the
    map is checked for it); the check here catches a custom layout, where addresses stay as
    they are, and where SD-sized weights would otherwise be reshaped without a word."""

    def __init__(self, patch, teacher: Address, site: AttentionSite | None, kind: str, student: Address):
        self.patch, self.teacher, self.site, self.kind, self.student = patch, teacher, site, kind, student

    def __call__(self, q, k, v, extra_options):
        if self.site is not None and (q.shape[-1], extra_options["n_heads"]) != (self.site.width, self.site.heads):
            patch = patch_name(self.patch)
            raise PatchMisfitError(
                path=None, expected=f"the {self.kind} replace patch {patch} for SD block {self.teacher} to run at a "
                f"block of its width ({self.site.width} features, {self.site.heads} heads)",
                found=f"this U-Net's block {self.student} has {q.shape[-1]} features, "
                f"{extra_options['n_heads']} heads; run as it is, the patch's weights would be silently reshaped",
                fix=f"remove the node that adds this patch ({patch}) from this model's path, or use one made for "
                "this U-Net: SD patches map onto the published BK-SDM layouts (Base, Small, Tiny) only")
        return _as_teacher(self.patch, (q, k, v, extra_options), self.teacher, self.site)


def patch_name(patch) -> str:
    """A patch as far as Python knows it: its class or function, and the module or node pack that
    defines it (ComfyUI imports a custom node pack under its folder's path, so the folder names it)."""
    target = patch.func if isinstance(patch, functools.partial) else patch
    owner = target if inspect.isfunction(target) or inspect.ismethod(target) else type(target)
    module = getattr(owner, "__module__", None) or "an unknown module"
    package = module.split(".", 1)[0]
    if re.search(r"[/\\]", package):
        module = re.split(r"[/\\]", package)[-1].replace("_x_", ".")
    return f"{owner.__qualname__} (from {module})"


class SeesTeacherBlock:
    """A block or attention patch that reads transformer_options["block"] in SD's numbering."""

    def __init__(self, patch, addresses: TeacherAddresses, attention: bool):
        self.patch, self.addresses, self.attention = patch, addresses, attention

    def __call__(self, *args):
        teacher = self.addresses.teacher_block(args[-1].get("block"))
        site = self.addresses.teacher_sites.get(teacher) if self.attention else None
        return _as_teacher(self.patch, args, teacher, site)


def _as_teacher(patch, args, teacher: Address, site: AttentionSite | None):
    options = args[-1]  # ComfyUI passes its options dict last to every patch kind
    seen = {"block": teacher} if site is None else {"block": teacher, "transformer_index": site.index}
    saved = {key: options[key] for key in seen if key in options}
    options.update(seen)
    try:
        return patch(*args)
    finally:
        for key in seen:
            options.pop(key, None)
        options.update(saved)


def separate_last_skip(last_input_block: int):
    """For U-Nets without a middle block: ComfyUI adds the ControlNet's middle residual in
    place to the tensor at the bottom of the U-Net, which is then also the last skip, so it
    would be added twice. diffusers (where BK-SDM and its ControlNets were trained) adds it
    once; a copy of the bottom tensor makes ComfyUI do the same."""
    def patch(h, transformer_options):
        return h.clone() if transformer_options.get("block") == ("input", last_input_block) else h
    return patch


def _is_block_key(key) -> bool:
    return isinstance(key, tuple) and len(key) >= 2 and isinstance(key[0], str) and isinstance(key[1], int)


class TeacherAddressing:
    def __init__(self, spec: UNetSpec, alignment: str = DEFAULT_ALIGNMENT):
        self.addresses = teacher_addresses(spec)
        self.remap = ControlRemap.for_spec(spec, alignment)
        self.own_patches = [] if spec.has_middle else [separate_last_skip(skip_count(spec) - 1)]
        self._reported: set = set()

    def __call__(self, executor, x, timesteps=None, context=None, y=None, control=None, transformer_options=None,
                 **kwargs):
        if control is not None:
            control = self.remap.fit(control)
        return executor(x, timesteps, context, y, control, self.translate(transformer_options or {}), **kwargs)

    def translate(self, options: dict) -> dict:
        """The transformer options of one U-Net call, with every patch in the student's terms."""
        translated = dict(options)
        patches = dict(options.get("patches") or {})
        for kind in BLOCK_PATCHES + ATTENTION_PATCHES:
            if kind in patches:
                patches[kind] = [SeesTeacherBlock(p, self.addresses, kind in ATTENTION_PATCHES)
                                 for p in patches[kind]]
        if self.own_patches:
            patches["input_block_patch_after_skip"] = [*patches.get("input_block_patch_after_skip", []),
                                                       *self.own_patches]
        translated["patches"] = patches
        replace = options.get("patches_replace")
        if replace:
            translated["patches_replace"] = {kind: self._relocate(kind, table) if kind in REPLACE_KINDS else table
                                             for kind, table in replace.items()}
        return translated

    def _relocate(self, kind: str, table: dict) -> dict:
        relocated, stand_ins, dropped = {}, [], []
        for key, patch in table.items():
            if not _is_block_key(key):
                relocated[key] = patch
                continue
            teacher = tuple(key[:2])
            student = self.addresses.student_block(teacher)
            if student is None:
                dropped.append(key)
            elif teacher == MIDDLE and student != MIDDLE:
                stand_ins.append((key, student, patch))
            else:
                relocated[(*student, *key[2:])] = self._at(patch, teacher, kind, student)
        for key, student, patch in stand_ins:  # a block's own patch wins over the middle block's
            if any(_is_block_key(k) and tuple(k[:2]) == student for k in relocated):
                dropped.append(key)
            else:
                relocated[(*student, *key[2:])] = self._at(patch, MIDDLE, kind, student)
        self._report(kind, dropped, stand_ins)
        return relocated

    def _at(self, patch, teacher: Address, kind: str, student: Address) -> AtTeacherSite:
        return AtTeacherSite(patch, teacher, self.addresses.teacher_sites.get(teacher), kind, student)

    def _report(self, kind: str, dropped: list, stand_ins: list) -> None:
        report = (kind, tuple(dropped), tuple(key for key, _, _ in stand_ins))
        if report in self._reported or not (dropped or stand_ins):
            return
        self._reported.add(report)
        layout = self.addresses.layout
        if dropped:
            log.info("BK-SDM: %d %s patch(es) address SD blocks BK-SDM %s removed, not applied: %s",
                     len(dropped), kind, layout, ", ".join(map(str, dropped)))
        for key, student, _ in stand_ins:
            if key not in dropped:
                log.info("BK-SDM: %s patch for SD's middle block %s runs at BK-SDM %s's block %s (no middle block)",
                         kind, key, layout, student)


class RefuseUnmapped:
    """Before sampling, what the translation cannot carry stops with the pack's error instead of
    landing on other blocks."""

    def __init__(self, spec: UNetSpec):
        self.spec = spec

    def __call__(self, executor, *args, **kwargs):
        guider = executor.class_obj
        refuse_control_lora(getattr(guider, "conds", None) or {})
        refuse_sd_named_weights(guider.model_patcher, self.spec)
        return executor(*args, **kwargs)


def refuse_control_lora(conds: dict) -> None:
    """ComfyUI builds a Control-LoRA's ControlNet from the MODEL's own U-Net config and sets its
    SD-numbered weights into it by name, so on BK-SDM they would land on other blocks (or fail
    deep inside ComfyUI)."""
    for name, cond_list in conds.items():
        for cond in cond_list:
            control = cond.get("control")
            while control is not None:
                if isinstance(control, comfy.controlnet.ControlLora):  # it carries no file name; the cond is known
                    raise UnsupportedModelError(
                        path=None,
                        expected="a ControlNet or T2I-Adapter whose control the pack can move onto BK-SDM's blocks",
                        found=f"a Control-LoRA in the {name} conditioning: ComfyUI builds it from this MODEL's own "
                        "(BK-SDM) U-Net and sets its SD-numbered weights into it by name, where they would land on "
                        "other blocks",
                        fix="in the node that loads it (Load ControlNet Model), pick the full SD ControlNet of the "
                        "same kind instead (its residuals are mapped), or one trained for BK-SDM")
                control = getattr(control, "previous_controlnet", None)


def refuse_sd_named_weights(model, spec: UNetSpec) -> None:
    """Whole weights added under SD's tensor names (a stock merge with an SD model, a node that
    applies an SD U-Net offset) would change other tensors of a BK U-Net than their names say;
    the ones whose shapes show it are enough to know where they came from."""
    misfits = sd_named_misfits(whole_weight_shapes(model), spec)
    if not misfits:
        return
    key, found, own = misfits[0]
    raise UnsupportedModelError(
        path=None, expected="weight patches keyed by this BK-SDM U-Net's own tensor names (a merge of BK-SDM models "
        "of one layout, a LoRA)",
        found=f"{len({k for k, _, _ in misfits})} weight patch(es) keyed by SD's tensor names, each with SD's shape "
        f"for its name (e.g. {key}: {list(found)}, on BK-SDM {classify_layout(spec)} {list(own)}): a merge with "
        "an SD model by a stock merge node, or a node that applies SD U-Net weights by name (such as IC-Light); the "
        "patches whose shapes happen to fit would change other tensors than their names say",
        fix="merge SD models into BK-SDM with Merge SD Model into BK-SDM, which moves each SD tensor to the BK-SDM "
        "tensor initialised from it; remove nodes that apply an SD U-Net's weights by name from this model's path")


def set_teacher_addressing(model, spec: UNetSpec, alignment: str = DEFAULT_ALIGNMENT) -> None:
    """Install (or replace) the translation on a ModelPatcher, in place; the full SD U-Net needs none
    but the motion models' dtype.

    The sampling wrapper goes into the MODEL's options rather than beside the translation, since
    ComfyUI-BrushNet replaces a MODEL's own outer-sample wrappers wholesale (``model.wrappers.update``)."""
    diffusion_model = comfy.patcher_extension.WrappersMP.DIFFUSION_MODEL
    outer_sample = comfy.patcher_extension.WrappersMP.OUTER_SAMPLE
    before_wrappers = comfy.patcher_extension.CallbacksMP.ON_REGISTER_ALL_HOOK_PATCHES
    injected = comfy.patcher_extension.CallbacksMP.ON_INJECT_MODEL
    model.remove_wrappers_with_key(diffusion_model, WRAPPER_KEY)
    model.remove_callbacks_with_key(before_wrappers, WRAPPER_KEY)
    model.remove_callbacks_with_key(injected, WRAPPER_KEY)
    options = model.model_options.setdefault("transformer_options", {})
    options.get("wrappers", {}).get(outer_sample, {}).pop(WRAPPER_KEY, None)
    model.add_callback_with_key(before_wrappers, WRAPPER_KEY, PlaceMotionModules(spec))  # the teacher's too
    layout = classify_layout(spec)
    if layout == "teacher":
        return
    model.add_wrapper_with_key(diffusion_model, WRAPPER_KEY, TeacherAddressing(spec, alignment))
    comfy.patcher_extension.add_wrapper_with_key(outer_sample, WRAPPER_KEY, RefuseUnmapped(spec), options)
    model.add_callback_with_key(before_wrappers, WRAPPER_KEY, RefusePositionalPacks(layout))
    model.add_callback_with_key(injected, WRAPPER_KEY, check_placement)
