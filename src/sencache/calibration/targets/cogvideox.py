"""What calibration needs from a CogVideoX pipeline: text conditioning, initial noise and the transformer call,
as ``CogVideoXPipeline.__call__`` makes them, so the measured trajectory is the one the pipeline samples.

CogVideoX batches CFG (uncond and cond in one call of batch 2). The sampler steps with that batched call's
combined output, exactly as the pipeline does; the measured branch's probes are batch-1 calls. Its default
scheduler for CogVideoX 1.5, ``CogVideoXDPMScheduler``, steps with the previous step's predicted clean sample,
which :meth:`CogVideoXTarget.sampler_step` carries per trajectory. ``use_dynamic_cfg`` and video sources are not
supported yet (refused with a clear error).
"""

from __future__ import annotations

import torch

from sencache.calibration.secants import SamplerStep
from sencache.calibration.targets.base import PipelineTarget
from sencache.errors import UnsupportedModelError


def is_cogvideox(pipe) -> bool:
    """True when ``pipe`` is a CogVideoXPipeline (by class name: not the image-to-video one)."""
    return type(pipe).__name__ == "CogVideoXPipeline"


class CogVideoXTarget(PipelineTarget):
    """Calibration view of a text-to-video CogVideoXPipeline."""

    family = "CogVideoX"

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        kw = self.settings
        config = self.transformer.config
        height = int(kw["height"] or config.sample_height * pipe.vae_scale_factor_spatial)
        width = int(kw["width"] or config.sample_width * pipe.vae_scale_factor_spatial)
        num_frames = int(kw["num_frames"] or config.sample_frames)
        tf, sf = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        latent_frames = (num_frames - 1) // tf + 1
        if config.patch_size_t is not None and latent_frames % config.patch_size_t:  # CogVideoX 1.5 pads, as here
            num_frames += (config.patch_size_t - latent_frames % config.patch_size_t) * tf
        self.height, self.width, self.num_frames = height, width, num_frames
        self.latent_shape = (1, (num_frames - 1) // tf + 1, config.in_channels, height // sf, width // sf)
        self.rotary = (pipe._prepare_rotary_positional_embeddings(height, width, self.latent_shape[1], self.device)
                       if config.use_rotary_positional_embeddings else None)
        self._generator: torch.Generator | None = None
        self.extra_inputs: dict = {}  # more transformer arguments (CogVideoX 1.5 I2V: ofs)

    def noise(self, seed: int) -> torch.Tensor:
        """The initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``. The
        pipeline goes on drawing the DPM scheduler's step noise from that generator: :meth:`sampler_step` does too."""
        _, _, c, _, _ = self.latent_shape
        self._generator = torch.Generator().manual_seed(seed)
        return self.pipe.prepare_latents(1, c, self.num_frames, self.height, self.width, self.dtype, self.device,
                                         self._generator)

    def encode_video(self, frames):
        """Not supported: raises :class:`UnsupportedModelError` (``--videos`` calibrates Wan pipelines only)."""
        raise UnsupportedModelError("calibrate --videos supports Wan pipelines only for now; calibrate CogVideoX "
                                    "from prompts (its own sampling trajectories)")

    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """One transformer call exactly as CogVideoXPipeline makes it (output in float32, as it casts)."""
        t = torch.as_tensor(t, device=x.device)
        x = self.model_input(self.pipe.scheduler.scale_model_input(x, t))
        return self.transformer(hidden_states=x, encoder_hidden_states=embeds, timestep=t.expand(x.shape[0]),
                                image_rotary_emb=self.rotary, attention_kwargs=self.attention_kwargs,
                                return_dict=False, **self.extra_inputs)[0].float()

    # -- what an image-to-video subclass changes (cogvideox_i2v_target) ------------------------------
    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The transformer's ``hidden_states`` for the scaled latent ``x``."""
        return x

    def cfg_output(self, cond, uncond, f_cond):
        """The pipeline's one batched call on [uncond, cond], combined; the sampler steps with it (a batch-1
        cond output could differ in the last bits, and the trajectory must be the pipeline's)."""
        both, g = torch.cat([uncond, cond]), self.guidance

        def combined(x, t, _f_c):
            f_u, f_c = self.forward(torch.cat([x, x]), t, both).chunk(2)
            return f_u + g * (f_c - f_u)

        return combined

    def sampler_step(self) -> SamplerStep:
        """The pipeline's scheduler step for the trajectory :meth:`noise` just started: the same generator (the
        DPM scheduler draws noise at every step) and, for DPM, the previous clean-sample estimate."""
        from diffusers import CogVideoXDPMScheduler

        generator = self._generator
        if not isinstance(self.pipe.scheduler, CogVideoXDPMScheduler):
            return lambda sched, out, t, x, k: sched.step(out, t, x, eta=0.0, generator=generator,
                                                          return_dict=False)[0].to(self.dtype)
        state = {"old": None}

        def dpm(sched, out, t, x, k):
            prev = sched.timesteps[k - 1] if k > 0 else None
            x_next, state["old"] = sched.step(out, state["old"], t, prev, x, eta=0.0, generator=generator,
                                              return_dict=False)
            return x_next.to(self.dtype)

        return dpm

    def forwards_per_step(self, guided: bool) -> int:
        """Transformer forwards per grid step, a batched CFG call counting as two: 3 without CFG, else 5
        (6 with ``guided``)."""
        return 3 if not self.cfg else (6 if guided else 5)  # a batched CFG call counts as two

