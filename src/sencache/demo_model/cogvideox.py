"""The CogVideoX member of the demo family: a tiny ``CogVideoXPipeline`` over the same clips and captions.

Like CogVideoX itself it is a v-prediction diffusion model (DDIM schedule with zero terminal SNR), with full
attention over text and video tokens and a T5 text encoder whose padding the pipeline does not mask. Its
``AutoencoderKLCogVideoX`` has three blocks (space /4) and one temporal halving, so a 9x32x32 clip becomes an
8-channel 5x8x8 latent, the size of the Wan demo model's; with 1x1 patches the transformer sees 320 video tokens.
"""

from __future__ import annotations

import torch

from sencache.demo_model.build import TEXT_LEN, assemble_pipeline, build_t5_encoder, frames_to_pixels
from sencache.demo_model.data import FRAMES, SIZE

LATENT_CHANNELS = 8
VAE_CLASS = "AutoencoderKLCogVideoX"

TRANSFORMER_CONFIG = dict(
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=LATENT_CHANNELS,
    out_channels=LATENT_CHANNELS,
    time_embed_dim=64,
    text_embed_dim=64,
    num_layers=8,
    sample_width=SIZE // 4,
    sample_height=SIZE // 4,
    sample_frames=FRAMES,
    patch_size=1,
    temporal_compression_ratio=2,
    max_text_seq_length=TEXT_LEN,
    use_rotary_positional_embeddings=False,  # CogVideoX-2B's fixed 3D sin-cos positions
)


#: 9x32x32 RGB <-> 8x5x8x8; scaling_factor is a placeholder until train_vae measures the latent's spread
VAE_CONFIG = dict(
    down_block_types=("CogVideoXDownBlock3D",) * 3,
    up_block_types=("CogVideoXUpBlock3D",) * 3,
    block_out_channels=(16, 32, 32),
    latent_channels=LATENT_CHANNELS,
    layers_per_block=1,
    norm_num_groups=8,
    temporal_compression_ratio=2,
    sample_height=SIZE,
    sample_width=SIZE,
    scaling_factor=1.0,
)

#: CogVideoX-2B's scheduler: v-prediction, zero terminal SNR, SNR shifted towards noise, trailing steps
SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
    prediction_type="v_prediction", rescale_betas_zero_snr=True, snr_shift_scale=3.0, timestep_spacing="trailing",
    clip_sample=False, set_alpha_to_one=True, steps_offset=0,
)


def build_transformer(seed: int = 0, **overrides):
    """An untrained ``CogVideoXTransformer3DModel`` (``TRANSFORMER_CONFIG`` with ``overrides``), seeded."""
    from diffusers import CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    return CogVideoXTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_vae(seed: int = 0, **overrides):
    """An untrained ``AutoencoderKLCogVideoX`` (``VAE_CONFIG`` with ``overrides``), seeded with ``seed``."""
    from diffusers import AutoencoderKLCogVideoX

    torch.manual_seed(seed)
    return AutoencoderKLCogVideoX(**{**VAE_CONFIG, **overrides})


def build_scheduler():
    """CogVideoX-2B's DDIM scheduler (``SCHEDULER_CONFIG``)."""
    from diffusers import CogVideoXDDIMScheduler

    return CogVideoXDDIMScheduler(**SCHEDULER_CONFIG)


def build_pipeline(words: list[str], seed: int = 0, vae=None, text_encoder_overrides=None, **transformer_overrides):
    """A complete demo CogVideoXPipeline with an untrained transformer and T5 text encoder (and VAE, unless given)."""
    from diffusers import CogVideoXPipeline

    return assemble_pipeline(CogVideoXPipeline, words, seed, vae, text_encoder_overrides, transformer_overrides,
                             text_encoder=build_t5_encoder, transformer=build_transformer, new_vae=build_vae,
                             scheduler=build_scheduler)


def set_latent_stats(vae, mean: list[float], std: list[float]) -> None:
    """CogVideoXPipeline divides latents by one ``scaling_factor`` (no shift): make the overall spread 1."""
    spread = (sum(s * s + m * m for m, s in zip(mean, std)) / len(std)) ** 0.5
    vae.register_to_config(scaling_factor=1.0 / spread)


@torch.no_grad()
def encode_clips(vae, frames) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> the latent CogVideoXPipeline denoises, (B, C, F, H, W) (the pipeline's own layout
    is (B, F, C, H, W); :func:`training_loss` permutes)."""
    return vae.encode(frames_to_pixels(frames).to(vae.device)).latent_dist.mean * vae.config.scaling_factor


def training_example(pipe, x0: torch.Tensor, captions: list[str],
                     generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """The transformer's keyword arguments for noised ``x0`` and the v it should predict (v-prediction on the
    scheduler's own noise levels), through the pipeline's own text path."""
    scheduler = pipe.scheduler
    b = x0.shape[0]
    x0 = x0.permute(0, 2, 1, 3, 4)  # (B, F, C, H, W) as CogVideoXPipeline hands it to the transformer
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (b,), generator=generator)
    abar = scheduler.alphas_cumprod[t].to(x0.device, x0.dtype).view(b, 1, 1, 1, 1)
    xt = abar.sqrt() * x0 + (1 - abar).sqrt() * noise
    text = pipe._get_t5_prompt_embeds(captions, max_sequence_length=TEXT_LEN, device=x0.device)
    inputs = dict(hidden_states=xt, encoder_hidden_states=text, timestep=t.to(x0.device))
    return inputs, abar.sqrt() * noise - (1 - abar).sqrt() * x0


def call_kwargs() -> dict:
    """The clip size and text length the model was trained for, as CogVideoXPipeline call arguments."""
    return dict(num_frames=FRAMES, height=SIZE, width=SIZE, max_sequence_length=TEXT_LEN)


def load_vae(folder):
    """The member's trained ``AutoencoderKLCogVideoX`` from ``folder``."""
    import diffusers

    return getattr(diffusers, VAE_CLASS).from_pretrained(folder)
