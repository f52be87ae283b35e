"""What calibration needs from a Wan pipeline: its text conditioning, initial noise, VAE and one transformer call.

:class:`WanTarget` reproduces exactly what ``WanPipeline.__call__`` does around the transformer, so the
measured trajectory is the one the pipeline samples (:func:`sencache.calibration.targets.target_for` picks it).
"""

from __future__ import annotations

import numpy as np
import torch

from sencache.calibration.target import PipelineTarget
from sencache.calibration.videos import resize_video
from sencache.errors import SenCacheError, UnsupportedModelError


# --------------------------------------------------------------------------------------------
# model adapter: what calibration needs from a pipeline
# --------------------------------------------------------------------------------------------
def is_wan(pipe) -> bool:
    try:
        from diffusers import WanPipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(pipe, WanPipeline)


class WanTarget(PipelineTarget):
    """Calibration view of a (text-to-video) WanPipeline: encode, initial noise, denoisers, VAE."""

    family = "Wan"

    def __init__(self, pipe, pipe_kwargs: dict):
        if getattr(pipe, "transformer", None) is None or getattr(pipe, "transformer_2", None) is not None:
            raise UnsupportedModelError(
                "calibrate supports Wan pipelines with one transformer; a two-expert Wan 2.2 pipeline needs one "
                "profile per expert, which is not supported yet"
            )
        super().__init__(pipe, pipe_kwargs)
        kw = self.settings
        height, width, num_frames = int(kw["height"]), int(kw["width"]), int(kw["num_frames"])
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise SenCacheError(f"height and width must be positive multiples of 16 (got {height}x{width})")
        tf, sf = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        if num_frames % tf != 1:  # the pipeline rounds the same way
            num_frames = num_frames // tf * tf + 1
        num_frames = max(num_frames, 1)
        patch = self.transformer.config.patch_size
        height, width = height // (sf * patch[1]) * (sf * patch[1]), width // (sf * patch[2]) * (sf * patch[2])
        if height <= 0 or width <= 0:
            raise SenCacheError(f"the video is smaller than one patch ({sf * patch[1]}x{sf * patch[2]} pixels)")
        self.height, self.width, self.num_frames = height, width, num_frames
        self.latent_shape = (1, self.transformer.config.in_channels, (num_frames - 1) // tf + 1, height // sf,
                             width // sf)

    def noise(self, seed: int) -> torch.Tensor:
        """The initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``."""
        generator = torch.Generator().manual_seed(seed)
        _, c, f, h, w = self.latent_shape
        return self.pipe.prepare_latents(1, c, self.height, self.width, self.num_frames, torch.float32, self.device,
                                         generator)

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        _, c, f, h, w = self.latent_shape
        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            raise UnsupportedModelError("encoding videos needs the pipeline's VAE, and this pipeline has none")
        video = resize_video(frames, self.num_frames, self.height, self.width)  # (F, H, W, 3) in [0, 255]
        video = (video / 127.5 - 1.0).permute(3, 0, 1, 2)[None].to(vae.device, vae.dtype)
        z = vae.encode(video).latent_dist.mode().float()
        cfg = vae.config
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1).to(z)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1).to(z)
            z = (z - mean) / std
        if tuple(z.shape) != self.latent_shape:
            raise SenCacheError(f"the VAE gave a latent {tuple(z.shape)}, expected {self.latent_shape}")
        return z.to(self.device)

    # -- the denoiser --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """One transformer call exactly as WanPipeline makes it."""
        t = torch.as_tensor(t, device=x.device)
        if self.pipe.config.expand_timesteps:
            mask = torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)
            timestep = (mask[:, ::2, ::2] * t).flatten().unsqueeze(0).expand(x.shape[0], -1)
        else:
            timestep = t.expand(x.shape[0])
        return self.transformer(hidden_states=x.to(self.dtype), timestep=timestep, encoder_hidden_states=embeds,
                                attention_kwargs=self.attention_kwargs, return_dict=False)[0]

    def cfg_output(self, cond, uncond, f_cond):
        """Wan calls cond and uncond separately; the sampler steps with uncond + g·(cond − uncond)."""
        g = self.guidance

        def combine(x, t, f_c):
            f_c = f_cond(x, t) if f_c is None else f_c
            f_u = self.forward(x, t, uncond)
            return f_u + g * (f_c - f_u)

        return combine

    def forwards_per_step(self, guided: bool) -> int:
        return 3 if not self.cfg else (6 if guided else 4)

