"""What calibration needs from a Wan pipeline: its text conditioning, initial noise, VAE and one transformer call.

:class:`WanTarget` reproduces exactly what ``WanPipeline.__call__`` does around the transformer, so the
measured trajectory is the one the pipeline samples. :func:`target_for` picks the target for a pipeline
(Wan only for now) and refuses others with a message that names the model.
"""

from __future__ import annotations

import inspect

import numpy as np
import torch

from sencache.calibration.secants import Denoiser, SamplerOutput
from sencache.calibration.videos import resize_video
from sencache.errors import SenCacheError, UnsupportedModelError
from sencache.runtime.call_defaults import call_defaults


# --------------------------------------------------------------------------------------------
# model adapter: what calibration needs from a pipeline
# --------------------------------------------------------------------------------------------
def _is_wan(pipe) -> bool:
    try:
        from diffusers import WanPipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(pipe, WanPipeline)


class WanTarget:
    """Calibration view of a (text-to-video) WanPipeline: encode, initial noise, denoisers, VAE."""

    ACCEPTED = ("height", "width", "num_frames", "guidance_scale", "negative_prompt", "max_sequence_length",
                "attention_kwargs")

    def __init__(self, pipe, pipe_kwargs: dict):
        self.pipe = pipe
        unknown = sorted(set(pipe_kwargs) - set(self.ACCEPTED))
        if unknown:
            raise SenCacheError(
                f"calibrate() got unsupported pipeline argument(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(self.ACCEPTED)}"
            )
        if getattr(pipe, "transformer", None) is None or getattr(pipe, "transformer_2", None) is not None:
            raise UnsupportedModelError(
                "calibrate supports Wan pipelines with one transformer; a two-expert Wan 2.2 pipeline needs one "
                "profile per expert, which is not supported yet"
            )
        defaults = {k: p.default for k, p in inspect.signature(type(pipe).__call__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        kw = {**{k: defaults.get(k) for k in self.ACCEPTED}, **call_defaults(pipe), **pipe_kwargs}
        self.transformer = pipe.transformer
        self.device = pipe._execution_device
        self.dtype = self.transformer.dtype
        self.guidance = float(kw["guidance_scale"] if kw["guidance_scale"] is not None else 1.0)
        self.cfg = self.guidance > 1.0
        self.negative_prompt = kw["negative_prompt"] or ""
        self.max_sequence_length = int(kw["max_sequence_length"])
        self.attention_kwargs = kw["attention_kwargs"]
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
        self._embeds: dict[str, tuple] = {}

    # -- conditioning --------------------------------------------------------------------------
    def conditioning(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt not in self._embeds:
            with torch.no_grad():  # as in the pipeline: the text encoder may take another kernel path with grad
                cond, uncond = self.pipe.encode_prompt(
                    prompt=prompt, negative_prompt=self.negative_prompt, do_classifier_free_guidance=self.cfg,
                    num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length, device=self.device,
                )
            self._embeds[prompt] = (cond.to(self.dtype), uncond.to(self.dtype) if uncond is not None else None)
        return self._embeds[prompt]

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

    def denoisers(self, prompt: str, guided: bool) -> tuple[Denoiser, SamplerOutput | None]:
        cond, uncond = self.conditioning(prompt)
        g = self.guidance

        def f_cond(x, t):
            return self.forward(x, t, cond)

        if not self.cfg:
            return f_cond, None

        def combine(x, t, f_c):
            f_u = self.forward(x, t, uncond)
            return f_u + g * (f_c - f_u)

        if guided:
            return (lambda x, t: combine(x, t, f_cond(x, t))), None
        return f_cond, combine

    def forwards_per_step(self, guided: bool) -> int:
        return 3 if not self.cfg else (6 if guided else 4)

    def branch(self, guided: bool) -> str:
        return "guided" if (guided and self.cfg) else "cond"


def target_for(pipe, pipe_kwargs: dict) -> WanTarget:
    if _is_wan(pipe):
        return WanTarget(pipe, pipe_kwargs)
    raise UnsupportedModelError(
        f"calibrate supports WanPipeline for now, got {type(pipe).__name__}; open an issue with the model name"
    )
