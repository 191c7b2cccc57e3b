"""CLIP and VAE from the loader equal transformers' CLIPTextModel and diffusers' AutoencoderKL."""

import pytest
import torch
from factories import TEXT_ENCODER_CONFIGS, random_text_encoder, random_vae, text_encoder_state_dict

from bksdm.errors import WeightsMismatchError
from bksdm.files.text_encoder import normalize_text_encoder
from bksdm.files.vae import check_vae, vae_tensors
from bksdm.layout.unet_spec import FAMILIES

TOLERANCE = 1e-4
PROMPT = "a watercolor painting of a lighthouse on a cliff at sunset"


@pytest.fixture(scope="module", params=["sd1", "sd2"])
def text_encoder(request):
    return request.param, random_text_encoder(request.param, seed=11)


@pytest.mark.host
@pytest.mark.parametrize("with_prefix", [True, False], ids=["text_model-prefix", "transformers5-no-prefix"])
@torch.no_grad()
def test_clip_matches_transformers(text_encoder, with_prefix, host, pack):
    family, reference = text_encoder
    state = normalize_text_encoder(text_encoder_state_dict(reference, with_prefix), FAMILIES[family], "te")
    clip = pack("nodes.build").build_clip(state, model_options={"dtype": torch.float32})
    tokens = clip.tokenize(PROMPT)
    ids = [token for token, _ in next(iter(tokens.values()))[0]]
    assert len(ids) == 77
    cond = clip.encode_from_tokens(tokens)
    # SD 1.x uses the last layer, SD 2.x the penultimate of 24, which is diffusers' 23-layer output.
    expected = reference(torch.tensor([ids])).last_hidden_state
    assert cond.shape == expected.shape
    assert (cond - expected).abs().max().item() < TOLERANCE


@pytest.mark.parametrize("family", ["sd1", "sd2"])
def test_text_encoder_of_the_other_family_is_refused(family):
    other = "sd2" if family == "sd1" else "sd1"
    state = {k: torch.empty(v.shape, device="meta") for k, v in _te_shapes(other).items()}
    with pytest.raises(WeightsMismatchError, match="text encoder"):
        normalize_text_encoder(state, FAMILIES[family], "text_encoder/model.safetensors")


def _te_shapes(family):
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        model = CLIPTextModel(CLIPTextConfig(**TEXT_ENCODER_CONFIGS[family]))
    return {f"text_model.{k}": v for k, v in model.state_dict().items()}


def test_incomplete_text_encoder_is_refused_not_left_to_produce_nan():
    state = {k: torch.empty(v.shape, device="meta") for k, v in _te_shapes("sd1").items()}
    del state["text_model.encoder.layers.5.mlp.fc2.weight"]
    with pytest.raises(WeightsMismatchError, match=r"1 missing \(text_model.encoder.layers.5.mlp.fc2.weight\)"):
        normalize_text_encoder(state, FAMILIES["sd1"], "te.safetensors")


@pytest.fixture(scope="module")
def vae():
    return random_vae(seed=12)


def test_vae_schema_is_exactly_diffusers_state_dict(vae):
    assert {k: tuple(v.shape) for k, v in vae.state_dict().items()} == vae_tensors("diffusers")


@pytest.mark.host
@torch.no_grad()
def test_vae_matches_diffusers(vae, host, pack):
    check_vae(vae.state_dict(), "vae")
    model = pack("nodes.build").build_vae(vae.state_dict())
    pixels = torch.rand(1, 64, 64, 3, generator=torch.Generator().manual_seed(3))  # ComfyUI images: BHWC, 0..1
    latent = model.encode(pixels)
    expected = vae.encode(pixels.permute(0, 3, 1, 2) * 2 - 1).latent_dist.mode()
    assert (latent - expected).abs().max().item() < TOLERANCE
    decoded = model.decode(expected)
    expected_pixels = (vae.decode(expected).sample / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1)
    assert (decoded - expected_pixels).abs().max().item() < TOLERANCE


def test_vae_with_a_missing_tensor_is_refused(vae):
    state = dict(vae.state_dict())
    del state["decoder.up_blocks.2.resnets.1.conv2.bias"]
    with pytest.raises(WeightsMismatchError, match=r"decoder\.up_blocks\.2\.resnets\.1\.conv2\.bias"):
        check_vae(state, "vae/diffusion_pytorch_model.safetensors")


def test_vae_with_old_diffusers_attention_names_is_accepted(vae):
    old = {"to_q": "query", "to_k": "key", "to_v": "value", "to_out.0": "proj_attn"}
    state = {}
    for k, v in vae.state_dict().items():
        for new, legacy in old.items():
            k = k.replace(f"attentions.0.{new}.", f"attentions.0.{legacy}.")
        state[k] = v
    check_vae(state, "vae")
