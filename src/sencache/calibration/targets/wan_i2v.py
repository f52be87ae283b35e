"""What calibration needs from a Wan image-to-video pipeline, as ``WanImageToVideoPipeline.__call__`` makes it.

Three layouts share the pipeline class, and :class:`WanImageToVideoTarget` follows each:

* Wan 2.1 I2V: a CLIP image encoder; its embeddings go to every call (``encoder_hidden_states_image``), and the
  VAE-encoded image (with a first-frame mask) is concatenated after the noisy latent's channels;
* Wan 2.2 I2V A14B: no image encoder, the same channel concatenation, two experts split at ``boundary_ratio``
  (handled by :class:`~sencache.calibration.targets.wan.WanTarget`);
* Wan 2.2 TI2V (``expand_timesteps``): the image latent replaces the first latent frame, whose tokens get
  timestep 0. The pipeline steps its latent's first frame too and blends it back only at the end; the target's
  latent is the blended one (what the transformer sees, and what the cache's rule measures at run time): the
  scheduler works per element, so every other frame follows the pipeline's bit for bit.

Every sample is conditioned on the one ``image`` (and ``last_image``) of the calibration call.
"""

from __future__ import annotations

import torch

from sencache.calibration.targets.wan import WanTarget
from sencache.errors import UnsupportedModelError


def is_wan_i2v(pipe) -> bool:
    """True when ``pipe`` is a WanImageToVideoPipeline (by class name)."""
    return type(pipe).__name__ == "WanImageToVideoPipeline"


class WanImageToVideoTarget(WanTarget):
    """Calibration view of a WanImageToVideoPipeline (Wan 2.1 I2V, Wan 2.2 I2V and TI2V)."""

    family = "Wan image-to-video"
    extra_accepted = WanTarget.extra_accepted + ("image", "last_image")

    def __init__(self, pipe, pipe_kwargs: dict):
        super().__init__(pipe, pipe_kwargs)
        image, last = self.conditioning_image(), self.settings.get("last_image")
        self.latent_shape = (1, pipe.vae.config.z_dim, *self.latent_shape[2:])  # the noisy channels only
        if self.transformer.config.image_dim is not None:  # Wan 2.1: CLIP embeddings of the image(s)
            with torch.no_grad():
                embeds = pipe.encode_image(image if last is None else [image, last], self.device)
            self.extra_inputs = {"encoder_hidden_states_image": embeds.to(self.dtype)}
        self.image = self._preprocess(image)
        self.last_image = self._preprocess(last) if last is not None else None
        self.condition = self.first_frame_mask = None

    def _preprocess(self, image) -> torch.Tensor:
        return self.pipe.video_processor.preprocess(image, height=self.height, width=self.width).to(
            self.device, dtype=torch.float32)

    def noise(self, seed: int) -> torch.Tensor:
        """The initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``, and the
        image condition its ``prepare_latents`` makes with it (TI2V: the first frame already blended in)."""
        generator = torch.Generator().manual_seed(seed)
        _, c, _, _, _ = self.latent_shape
        out = self.pipe.prepare_latents(self.image, 1, c, self.height, self.width, self.num_frames, torch.float32,
                                        self.device, generator, None, self.last_image)
        if not self.pipe.config.expand_timesteps:
            latents, self.condition = out
            return latents
        latents, self.condition, self.first_frame_mask = out
        return self.model_input(latents)

    def encode_video(self, frames):
        """Not supported: raises :class:`UnsupportedModelError` (no ``--videos`` for image-to-video yet)."""
        raise UnsupportedModelError("calibrate --videos does not support image-to-video pipelines yet; calibrate "
                                    "from prompts and an image (the pipeline's own sampling trajectories)")

    def model_input(self, x: torch.Tensor) -> torch.Tensor:
        """The pipeline's ``latent_model_input``: the condition on the channels after x, or (TI2V) in its first
        frame."""
        if self.pipe.config.expand_timesteps:
            mask = self.first_frame_mask
            return (1 - mask) * self.condition + mask * x
        return torch.cat([x, self.condition.expand(x.shape[0], -1, -1, -1, -1)], dim=1)

    def timestep_mask(self, x: torch.Tensor) -> torch.Tensor:
        """TI2V: the first-frame mask (F, H, W), 0 where the conditioning frame's tokens take timestep 0."""
        return self.first_frame_mask[0][0]  # the conditioning frame's tokens get timestep 0

    def sampler_step(self):
        """TI2V: the scheduler's step, then the first frame put back (see the module docstring); else its own."""
        if not self.pipe.config.expand_timesteps:
            return None
        return lambda sched, out, t, x, k: self.model_input(sched.step(out, t, x, return_dict=False)[0])
