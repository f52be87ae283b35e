"""The LTX-Video member of the demo family: a tiny ``LTXPipeline`` over the same clips and captions.

Like LTX-Video it is a rectified-flow model whose transformer takes packed tokens, cross-attends to a T5
text encoding (padding masked in the transformer, not in the encoder) and sees its timestep through adaLN;
the scheduler shifts its steps by the sequence length as LTX's does (about shift 2 for our 320 tokens). Its
``AutoencoderKLLTXVideo`` patchifies 2x2 and has one space-time halving, so a 9x32x32 clip becomes an
8-channel 5x8x8 latent, the size of the Wan demo model's.
"""

from __future__ import annotations

import torch

from sencache.demo_model.build import TEXT_LEN, assemble_pipeline, build_t5_encoder, frames_to_pixels
from sencache.demo_model.data import FRAMES, SIZE

LATENT_CHANNELS = 8
VAE_CLASS = "AutoencoderKLLTXVideo"
SHIFT = 2.0  # the shift LTX's scheduler gives a 320-token video: train where sampling spends its steps
FRAME_RATE = 25  # LTXPipeline's default; it scales the temporal RoPE positions

TRANSFORMER_CONFIG = dict(
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    patch_size=1,
    patch_size_t=1,
    num_attention_heads=4,
    attention_head_dim=32,
    cross_attention_dim=128,
    num_layers=8,
    caption_channels=64,
)


#: 9x32x32 RGB <-> 8x5x8x8 (2x2 patches, then one space-time halving); latents_mean / latents_std (buffers of the
#: VAE) are set by train_vae from measured statistics
VAE_CONFIG = dict(
    block_out_channels=(16, 32),
    decoder_block_out_channels=(16, 32),
    layers_per_block=(1, 1, 1),
    decoder_layers_per_block=(1, 1, 1),
    spatio_temporal_scaling=(True, False),
    decoder_spatio_temporal_scaling=(True, False),
    down_block_types=("LTXVideoDownBlock3D",) * 2,
    decoder_inject_noise=(False,) * 3,
    downsample_type=("conv",) * 2,
    upsample_residual=(False,) * 2,
    upsample_factor=(1,) * 2,
    patch_size=2,
    latent_channels=LATENT_CHANNELS,
)

#: LTX-Video's scheduler: flow matching with a resolution-dependent shift
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, use_dynamic_shifting=True, base_shift=0.95, max_shift=2.05,
    base_image_seq_len=1024, max_image_seq_len=4096,
)


def build_transformer(seed: int = 0, **overrides):
    """An untrained ``LTXVideoTransformer3DModel`` (``TRANSFORMER_CONFIG`` with ``overrides``), seeded."""
    from diffusers import LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    return LTXVideoTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_vae(seed: int = 0, **overrides):
    """An untrained ``AutoencoderKLLTXVideo`` (``VAE_CONFIG`` with ``overrides``), seeded with ``seed``."""
    from diffusers import AutoencoderKLLTXVideo

    torch.manual_seed(seed)
    return AutoencoderKLLTXVideo(**{**VAE_CONFIG, **overrides})


def build_scheduler():
    """LTX-Video's flow-matching Euler scheduler, shifted by the sequence length (``SCHEDULER_CONFIG``)."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    return FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)


def build_pipeline(words: list[str], seed: int = 0, vae=None, text_encoder_overrides=None, **transformer_overrides):
    """A complete demo LTXPipeline with an untrained transformer and T5 text encoder (and VAE, unless given)."""
    from diffusers import LTXPipeline

    return assemble_pipeline(LTXPipeline, words, seed, vae, text_encoder_overrides, transformer_overrides,
                             text_encoder=build_t5_encoder, transformer=build_transformer, new_vae=build_vae,
                             scheduler=build_scheduler)


def set_latent_stats(vae, mean: list[float], std: list[float]) -> None:
    """LTXPipeline undoes ``(z - latents_mean) * scaling_factor / latents_std``: the VAE's buffers hold them."""
    vae.latents_mean.copy_(torch.tensor(mean))
    vae.latents_std.copy_(torch.tensor(std))


@torch.no_grad()
def encode_clips(vae, frames) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> the normalised latent LTXPipeline denoises, (B, C, F, H, W), before packing."""
    z = vae.encode(frames_to_pixels(frames).to(vae.device)).latent_dist.mean
    mean, std = vae.latents_mean.view(1, -1, 1, 1, 1), vae.latents_std.view(1, -1, 1, 1, 1)
    return (z - mean) * vae.config.scaling_factor / std


def training_example(pipe, x0: torch.Tensor, captions: list[str],
                     generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """The transformer's keyword arguments for noised ``x0`` and the velocity it should predict (rectified flow,
    LTX's objective, on packed tokens), through the pipeline's own text path."""
    b, _, frames, height, width = x0.shape
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    u = torch.rand(b, generator=generator).to(x0.device)
    sigma = SHIFT * u / (1 + (SHIFT - 1) * u)
    s = sigma.view(b, 1, 1, 1, 1)
    pack = lambda z: pipe._pack_latents(z, pipe.transformer_spatial_patch_size,  # noqa: E731
                                        pipe.transformer_temporal_patch_size)
    xt = pack((1 - s) * x0 + s * noise)
    text, mask = pipe._get_t5_prompt_embeds(captions, max_sequence_length=TEXT_LEN, device=x0.device)
    rope_scale = (pipe.vae_temporal_compression_ratio / FRAME_RATE, pipe.vae_spatial_compression_ratio,
                  pipe.vae_spatial_compression_ratio)
    inputs = dict(hidden_states=xt, encoder_hidden_states=text, timestep=sigma * 1000.0, encoder_attention_mask=mask,
                  num_frames=frames, height=height, width=width, rope_interpolation_scale=rope_scale)
    return inputs, pack(noise - x0)


def call_kwargs() -> dict:
    """The clip size and text length the model was trained for, as LTXPipeline call arguments."""
    return dict(num_frames=FRAMES, height=SIZE, width=SIZE, max_sequence_length=TEXT_LEN)


def load_vae(folder):
    """The member's trained ``AutoencoderKLLTXVideo`` from ``folder``."""
    import diffusers

    return getattr(diffusers, VAE_CLASS).from_pretrained(folder)
