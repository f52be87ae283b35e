"""The Wan member of the demo family (the shipped model): :mod:`.build` holds its configs; this module gives it
the interface every member has (see :mod:`.systems`)."""

from __future__ import annotations

import torch

from sencache.demo_model.build import build_pipeline, build_vae, demo_call_kwargs, encode_clips, encode_text

__all__ = ["build_pipeline", "build_vae", "encode_clips", "load_vae", "set_latent_stats", "training_example",
           "call_kwargs"]

SHIFT = 2.0  # same shift as the sampling scheduler: train where sampling spends its steps


def load_vae(folder):
    """The member's trained ``AutoencoderKLWan`` from ``folder``."""
    from diffusers import AutoencoderKLWan

    return AutoencoderKLWan.from_pretrained(folder)


def set_latent_stats(vae, mean: list[float], std: list[float]) -> None:
    """WanPipeline undoes ``(z - latents_mean) / latents_std`` from the VAE's config."""
    vae.register_to_config(latents_mean=mean, latents_std=std)


def training_example(pipe, x0: torch.Tensor, captions: list[str],
                     generator: torch.Generator) -> tuple[dict, torch.Tensor]:
    """The transformer's keyword arguments for noised ``x0`` and the velocity it should predict (rectified flow,
    Wan's objective)."""
    b = x0.shape[0]
    # drawn on the CPU generator, then moved: the same numbers on every device
    noise = torch.randn(x0.shape, generator=generator).to(x0.device)
    u = torch.rand(b, generator=generator).to(x0.device)
    sigma = SHIFT * u / (1 + (SHIFT - 1) * u)  # the flow shift applied to a uniform draw
    s = sigma.view(b, 1, 1, 1, 1)
    xt = (1 - s) * x0 + s * noise
    text = encode_text(pipe.tokenizer, pipe.text_encoder, captions)
    return dict(hidden_states=xt, timestep=sigma * 1000.0, encoder_hidden_states=text), noise - x0


def call_kwargs() -> dict:
    """The clip size and text length the model was trained for, as WanPipeline call arguments."""
    return demo_call_kwargs()
