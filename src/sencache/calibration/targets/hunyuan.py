"""What calibration needs from a HunyuanVideo pipeline: its text conditioning (Llama hidden states under the prompt
template, their attention mask and the pooled CLIP embedding), the initial noise, the sigma grid and the
transformer call, as ``HunyuanVideoPipeline.__call__`` makes them, so the measured trajectory is the one the
pipeline samples.

``guidance_scale`` is HunyuanVideo's embedded guidance (passed ×1000 to the transformer); classifier-free guidance is
``true_cfg_scale`` with a negative prompt, two calls per step like the pipeline.
"""

from __future__ import annotations

import numpy as np
import torch

from sencache.calibration.targets.base import PipelineTarget
from sencache.errors import SenCacheError, UnsupportedModelError


def is_hunyuan_video(pipe) -> bool:
    """True when ``pipe`` is a HunyuanVideoPipeline (by class name)."""
    return type(pipe).__name__ == "HunyuanVideoPipeline"


class HunyuanVideoTarget(PipelineTarget):
    """Calibration view of a text-to-video HunyuanVideoPipeline."""

    family = "HunyuanVideo"
    extra_accepted = ("true_cfg_scale", "prompt_template")

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        kw = self.settings
        self.use_true_cfg()
        self.prompt_template = kw.get("prompt_template")
        height, width, num_frames = int(kw["height"]), int(kw["width"]), int(kw["num_frames"])
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise SenCacheError(f"HunyuanVideo needs height and width that are positive multiples of 16 "
                                f"(got {height}x{width})")
        self.height, self.width, self.num_frames = height, width, num_frames
        tf, sf = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        self.latent_shape = (1, self.transformer.config.in_channels, (num_frames - 1) // tf + 1, height // sf,
                             width // sf)

    def conditioning(self, prompt: str):
        """((embeds, pooled, mask), the negative prompt's or None) as the pipeline encodes them, per prompt."""
        if prompt not in self._embeds:
            template = {} if self.prompt_template is None else {"prompt_template": self.prompt_template}

            def encode(text):
                embeds, pooled, mask = self.pipe.encode_prompt(prompt=text, prompt_2=None, num_videos_per_prompt=1,
                                                               device=self.device,
                                                               max_sequence_length=self.max_sequence_length,
                                                               **template)
                return embeds.to(self.dtype), pooled.to(self.dtype), mask.to(self.dtype)

            with torch.no_grad():
                self._embeds[prompt] = (encode(prompt), encode(self.negative_prompt) if self.cfg else None)
        return self._embeds[prompt]

    def noise(self, seed: int) -> torch.Tensor:
        """The initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``."""
        return self.pipe.prepare_latents(1, self.latent_shape[1], self.height, self.width, self.num_frames,
                                         torch.float32, self.device, torch.Generator().manual_seed(seed))

    def encode_video(self, frames):
        """Not supported: raises :class:`UnsupportedModelError` (``--videos`` calibrates Wan pipelines only)."""
        raise UnsupportedModelError("calibrate --videos supports Wan pipelines only for now; calibrate HunyuanVideo "
                                    "from prompts (its own sampling trajectories)")

    def set_timesteps(self, scheduler, num_inference_steps: int) -> None:
        """The pipeline's grid: sigmas 1 .. 1/N (the scheduler applies its shift)."""
        sigmas = np.linspace(1.0, 0.0, num_inference_steps + 1)[:-1]
        scheduler.set_timesteps(sigmas=sigmas, device=self.device)

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds) -> torch.Tensor:
        """One transformer call exactly as HunyuanVideoPipeline makes it."""
        text, pooled, mask = embeds
        t = torch.as_tensor(t, device=x.device)
        guidance = torch.tensor([self.embedded_guidance] * x.shape[0], dtype=self.dtype, device=x.device) * 1000.0
        return self.transformer(hidden_states=x.to(self.dtype), timestep=t.expand(x.shape[0]).to(x.dtype),
                                encoder_hidden_states=text, encoder_attention_mask=mask, pooled_projections=pooled,
                                guidance=guidance, attention_kwargs=self.attention_kwargs, return_dict=False)[0]
