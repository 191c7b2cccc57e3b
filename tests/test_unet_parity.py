"""The loaded MODEL computes what diffusers' UNet2DConditionModel computes, on the same weights.

All nine real BK-SDM configs at full size, random weights, fp32 on the CPU.
"""

import pytest
import torch
from factories import BK_CONFIGS, random_unet, unet_config

from bksdm.files.components import UNetWeights
from bksdm.files.unet_config import spec_from_diffusers_config
from bksdm.layout.unet_keys import convert_diffusers_unet
from bksdm.layout.variants import VARIANTS, classify_layout

TIMESTEPS = [999, 500, 20]
TOLERANCE = 1e-4


def _load(pack, name, prediction="epsilon", seed=0):
    config = unet_config(name)
    reference = random_unet(config, seed)
    spec = spec_from_diffusers_config(config, name)
    state = convert_diffusers_unet(reference.state_dict(), spec, name, spec.describe())
    model = pack("nodes.build").build_model(UNetWeights(spec, state, name), torch.float32, prediction)
    return reference, spec, model


def _inputs(spec, batch=3, size=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 4, size, size, generator=g)
    context = torch.randn(batch, 77, spec.family.context_dim, generator=g)
    return x, context


@pytest.mark.parametrize("name", BK_CONFIGS)
@torch.no_grad()
def test_noise_prediction_matches_diffusers(name, pack):
    reference, spec, patcher = _load(pack, name)
    base = patcher.model
    assert type(base.model_config).__name__ == {"sd1": "SD15", "sd2": "SD20"}[spec.family.name]
    registry = {(v.family, v.layout): v.unet_params for v in VARIANTS.values()}
    assert sum(p.numel() for p in base.diffusion_model.parameters()) == registry[spec.family.name,
                                                                                 classify_layout(spec)]
    x, context = _inputs(spec)
    sampling = base.model_sampling
    sigma = torch.stack([sampling.sigma(torch.tensor(float(t))) for t in TIMESTEPS])
    assert torch.equal(sampling.timestep(sigma).round(), torch.tensor(TIMESTEPS, dtype=torch.float32))
    # What a sampler calls: denoised = x - sigma * eps for an epsilon model.
    denoised = base.apply_model(x, sigma, c_crossattn=context)
    eps = (x - denoised) / sigma.view(-1, 1, 1, 1)
    scaled = x / (sigma.view(-1, 1, 1, 1) ** 2 + 1).sqrt()
    expected = reference(scaled, torch.tensor(TIMESTEPS), encoder_hidden_states=context).sample
    assert expected.abs().mean() > 0.1  # the comparison is not between near-zero outputs
    assert (eps - expected).abs().max().item() < TOLERANCE


@torch.no_grad()
def test_v_prediction_is_set_at_construction(pack):
    """A v-prediction MODEL turns the same U-Net output into x0 by the v formula, and says so."""
    import comfy.model_base

    _, spec, patcher = _load(pack, "v1_bk_tiny", prediction="v_prediction")
    base = patcher.model
    assert base.model_type == comfy.model_base.ModelType.V_PREDICTION  # what Save Checkpoint records
    x, context = _inputs(spec, batch=1)
    sigma = base.model_sampling.sigma(torch.tensor([500.0]))
    scaled = x / (sigma**2 + 1).sqrt()
    v = base.diffusion_model(scaled, timesteps=torch.tensor([500.0]), context=context)
    denoised = base.apply_model(x, sigma, c_crossattn=context)
    expected = x / (sigma**2 + 1) - v * sigma / (sigma**2 + 1).sqrt()
    assert (denoised - expected).abs().max().item() < TOLERANCE


@torch.no_grad()
def test_fp16_weight_dtype_stores_fp16_and_still_predicts_the_same_noise(pack):
    reference, spec, full = _load(pack, "v1_bk_tiny")
    state = {k: v.half() for k, v in reference.state_dict().items()}
    half = pack("nodes.build").build_model(
        UNetWeights(spec, convert_diffusers_unet(state, spec, "fp16", "tiny"), "fp16"),
        torch.float16, "epsilon")
    assert {p.dtype for p in half.model.diffusion_model.parameters()} == {torch.float16}
    x, context = _inputs(spec, batch=1)
    sigma = full.model.model_sampling.sigma(torch.tensor([500.0]))
    exact = full.model.apply_model(x, sigma, c_crossattn=context)
    rounded = half.model.apply_model(x, sigma, c_crossattn=context)
    error = (exact - rounded).abs().max().item()
    assert 0 < error < 0.05 * exact.abs().max().item()  # fp16 rounding, not a different network
