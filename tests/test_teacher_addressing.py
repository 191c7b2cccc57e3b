"""A BK-SDM MODEL answers to the teacher's block addresses: patches made for an SD block run
at the student block initialised from it and see the address they were registered for;
control lands on the student skips of the same meaning. Recorded on real ComfyUI U-Nets."""

import logging

import pytest
import torch
from factories import random_unet, unet_config
from test_addresses import STAND_IN, official

from bksdm.files.components import UNetWeights
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.addresses import teacher_addresses
from bksdm.layout.unet_keys import convert_diffusers_unet
from bksdm.layout.variants import classify_layout

pytestmark = pytest.mark.host
LAYOUTS = ["v1_bk_base", "v1_bk_small", "v1_bk_tiny", "v2-base-512_bk_tiny"]
TEACHER_ATTENTION = [("input", i) for i in (1, 2, 4, 5, 7, 8)] + [("middle", 0)] + \
    [("output", i) for i in range(3, 12)]


def bk_model(pack, name, config=None, seed=9, dtype=torch.float32):
    """A random BK U-Net as the pack's loaders return it (the translation installed)."""
    config = config or unet_config(name)
    spec = spec_from_diffusers_config(config, name)
    state = convert_diffusers_unet(random_unet(config, seed=seed).state_dict(), spec, name, name)
    state = {k: v.to(dtype) for k, v in state.items()}
    model = pack("nodes.build").build_model(UNetWeights(spec, state, name), dtype, "epsilon")
    pack("nodes.teacher_addressing").set_teacher_addressing(model, spec)
    return model, spec


def unet_blocks(unet):
    """(ComfyUI address, block) for every block of a ComfyUI U-Net, in the order it runs them."""
    groups = [("input", list(unet.input_blocks)), ("middle", [unet.middle_block] if unet.middle_block else []),
              ("output", list(unet.output_blocks))]
    for kind, blocks in groups:
        for number, block in enumerate(blocks):
            yield (kind, number), block


def attention_modules(unet):
    """(ComfyUI address, transformer block) for every attention block of a ComfyUI U-Net."""
    from comfy.ldm.modules.attention import SpatialTransformer

    for address, block in unet_blocks(unet):
        for layer in block:
            if isinstance(layer, SpatialTransformer):
                yield address, layer.transformer_blocks[0]


class Where:
    """Which student block is running: set by hooks on each attention's query projection."""

    def __init__(self, unet):
        self.block, self.handles = None, []
        for address, transformer in attention_modules(unet):
            for attn in (transformer.attn1, transformer.attn2):
                self.handles.append(attn.to_q.register_forward_pre_hook(self._at(address)))

    def _at(self, address):
        def hook(module, args):
            self.block = address
        return hook

    def remove(self):
        for handle in self.handles:
            handle.remove()


class Recorder:
    """A replace patch that computes plain attention and notes where it ran and what it saw."""

    def __init__(self, where, registered, calls):
        self.where, self.registered, self.calls = where, registered, calls

    def __call__(self, q, k, v, extra_options):
        from comfy.ldm.modules.attention import optimized_attention

        self.calls.append({"registered": self.registered, "ran_at": self.where.block, "saw": extra_options["block"],
                           "index": extra_options["transformer_index"], "width": q.shape[-1]})
        return optimized_attention(q, k, v, extra_options["n_heads"])


def run_unet(model, size=16, control=None, seed=4, options=None):
    g = torch.Generator().manual_seed(seed)
    context_dim = model.model.model_config.unet_config["context_dim"]
    x, context = torch.randn(1, 4, size, size, generator=g), torch.randn(1, 77, context_dim, generator=g)
    sigma = model.model.model_sampling.sigma(torch.tensor([500.0]))
    # The transformer options as the sampler passes them.
    options = dict(model.model_options["transformer_options"], wrappers=model.wrappers, **(options or {}))
    with torch.no_grad():
        return model.model.apply_model(x, sigma, c_crossattn=context, control=control, transformer_options=options)


@pytest.mark.parametrize("name", LAYOUTS)
def test_replace_patches_run_where_their_teacher_block_lives_on(name, host, pack, caplog):
    model, spec = bk_model(pack, name)
    addresses = teacher_addresses(spec)
    layout = classify_layout(spec)
    where, calls = Where(model.model.diffusion_model), []
    patched = model.clone()
    for kind, number in TEACHER_ATTENTION:  # as IP-Adapter registers them: (block, number) keys
        patched.set_model_attn2_replace(Recorder(where, (kind, number), calls), kind, number)
    patched.set_model_attn1_replace(Recorder(where, "sag", calls), "middle", 0, 0)  # as SAG registers it
    with caplog.at_level(logging.INFO):
        run_unet(patched)
        run_unet(patched)
    where.remove()
    cross = [c for c in calls if c["registered"] != "sag"]
    cross = cross[: len(cross) // 2]  # one U-Net call's worth
    ran = {c["ran_at"]: c for c in cross}
    assert len(ran) == len(cross), "no student block ran two teacher patches"
    student_sites = {address for address, _ in attention_modules(model.model.diffusion_model)}
    assert set(ran) == student_sites  # every student attention block ran a patch
    for student, call in ran.items():
        teacher = call["registered"]
        assert official(layout)[teacher] == student  # the patch of the teacher block it was initialised from
        assert call["saw"] == teacher and call["index"] == addresses.teacher_sites[teacher].index
        assert call["width"] == addresses.teacher_sites[teacher].width
    removed = [a for a in TEACHER_ATTENTION if a not in official(layout)]
    assert not {c["registered"] for c in cross} & set(removed)
    assert caplog.text.count(f"{len(removed)} attn2 patch(es) address SD blocks") == (1 if removed else 0)
    sag = [c for c in calls if c["registered"] == "sag"]
    assert len(sag) == 2 and {c["ran_at"] for c in sag} == {STAND_IN[layout] or ("middle", 0)}
    assert {c["saw"] for c in sag} == {("middle", 0)} and {c["index"] for c in sag} == {6}


@pytest.mark.parametrize("name", LAYOUTS)
def test_block_patches_see_the_teacher_numbers(name, host, pack):
    model, spec = bk_model(pack, name)
    layout = classify_layout(spec)
    seen = {"input_block_patch": [], "output_block_patch": [], "attn1_patch": []}
    patched = model.clone()
    patched.set_model_input_block_patch(lambda h, o: seen["input_block_patch"].append(o["block"]) or h)
    patched.set_model_output_block_patch(lambda h, hsp, o: seen["output_block_patch"].append(o["block"]) or (h, hsp))
    patched.set_model_attn1_patch(lambda n, c, v, o: seen["attn1_patch"].append((o["block"], o["transformer_index"]))
                                  or (n, c, v))
    run_unet(patched)
    teacher_of = {s: t for t, s in official(layout).items()}
    inputs = [b for b in teacher_of if b[0] == "input"]
    outputs = [b for b in teacher_of if b[0] == "output"]
    assert seen["input_block_patch"] == [teacher_of[b] for b in sorted(inputs)]
    assert seen["output_block_patch"] == [teacher_of[b] for b in sorted(outputs)]
    sites = teacher_addresses(spec).teacher_sites
    order = [teacher_of[student] for student, _ in attention_modules(model.model.diffusion_model)]
    assert seen["attn1_patch"] == [(teacher, sites[teacher].index) for teacher in order]


def test_a_patch_that_does_not_fit_its_block_is_refused_by_name(host, pack):
    # A custom layout (narrower than SD): no map, and SD-width weights would run reshaped.
    config = dict(unet_config("v1_bk_small"), block_out_channels=[256, 512, 1024, 1024])
    model, _ = bk_model(pack, "narrow", config)
    errors = pack("bksdm.errors")
    patched = model.clone()
    patched.set_model_attn2_replace(lambda q, k, v, o: q, "input", 1)
    expected = r"(?s)SD block \('input', 1\).*320 features.*256 features.*published BK-SDM layouts"
    with pytest.raises(errors.PatchMisfitError, match=expected):
        run_unet(patched)


@pytest.mark.parametrize("name", [*LAYOUTS, "v2-base-512_bk_base", "v2-base-512_bk_small"])
def test_t2i_features_land_after_the_last_res_block_of_their_level(name, host, pack, caplog):
    model, spec = bk_model(pack, name)
    seen = []
    probe = model.clone()  # records the tensor after each input block, control included
    probe.set_model_input_block_patch_after_skip(lambda h, o: seen.append((o["block"], h.clone())) or h)
    run_unet(probe)
    baseline = dict(seen)
    size, channels = 16, [320, 640, 1280, 1280]
    for level in range(len(channels)):
        feature = torch.randn(1, channels[level], size >> level, size >> level, generator=torch.Generator()
                              .manual_seed(level))
        teacher_entries = [None] * 12
        teacher_entries[3 * level + 2] = feature  # ComfyUI's T2I-Adapter: after each level's last res block
        seen.clear()
        with caplog.at_level(logging.WARNING):
            run_unet(probe, control={"input": teacher_entries[::-1]})
        changed = [block for block, h in seen if not torch.equal(h, baseline[block])]
        if level >= len(spec.levels):  # Tiny has no 8x8 level: the feature has nowhere to go
            assert changed == []
            continue
        # The feature lands at the student's (only) res block of its level, which patches see as the
        # teacher block it was initialised from, 3L + 1 ...
        assert changed[0] == ("input", 3 * level + 1)
        first = dict(seen)[changed[0]]
        assert torch.allclose(first - baseline[changed[0]], feature, atol=1e-5)  # ...and is the whole difference
    assert "could not be applied" not in caplog.text
