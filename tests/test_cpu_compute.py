"""How the pack's MODEL computes on the CPU. Attention: PyTorch SDPA for its own MODEL, through
ComfyUI's per-model override; an attention flag on ComfyUI's command line wins; GPUs and
ComfyUI's global choice are left alone (parity with diffusers under this kernel:
test_end_to_end). bf16: computed in bf16 where the CPU has it natively, not cast back."""

import pytest
import torch

import pack_import

pytestmark = pytest.mark.host


@pytest.fixture
def sdpa_calls(host, monkeypatch):
    """Counts the U-Net's calls into PyTorch's scaled-dot-product attention (ComfyUI's one entry to it)."""
    import comfy.ops

    calls = []
    real = comfy.ops.scaled_dot_product_attention

    def counting(*args, **kwargs):
        calls.append(args[0].shape)
        return real(*args, **kwargs)

    monkeypatch.setattr(comfy.ops, "scaled_dot_product_attention", counting)
    return calls


def load_pipeline(host, pipeline, weight_dtype="fp32"):
    """The pipeline loader's MODEL, CLIP and VAE."""
    loader = host.nodes.NODE_CLASS_MAPPINGS["BKSDMPipelineLoader"]
    return loader.execute(model_name=pipeline.path.name, weight_dtype=weight_dtype, prediction="auto").args


def load(host, pipeline, weight_dtype="fp32"):
    return load_pipeline(host, pipeline, weight_dtype)[:2]


def sample_once(model, clip, calls) -> int:
    """One KSampler step (the KSampler node's own function); how many SDPA calls it made."""
    import nodes

    positive = nodes.CLIPTextEncode().encode(clip, "a house")[0]
    negative = nodes.CLIPTextEncode().encode(clip, "")[0]
    latent = nodes.EmptyLatentImage().generate(64, 64, 1)[0]
    calls.clear()
    with torch.inference_mode():
        nodes.common_ksampler(model, 1, 1, 5.0, "euler", "normal", positive, negative, latent)
    return len(calls)


def test_cpu_model_samples_with_sdpa_and_says_so(host, sd1_pipeline, sdpa_calls, caplog):
    import comfy.ldm.modules.attention as attention

    with caplog.at_level("INFO"):
        model, clip = load(host, sd1_pipeline)
    calls = sample_once(model, clip, sdpa_calls)
    assert "optimized_attention_override" in model.model_options["transformer_options"]
    assert calls > 0
    assert caplog.text.count("attention on the CPU: PyTorch SDPA for this model") == 1
    assert attention.optimized_attention is not attention.attention_pytorch  # ComfyUI's own choice stands


@pytest.mark.parametrize("flag", ["use_quad_cross_attention", "use_split_cross_attention",
                                  "use_pytorch_cross_attention"])
def test_an_attention_flag_on_comfyuis_command_line_wins(host, sd1_pipeline, sdpa_calls, monkeypatch, caplog, flag):
    import comfy.cli_args

    monkeypatch.setattr(comfy.cli_args.args, flag, True)
    with caplog.at_level("INFO"):
        model, clip = load(host, sd1_pipeline)
    calls = sample_once(model, clip, sdpa_calls)
    assert "optimized_attention_override" not in model.model_options["transformer_options"]
    assert f"--{flag.replace('_', '-')}" in caplog.text
    assert calls == 0  # the flag was set after start-up: ComfyUI's kernel here is still its CPU default


def test_every_attention_flag_of_this_release_counts_as_a_choice(host, monkeypatch):
    import comfy.cli_args

    attention_flags = [a for a in vars(comfy.cli_args.args) if a.startswith("use_") and a.endswith("_attention")]
    assert {"use_quad_cross_attention", "use_split_cross_attention", "use_pytorch_cross_attention"} <= set(
        attention_flags)
    pack_attention = pack_import.pack_module("nodes.cpu")
    for name in attention_flags:
        monkeypatch.setattr(comfy.cli_args.args, name, True)
        assert pack_attention.attention_flags_given() == [f"--{name.replace('_', '-')}"]
        monkeypatch.setattr(comfy.cli_args.args, name, False)


def test_gpu_models_keep_comfyuis_choice(host, monkeypatch):
    """A MODEL whose load device is a GPU gets no override (its device is only read, never used here)."""
    import comfy.model_patcher

    pack_attention = pack_import.pack_module("nodes.cpu")
    patcher = comfy.model_patcher.ModelPatcher(torch.nn.Linear(1, 1), load_device=torch.device("cuda", 0),
                                               offload_device=torch.device("cpu"))
    assert pack_attention.prefer_sdpa(patcher) is False
    assert "optimized_attention_override" not in patcher.model_options["transformer_options"]


def test_bf16_choice_computes_in_bf16_where_the_cpu_has_it(host, sd1_pipeline, sdpa_calls):
    """The layers' inputs during a sampling step: bf16 on a CPU with AVX512-BF16/AMX, else ComfyUI's
    fp32 computation of the bf16 weights."""
    model, clip = load(host, sd1_pipeline, weight_dtype="bf16")
    unet = model.model.diffusion_model
    assert unet.input_blocks[0][0].weight.dtype == torch.bfloat16
    seen = {}

    def recorder(name):
        def record(_module, inputs):
            seen.setdefault(name, inputs[0].dtype)  # returns None: the inputs go on unchanged
        return record

    linear = next(m for m in unet.modules() if isinstance(m, torch.nn.Linear))
    hooks = [layer.register_forward_pre_hook(recorder(name))
             for name, layer in (("conv", unet.input_blocks[0][0]), ("linear", linear))]
    try:
        sample_once(model, clip, sdpa_calls)
    finally:
        for hook in hooks:
            hook.remove()
    native = pack_import.pack_module("nodes.cpu").cpu_has_native_bf16()
    assert seen == dict.fromkeys(("conv", "linear"), torch.bfloat16 if native else torch.float32)
    # laid out for oneDNN's bf16 convolutions where they run, as ComfyUI's --force-channels-last would
    assert unet.input_blocks[0][0].weight.is_contiguous(memory_format=torch.channels_last) is native


# --- the default precision: bf16 where the CPU computes it natively, else ComfyUI's ------------


@pytest.mark.parametrize(("comfy_choice", "on_cpu", "native", "flags", "expected"), [
    (torch.float32, True, True, [], torch.bfloat16),  # AVX512-BF16/AMX: the fast faithful choice
    (torch.float32, True, False, [], torch.float32),  # no native bf16: bf16 would be slower than fp32
    (torch.float32, True, True, ["--force-fp32"], torch.float32),  # ComfyUI's flags always win
    (torch.float32, True, True, ["--fp32-unet"], torch.float32),
    (torch.float16, True, True, ["--fp16-unet"], torch.float16),
    (torch.float16, False, True, [], torch.float16),  # a GPU keeps ComfyUI's choice
    (torch.float32, False, True, [], torch.float32),
])
def test_the_default_precision_follows_the_cpu(host, comfy_choice, on_cpu, native, flags, expected):
    cpu = pack_import.pack_module("nodes.cpu")
    assert cpu.default_unet_dtype(comfy_choice, on_cpu, native, flags) == expected


def test_every_precision_flag_of_this_release_counts_as_a_choice(host, monkeypatch):
    import comfy.cli_args

    cpu = pack_import.pack_module("nodes.cpu")
    assert cpu.precision_flags_given() == ["--fp32-unet"]  # the test host's
    monkeypatch.setattr(comfy.cli_args.args, "fp32_unet", False)
    assert cpu.precision_flags_given() == []
    names = [n for n in vars(comfy.cli_args.args) if n in ("force_fp32", "force_fp16") or n.endswith("_unet")]
    assert {"force_fp32", "fp32_unet", "bf16_unet", "fp16_unet", "fp8_e4m3fn_unet"} <= set(names)
    for name in names:
        monkeypatch.setattr(comfy.cli_args.args, name, True)
        assert cpu.precision_flags_given() == [f"--{name.replace('_', '-')}"]
        monkeypatch.setattr(comfy.cli_args.args, name, False)


def test_the_default_on_this_cpu_and_a_flag_that_overrules_it(host, sd1_pipeline, monkeypatch):
    """weight_dtype default: bf16 on a CPU with native bf16, fp32 on one without; --fp32-unet
    keeps fp32 on either; fp32 chosen in the loader is fp32."""
    import comfy.cli_args

    native = pack_import.pack_module("nodes.cpu").cpu_has_native_bf16()
    monkeypatch.setattr(comfy.cli_args.args, "fp32_unet", False)  # the test host runs --fp32-unet
    model, _ = load(host, sd1_pipeline, weight_dtype="default")
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == (torch.bfloat16 if native else torch.float32)
    model, _ = load(host, sd1_pipeline, weight_dtype="fp32")
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32
    monkeypatch.setattr(comfy.cli_args.args, "fp32_unet", True)
    model, _ = load(host, sd1_pipeline, weight_dtype="default")
    assert model.model.diffusion_model.input_blocks[0][0].weight.dtype == torch.float32


# --- the VAE: bf16 by default where the U-Net is, channels-last activations, weights as stored ---


def test_every_vae_precision_flag_of_this_release_counts_as_a_choice(host, monkeypatch):
    import comfy.cli_args

    cpu = pack_import.pack_module("nodes.cpu")
    assert cpu.precision_flags_given("vae") == ["--fp32-vae"]  # the test host's
    monkeypatch.setattr(comfy.cli_args.args, "fp32_vae", False)
    assert cpu.precision_flags_given("vae") == []
    monkeypatch.setattr(comfy.cli_args.args, "cpu_vae", True)  # a device, not a precision
    assert cpu.precision_flags_given("vae") == []
    names = [n for n in vars(comfy.cli_args.args) if n.endswith("_vae") and n != "cpu_vae"]
    assert {"fp16_vae", "fp32_vae", "bf16_vae"} <= set(names)
    for name in [*names, "force_fp32", "force_fp16"]:
        monkeypatch.setattr(comfy.cli_args.args, name, True)
        assert cpu.precision_flags_given("vae") == [f"--{name.replace('_', '-')}"]
        monkeypatch.setattr(comfy.cli_args.args, name, False)


def activation_layouts(vae) -> list[bool]:
    """Decode one latent with the stock VAEDecode and encode the image with VAEEncode; whether the
    decoder's and then the encoder's first convolution saw a channels-last tensor."""
    import nodes

    seen = []
    hooks = [part.conv_in.register_forward_pre_hook(
        lambda _m, args: seen.append(args[0].is_contiguous(memory_format=torch.channels_last)))
        for part in (vae.first_stage_model.decoder, vae.first_stage_model.encoder)]
    try:
        with torch.inference_mode():
            image = nodes.VAEDecode().decode(vae, {"samples": torch.randn(1, 4, 8, 8)})[0]
            latent = nodes.VAEEncode().encode(vae, image)[0]["samples"]
    finally:
        for hook in hooks:
            hook.remove()
    assert torch.isfinite(image).all() and torch.isfinite(latent).all()
    assert latent.shape == (1, 4, 8, 8)
    return seen


def test_the_vae_follows_the_default_and_saves_with_the_stock_node(host, sd1_pipeline, monkeypatch, tmp_path):
    """weight_dtype default: a bf16 VAE computing on channels-last activations on a CPU with native
    bf16, fp32 elsewhere; fp32 in the loader or --fp32-vae keep fp32. Its weights keep their
    layout, so the stock VAE Save node writes it (safetensors takes contiguous tensors only)."""
    import comfy.cli_args
    import folder_paths
    from comfy_extras.nodes_model_merging import VAESave
    from safetensors.torch import load_file

    native = pack_import.pack_module("nodes.cpu").cpu_has_native_bf16()
    monkeypatch.setattr(comfy.cli_args.args, "fp32_vae", False)  # the test host runs --fp32-vae
    vae = load_pipeline(host, sd1_pipeline, "default")[2]
    assert vae.vae_dtype == (torch.bfloat16 if native else torch.float32)
    assert activation_layouts(vae) == [native, native]
    monkeypatch.setattr(folder_paths, "get_output_directory", lambda: str(tmp_path))
    VAESave().save(vae, "vae/bk-sdm")
    saved = load_file(next((tmp_path / "vae").glob("bk-sdm*.safetensors")))
    assert {k: v.dtype for k, v in saved.items()} == {k: v.dtype for k, v in vae.get_sd().items()}
    for weight_dtype, fp32_vae in (("fp32", False), ("default", True)):
        monkeypatch.setattr(comfy.cli_args.args, "fp32_vae", fp32_vae)
        vae = load_pipeline(host, sd1_pipeline, weight_dtype)[2]
        assert vae.vae_dtype == torch.float32
        assert activation_layouts(vae) == [False, False]
