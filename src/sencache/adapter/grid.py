"""Where a transformer's noisy latent and its video tokens lie on the (frames, height, width) grid.

Rules that filter over space and time (SeaCache's SEA filter) need the latent as (B, F, H, W, C) whatever the
model's layout: Wan and HunyuanVideo take (B, C, F, H, W), CogVideoX (B, F, C, H, W), LTX-Video packed tokens
(B, F·H·W, C) with the grid passed as ``num_frames``/``height``/``width``, FLUX packed tokens (B, H·W, C) whose
``img_ids`` hold each token's (row, column). Image-to-video variants concatenate conditioning channels after
the noisy ones; only the first ``out_channels`` (the noisy latent) are kept. The block stack's video tokens
lie on the same grid after the patch embedding (divided by the patch sizes).
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from sencache.errors import UnsupportedModelError

__all__ = ["latent_grid", "token_grid"]

Read = Callable[[str], object]  # the transformer call's argument by name, or None

CHANNELS_FIRST = ("WanTransformer3DModel", "WanVACETransformer3DModel", "HunyuanVideoTransformer3DModel",
                  "MochiTransformer3DModel")


def _noisy_channels(transformer, channels: int) -> int:
    out = getattr(getattr(transformer, "config", None), "out_channels", None) or channels
    return min(int(out), channels)


def latent_grid(transformer: torch.nn.Module, latent: torch.Tensor, read: Read) -> torch.Tensor:
    """The noisy latent of one transformer call as a (B, F, H, W, C) view on its grid."""
    cls = type(transformer).__name__
    if latent.ndim == 5 and cls.startswith("CogVideoX"):  # (B, F, C, H, W)
        c = _noisy_channels(transformer, latent.shape[2])
        return latent[:, :, :c].permute(0, 1, 3, 4, 2)
    if latent.ndim == 5:  # (B, C, F, H, W): Wan, HunyuanVideo, Mochi and most video transformers
        c = _noisy_channels(transformer, latent.shape[1])
        return latent[:, :c].permute(0, 2, 3, 4, 1)
    if latent.ndim == 3:
        frames, height, width = read("num_frames"), read("height"), read("width")
        if all(isinstance(v, int) for v in (frames, height, width)):  # LTX-Video: the grid is passed along
            return _unpack(cls, latent, (frames, height, width))
        ids = read("img_ids")
        if isinstance(ids, torch.Tensor):  # FLUX: each token's (batch-free) (0, row, column)
            ids = ids[0] if ids.ndim == 3 else ids
            rows, cols = int(ids[:, 1].max()) + 1, int(ids[:, 2].max()) + 1
            return _unpack(cls, latent, (1, rows, cols))
    raise UnsupportedModelError(
        f"{cls}: sencache cannot place its {latent.ndim}-D latent {tuple(latent.shape)} on a (frames, height, width) "
        f"grid, which SeaCache's filter needs; open an issue with the model name")


def _unpack(cls: str, tokens: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    if math.prod(shape) != tokens.shape[1]:
        raise UnsupportedModelError(
            f"{cls}: {tokens.shape[1]} latent tokens do not fill the {shape} grid the call describes (conditioning "
            f"tokens mixed in?); SeaCache cannot filter this latent")
    return tokens.reshape(tokens.shape[0], *shape, tokens.shape[2])


def _patch(transformer) -> tuple[int, int, int]:
    config = getattr(transformer, "config", None)
    size = getattr(config, "patch_size", 1) or 1
    if isinstance(size, (tuple, list)):
        return tuple(int(s) for s in size)  # Wan: (t, h, w)
    return int(getattr(config, "patch_size_t", 1) or 1), int(size), int(size)


def token_grid(transformer: torch.nn.Module, grid: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
    """The block stack's video tokens (B, S, D) as (B, F', H', W', D), from the latent grid (B, F, H, W, C)."""
    frames, height, width = grid.shape[1:4]
    pt, ph, pw = _patch(transformer)
    for shape in ((frames, height, width), (-(-frames // pt), height // ph, width // pw)):
        if math.prod(shape) == tokens.shape[1]:
            return tokens.reshape(tokens.shape[0], *shape, tokens.shape[-1])
    raise UnsupportedModelError(
        f"{type(transformer).__name__}: the first block's {tokens.shape[1]} video tokens do not lie on the latent "
        f"grid {(frames, height, width)} (patch {pt}x{ph}x{pw}); the paper's SeaCache cannot filter them")
