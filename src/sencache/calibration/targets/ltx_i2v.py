"""What calibration needs from an LTX-Video image-to-video pipeline, as ``LTXImageToVideoPipeline.__call__``
makes it: the text-to-video target's grid and batched CFG, plus the conditioning frame. ``prepare_latents``
VAE-encodes the image (sampling from the generator before the noise) into the first latent frame; every call
gives that frame's tokens timestep 0 (a per-token timestep), and the scheduler steps the other frames only, so
the first frame stays the image's. Every sample is conditioned on the one ``image`` of the calibration call.
"""

from __future__ import annotations

import torch

from sencache.calibration.targets.ltx import LTXTarget


def is_ltx_i2v(pipe) -> bool:
    """True when ``pipe`` is an LTXImageToVideoPipeline (by class name)."""
    return type(pipe).__name__ == "LTXImageToVideoPipeline"


class LTXImageToVideoTarget(LTXTarget):
    """Calibration view of an LTXImageToVideoPipeline."""

    family = "LTX-Video image-to-video"
    extra_accepted = LTXTarget.extra_accepted + ("image",)

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        self.image = pipe.video_processor.preprocess(self.conditioning_image(), height=self.height,
                                                     width=self.width).to(self.device, dtype=self.dtype)
        self.conditioning_mask = None

    def noise(self, seed: int) -> torch.Tensor:
        """The packed initial latent (the image's latent in the first frame, noise after it) and the conditioning
        mask the pipeline makes with ``generator=torch.Generator().manual_seed(seed)``."""
        latents, self.conditioning_mask = self.pipe.prepare_latents(
            self.image, 1, self.latent_shape[2], self.height, self.width, self.num_frames, torch.float32,
            self.device, torch.Generator().manual_seed(seed))
        return latents

    def timestep(self, t: torch.Tensor, batch: int) -> torch.Tensor:
        """One timestep per token, (batch, tokens): ``t``, and 0 for the conditioning frame's tokens."""
        return t.expand(batch).unsqueeze(-1) * (1 - torch.cat([self.conditioning_mask] * batch))

    def sampler_step(self):
        """The pipeline's step: unpacked, the scheduler moves frames 1.. only, the first frame is kept."""
        pipe, (frames, height, width) = self.pipe, self.latent_size
        patch, patch_t = pipe.transformer_spatial_patch_size, pipe.transformer_temporal_patch_size

        def step(sched, out, t, x, k):
            out = pipe._unpack_latents(out, frames, height, width, patch, patch_t)
            x = pipe._unpack_latents(x, frames, height, width, patch, patch_t)
            moved = sched.step(out[:, :, 1:], t, x[:, :, 1:], return_dict=False)[0]
            return pipe._pack_latents(torch.cat([x[:, :, :1], moved], dim=2), patch, patch_t)

        return step
