"""What of a transformer call's latent and timestep is the sampler's state, when image-to-video conditioning rides
along with it.

Rules measure how far the latent moved and at which timestep; calibration measures the same on the scheduler's
latent. Image-to-video pipelines hand the transformer more than that:

* Wan 2.1 / 2.2 I2V (A14B) and CogVideoX I2V concatenate the image condition after the noisy channels (the
  channel dim: Wan (B, C, F, H, W), CogVideoX (B, F, C, H, W)); it never changes, so it would dilute the
  latent's change. Only the first ``out_channels`` (the noisy latent) are read.
* LTX-Video I2V and Wan 2.2 TI2V (``expand_timesteps``) give a timestep per token, 0 for the tokens of the
  conditioning frame. The step's timestep is the largest one (the noisy tokens'), not the first token's.
"""

from __future__ import annotations

import torch

__all__ = ["noisy_latent", "step_timesteps"]


def _channel_dim(transformer, latent: torch.Tensor) -> int | None:
    if latent.ndim == 5:
        return 2 if type(transformer).__name__.startswith("CogVideoX") else 1
    return None  # packed tokens (LTX-Video, FLUX): conditioning is never concatenated on channels


def noisy_latent(transformer, latent: torch.Tensor) -> torch.Tensor:
    """The latent without the conditioning channels an image-to-video pipeline concatenates after it (a view)."""
    dim = _channel_dim(transformer, latent)
    out = getattr(getattr(transformer, "config", None), "out_channels", None)
    if dim is None or not out or int(out) >= latent.shape[dim]:
        return latent
    return latent.narrow(dim, 0, int(out))


def step_timesteps(timestep: torch.Tensor, batch: int) -> torch.Tensor:
    """(B,) the step's timestep per row: a per-token timestep's largest value (the conditioning frame's tokens
    have 0), a per-row one as it is."""
    if timestep.ndim >= 2 and timestep.shape[0] == batch:
        return timestep.reshape(batch, -1).amax(dim=1)
    return timestep
