"""What calibration needs from a FLUX pipeline: its text conditioning (T5 and pooled CLIP embeddings, text ids),
the packed initial noise with its image ids, the shifted sigma grid and the transformer call, as
``FluxPipeline.__call__`` makes them, so the measured trajectory is the one the pipeline samples.

FLUX hands its transformer ``timestep / 1000``; the calibration grid stays in scheduler timesteps (0–1000), the
units the adapter converts back to, so one profile serves the rule at run time. ``guidance_scale`` is FLUX's
embedded (distilled) guidance; classifier-free guidance is ``true_cfg_scale`` with a negative prompt, two calls
per step like the pipeline.
"""

from __future__ import annotations

import numpy as np
import torch

from sencache.calibration.targets.base import PipelineTarget
from sencache.errors import SenCacheError, UnsupportedModelError


def is_flux(pipe) -> bool:
    """True when ``pipe`` is a FluxPipeline (by class name)."""
    return type(pipe).__name__ == "FluxPipeline"


class FluxTarget(PipelineTarget):
    """Calibration view of a text-to-image FluxPipeline."""

    family = "FLUX"
    extra_accepted = ("true_cfg_scale", "joint_attention_kwargs")

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        kw = self.settings
        self.use_true_cfg()
        self.attention_kwargs = kw.get("joint_attention_kwargs") or {}
        scale = pipe.vae_scale_factor
        height = int(kw.get("height") or pipe.default_sample_size * scale)
        width = int(kw.get("width") or pipe.default_sample_size * scale)
        if height % (scale * 2) or width % (scale * 2) or height <= 0 or width <= 0:
            raise SenCacheError(f"FLUX needs height and width that are positive multiples of {scale * 2} "
                                f"(got {height}x{width})")
        self.height, self.width, self.num_frames = height, width, 1
        tokens = (height // (scale * 2)) * (width // (scale * 2))
        self.latent_shape = (1, tokens, self.transformer.config.in_channels)  # packed 2x2 patches, as the pipeline
        self.image_ids = None
        self._embed_dtype = self.dtype

    def conditioning(self, prompt: str):
        """((embeds, pooled, text ids), the negative prompt's or None) as the pipeline encodes them, per prompt."""
        if prompt not in self._embeds:
            with torch.no_grad():
                cond = self.pipe.encode_prompt(prompt=prompt, prompt_2=None, device=self.device,
                                               num_images_per_prompt=1, max_sequence_length=self.max_sequence_length)
                uncond = self.pipe.encode_prompt(prompt=self.negative_prompt, prompt_2=None, device=self.device,
                                                 num_images_per_prompt=1,
                                                 max_sequence_length=self.max_sequence_length) if self.cfg else None
            self._embed_dtype = cond[0].dtype
            self._embeds[prompt] = (cond, uncond)
        return self._embeds[prompt]

    def noise(self, seed: int) -> torch.Tensor:
        """The packed initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``."""
        latents, self.image_ids = self.pipe.prepare_latents(
            1, self.transformer.config.in_channels // 4, self.height, self.width, self._embed_dtype, self.device,
            torch.Generator().manual_seed(seed))
        return latents

    def encode_video(self, frames):
        """Not supported: raises :class:`UnsupportedModelError` (``--videos`` calibrates Wan pipelines only)."""
        raise UnsupportedModelError("calibrate --videos supports Wan pipelines only for now; calibrate FLUX from "
                                    "prompts (its own sampling trajectories)")

    def set_timesteps(self, scheduler, num_inference_steps: int) -> None:
        """The pipeline's grid: sigmas 1 .. 1/N, shifted by mu for this image's token count."""
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        cfg = scheduler.config
        sigmas = None if cfg.get("use_flow_sigmas") else np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        mu = calculate_shift(self.latent_shape[1], cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
        if sigmas is None:
            scheduler.set_timesteps(num_inference_steps, mu=mu, device=self.device)
        else:
            scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds) -> torch.Tensor:
        """One transformer call exactly as FluxPipeline makes it (the timestep divided by 1000)."""
        text, pooled, text_ids = embeds
        t = torch.as_tensor(t, device=x.device)
        guidance = None
        if self.transformer.config.guidance_embeds:
            guidance = torch.full([1], self.embedded_guidance, device=x.device, dtype=torch.float32).expand(x.shape[0])
        timestep = t.expand(x.shape[0]).to(x.dtype)
        return self.transformer(hidden_states=x, timestep=timestep / 1000, guidance=guidance,
                                pooled_projections=pooled, encoder_hidden_states=text, txt_ids=text_ids,
                                img_ids=self.image_ids, joint_attention_kwargs=self.attention_kwargs,
                                return_dict=False)[0]
