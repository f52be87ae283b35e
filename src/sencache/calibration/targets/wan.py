"""What calibration needs from a Wan pipeline: its text conditioning, initial noise, VAE and one transformer call.

:class:`WanTarget` reproduces exactly what ``WanPipeline.__call__`` does around the transformer, so the
measured trajectory is the one the pipeline samples (:func:`sencache.calibration.targets.target_for` picks it).
"""

from __future__ import annotations

import numpy as np
import torch

from sencache.calibration.targets.base import PipelineTarget
from sencache.calibration.videos import resize_video
from sencache.errors import SenCacheError, UnsupportedModelError


# --------------------------------------------------------------------------------------------
# model adapter: what calibration needs from a pipeline
# --------------------------------------------------------------------------------------------
def is_wan(pipe) -> bool:
    """True when ``pipe`` is a WanPipeline (or a subclass of it); False if diffusers has no WanPipeline."""
    try:
        from diffusers import WanPipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(pipe, WanPipeline)


class WanTarget(PipelineTarget):
    """Calibration view of a (text-to-video) WanPipeline: encode, initial noise, denoisers, VAE."""

    family = "Wan"
    extra_accepted = ("guidance_scale_2",)

    def __init__(self, pipe, pipe_kwargs: dict):
        if getattr(pipe, "transformer", None) is None:
            raise UnsupportedModelError("calibrate needs the Wan pipeline's transformer (pipe.transformer is None)")
        super().__init__(pipe, pipe_kwargs)
        # Wan 2.2: transformer serves t >= boundary_ratio x num_train_timesteps, transformer_2 the steps below,
        # with its own guidance scale (guidance_scale_2, by default guidance_scale), as WanPipeline.__call__ does
        ratio = pipe.config.get("boundary_ratio") if hasattr(pipe.config, "get") else None
        second = getattr(pipe, "transformer_2", None)
        self.boundary = None
        if ratio is not None and second is not None:
            self.boundary = float(ratio) * pipe.scheduler.config.num_train_timesteps
        self.extra_inputs: dict = {}  # more transformer arguments (I2V: the image embeddings)
        g2 = self.settings.get("guidance_scale_2")
        self.guidance_2 = float(g2) if g2 is not None else self.guidance
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
        """Video frames (uint8 (F, H, W, 3)), resized to the calibration size, as the normalised latent the
        pipeline denoises: the mode of the VAE's posterior, normalised by its ``latents_mean`` / ``latents_std``."""
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

    # -- experts ---------------------------------------------------------------------------------
    def experts(self) -> dict:
        """The denoising transformers by name: ``transformer``, and ``transformer_2`` (Wan 2.2's low-noise expert)."""
        if self.boundary is None:
            return {"transformer": self.transformer}
        return {"transformer": self.transformer, "transformer_2": self.pipe.transformer_2}

    def expert_at(self, t) -> str:
        """``transformer`` at or above Wan 2.2's boundary timestep (always, without one), else ``transformer_2``."""
        return "transformer" if self.boundary is None or float(t) >= self.boundary else "transformer_2"

    # -- the denoiser --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """One transformer call exactly as WanPipeline makes it, by the expert that serves ``t``."""
        model = self.experts()[self.expert_at(t)]
        t = torch.as_tensor(t, device=x.device)
        if self.pipe.config.expand_timesteps:
            mask = self.timestep_mask(x)
            timestep = (mask[:, ::2, ::2] * t).flatten().unsqueeze(0).expand(x.shape[0], -1)
        else:
            timestep = t.expand(x.shape[0])
        return model(hidden_states=self.model_input(x).to(self.dtype), timestep=timestep,
                     encoder_hidden_states=embeds, attention_kwargs=self.attention_kwargs, return_dict=False,
                     **self.extra_inputs)[0]

    # -- what an image-to-video subclass changes (wan_i2v_target) ----------------------------------
    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's ``hidden_states`` for the sampler's latent ``x``."""
        return x

    def timestep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """``expand_timesteps``: which latent cells (F, H, W) take the step's timestep (the others 0)."""
        return torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)

    def guidance_at(self, t) -> float:
        """The CFG scale at ``t``: ``guidance_scale`` for the first expert, ``guidance_scale_2`` for the second."""
        return self.guidance if self.expert_at(t) == "transformer" else self.guidance_2
