"""What calibration needs from a CogVideoX image-to-video pipeline, as ``CogVideoXImageToVideoPipeline.__call__``
makes it: the text-to-video target's batched CFG and schedulers, plus the image latents its ``prepare_latents``
draws (before the noise, from the same generator) and concatenates after the latent's channels at every call, and
CogVideoX 1.5 I2V's ``ofs`` embedding input. Every sample is conditioned on the one ``image`` of the calibration
call.
"""

from __future__ import annotations

import torch

from sencache.calibration.targets.cogvideox import CogVideoXTarget


def is_cogvideox_i2v(pipe) -> bool:
    """True when ``pipe`` is a CogVideoXImageToVideoPipeline (by class name)."""
    return type(pipe).__name__ == "CogVideoXImageToVideoPipeline"


class CogVideoXImageToVideoTarget(CogVideoXTarget):
    """Calibration view of a CogVideoXImageToVideoPipeline."""

    family = "CogVideoX image-to-video"
    extra_accepted = CogVideoXTarget.extra_accepted + ("image",)

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        b, f, c, h, w = self.latent_shape
        self.latent_shape = (b, f, c // 2, h, w)  # in_channels holds the noisy and the image latents
        self.image = pipe.video_processor.preprocess(self.conditioning_image(), height=self.height,
                                                     width=self.width).to(self.device, dtype=self.dtype)
        ofs = self.transformer.config.ofs_embed_dim
        self.extra_inputs = {"ofs": torch.full((1,), 2.0, dtype=self.dtype, device=self.device) if ofs else None}
        self.image_latents = None

    def noise(self, seed: int) -> torch.Tensor:
        """The initial latent (and the image latents, sampled first) the pipeline draws with
        ``generator=torch.Generator().manual_seed(seed)``; the DPM scheduler's step noise follows from it."""
        _, _, c, _, _ = self.latent_shape
        self._generator = torch.Generator().manual_seed(seed)
        latents, self.image_latents = self.pipe.prepare_latents(
            self.image, 1, c, self.num_frames, self.height, self.width, self.dtype, self.device, self._generator)
        return latents

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The scaled latent with the image latents concatenated after its channels (one copy per batch row)."""
        return torch.cat([x, torch.cat([self.image_latents] * x.shape[0])], dim=2)
