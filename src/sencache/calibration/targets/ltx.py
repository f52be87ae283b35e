"""What calibration needs from an LTX-Video pipeline: text conditioning (with its attention mask), the packed
initial noise, the shifted timestep grid and the transformer call, as ``LTXPipeline.__call__`` makes them, so
the measured trajectory is the one the pipeline samples.

LTX batches CFG (uncond and cond in one call); the sampler steps with that batched call's combined (and, with
``guidance_rescale``, rescaled) output, and the measured branch's probes are batch-1 calls. Its grid depends on
the video's size (the scheduler's shift ``mu`` grows with the token count), so calibration sets it the same way.
"""

from __future__ import annotations

import numpy as np
import torch

from sencache.calibration.targets.base import PipelineTarget
from sencache.errors import SenCacheError, UnsupportedModelError


def is_ltx(pipe) -> bool:
    """True when ``pipe`` is an LTXPipeline (by class name: not the image-to-video one)."""
    return type(pipe).__name__ == "LTXPipeline"


class LTXTarget(PipelineTarget):
    """Calibration view of a text-to-video LTXPipeline."""

    family = "LTX-Video"
    extra_accepted = ("frame_rate", "guidance_rescale")

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        kw = self.settings
        height, width, num_frames = int(kw["height"]), int(kw["width"]), int(kw["num_frames"])
        if height % 32 or width % 32 or height <= 0 or width <= 0:
            raise SenCacheError(f"LTX-Video needs height and width that are positive multiples of 32 "
                                f"(got {height}x{width})")
        self.height, self.width, self.num_frames = height, width, num_frames
        self.rescale = float(kw["guidance_rescale"] or 0.0)
        tf, sf = pipe.vae_temporal_compression_ratio, pipe.vae_spatial_compression_ratio
        self.latent_size = ((num_frames - 1) // tf + 1, height // sf, width // sf)
        self.rope_scale = (tf / float(kw["frame_rate"]), sf, sf)
        tokens = int(np.prod(self.latent_size))
        self.latent_shape = (1, tokens, self.transformer.config.in_channels)  # packed, as the pipeline keeps it

    def conditioning(self, prompt: str):
        """((embeds, mask), (negative embeds, mask) or None) as the pipeline encodes them, cached per prompt."""
        if prompt not in self._embeds:
            with torch.no_grad():
                cond, cond_mask, uncond, uncond_mask = self.pipe.encode_prompt(
                    prompt=prompt, negative_prompt=self.negative_prompt, do_classifier_free_guidance=self.cfg,
                    num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length, device=self.device)
            self._embeds[prompt] = ((cond, cond_mask), (uncond, uncond_mask) if uncond is not None else None)
        return self._embeds[prompt]

    def noise(self, seed: int) -> torch.Tensor:
        """The packed initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``."""
        return self.pipe.prepare_latents(1, self.latent_shape[2], self.height, self.width, self.num_frames,
                                         torch.float32, self.device, torch.Generator().manual_seed(seed))

    def encode_video(self, frames):
        """Not supported: raises :class:`UnsupportedModelError` (``--videos`` calibrates Wan pipelines only)."""
        raise UnsupportedModelError("calibrate --videos supports Wan pipelines only for now; calibrate LTX-Video "
                                    "from prompts (its own sampling trajectories)")

    def set_timesteps(self, scheduler, num_inference_steps: int) -> None:
        """The pipeline's grid: sigmas 1 .. 1/N, shifted by mu for this video's token count."""
        from diffusers.pipelines.ltx.pipeline_ltx import calculate_shift

        cfg = scheduler.config
        mu = calculate_shift(int(np.prod(self.latent_size)), cfg.get("base_image_seq_len", 256),
                             cfg.get("max_image_seq_len", 4096), cfg.get("base_shift", 0.5),
                             cfg.get("max_shift", 1.15))
        sigmas = np.linspace(1.0, 1 / num_inference_steps, num_inference_steps)
        scheduler.set_timesteps(sigmas=sigmas, mu=mu, device=self.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds) -> torch.Tensor:
        """One transformer call exactly as LTXPipeline makes it (output in float32, as it casts)."""
        text, mask = embeds
        t = torch.as_tensor(t, device=x.device)
        frames, height, width = self.latent_size
        return self.transformer(hidden_states=x.to(text.dtype), encoder_hidden_states=text,
                                timestep=self.timestep(t, x.shape[0]), encoder_attention_mask=mask,
                                num_frames=frames, height=height, width=width, rope_interpolation_scale=self.rope_scale,
                                attention_kwargs=self.attention_kwargs, return_dict=False)[0].float()

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """The transformer's ``timestep`` argument (the image-to-video subclass gives one per token)."""
        return t.expand(batch)

    def cfg_output(self, cond, uncond, f_cond):
        """The pipeline's one batched call on [uncond, cond], combined (and rescaled when asked)."""
        from diffusers.pipelines.ltx.pipeline_ltx import rescale_noise_cfg

        both = (torch.cat([uncond[0], cond[0]]), torch.cat([uncond[1], cond[1]]))
        g, rescale = self.guidance, self.rescale

        def combined(x, t, _f_c):
            f_u, f_c = self.forward(torch.cat([x, x]), t, both).chunk(2)
            out = f_u + g * (f_c - f_u)
            return rescale_noise_cfg(out, f_c, guidance_rescale=rescale) if rescale > 0 else out

        return combined

    def forwards_per_step(self, guided: bool) -> int:
        """Transformer forwards per grid step, a batched CFG call counting as two: 3 without CFG, else 5
        (6 with ``guided``)."""
        return 3 if not self.cfg else (6 if guided else 5)  # a batched CFG call counts as two
