"""Secant sensitivities along trajectories: the measuring core of calibration, free of pipelines.

For a denoiser ``f(x, t)`` and a scheduler: ‖J_x‖ ≈ rms(f(x', t) − f(x, t)) / rms(x' − x) with x' one real
solver step from x, and ‖J_t‖ ≈ rms(f(x, t') − f(x, t)) / |t' − t| with t' the next grid timestep, at every
grid step of a sampled trajectory (:func:`measure_trajectory`) or of a clean latent noised to each step
(:func:`measure_noised`); :func:`aggregate` turns many samples into the profile's fields.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from sencache.core.trajectories import distance_matrix
from sencache.errors import SenCacheError, UnsupportedModelError

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> model output
SamplerOutput = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t, f) -> sampler's output
# (sched, out, t, x, k) -> x'
SamplerStep = Callable[[Any, torch.Tensor, torch.Tensor, torch.Tensor, int], torch.Tensor]

TIMESTEP_UNIT = "transformer input (scheduler.timesteps)"
SMOOTHING = "binomial (1,2,1)/4 over neighbouring grid steps; (2,1)/3 at the ends"


# --------------------------------------------------------------------------------------------
# core: secants along trajectories, given a denoiser and a scheduler
# --------------------------------------------------------------------------------------------
def rms(x: torch.Tensor) -> float:
    """Root mean square of the entries of ``x``, in float64."""
    return float(x.detach().double().pow(2).mean().sqrt())


def rms_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """Root mean square of ``a - b``, in float64."""
    return float((a.detach().double() - b.detach().double()).pow(2).mean().sqrt())


@dataclass
class SampleCurves:
    """One sample's secants, one entry per grid timestep (transformer-input units)."""

    timesteps: list[float]
    jx: list[float] = field(default_factory=list)
    jt: list[float] = field(default_factory=list)
    jtt: list[float] = field(default_factory=list)  # trajectory source: ‖d²f/dt²‖ along the sampled path
    final: torch.Tensor | None = None  # trajectory source: the sampler's final latent
    dist: list | None = None  # trajectory source: D[j][k] = rms(x_k - x_j) over grid steps (budget mode)

    def record(self) -> dict:
        """The numbers as plain JSON (the final latent is not kept); ``SampleCurves(**record)`` reads it back."""
        return {"timesteps": [float(v) for v in self.timesteps], "jx": [float(v) for v in self.jx],
                "jt": [float(v) for v in self.jt], "jtt": [float(v) for v in self.jtt],
                "dist": None if self.dist is None else [[float(v) for v in row] for row in self.dist]}


def secants(denoise: Denoiser, x, t, x_next, t_other, f_xt: torch.Tensor | None = None) -> tuple[float, float]:
    """‖J_x‖ along x → x_next and ‖J_t‖ along t → t_other, at (x, t). Two or three denoiser calls."""
    if f_xt is None:
        f_xt = denoise(x, t)
    dx = rms_diff(x_next, x)
    jx = rms_diff(denoise(x_next, t), f_xt) / dx if dx > 0 else 0.0
    dt = abs(float(t_other) - float(t))
    if dt == 0:
        raise SenCacheError(f"two grid timesteps coincide at t={float(t):g}; use more distinct steps")
    jt = rms_diff(denoise(x, t_other), f_xt) / dt
    return jx, jt


def _other_timestep(timesteps: torch.Tensor, k: int, segments: Sequence | None = None):
    """The grid neighbour J_t is measured against: the next timestep, else the previous one; with ``segments``
    (which expert serves each step) one the same expert serves, so a secant never spans two experts."""
    if len(timesteps) < 2:
        raise SenCacheError("calibration needs at least 2 inference steps (J_t is a secant between grid timesteps)")
    for j in (k + 1, k - 1):
        if 0 <= j < len(timesteps) and (segments is None or segments[j] == segments[k]):
            return timesteps[j]
    raise SenCacheError(f"{segments[k]} serves only one step of the {len(timesteps)}-step grid, so its sensitivity "
                        f"to t cannot be measured; calibrate with more inference steps")


def _segments(timesteps, segment_of: Callable[[float], Any] | None) -> list | None:
    return None if segment_of is None else [segment_of(float(t)) for t in timesteps]


def second_difference(t0: float, f0: torch.Tensor, t1: float, f1: torch.Tensor, t2: float, f2: torch.Tensor) -> float:
    """rms of the second divided difference 2·[(f2 − f1)/(t2 − t1) − (f1 − f0)/(t1 − t0)] / (t2 − t0): the
    curvature ‖d²f/dt²‖ of f along a path through three (uneven) points, what a linear forecast's error grows with."""
    a = (f2.detach().double() - f1.detach().double()) / (t2 - t1)
    b = (f1.detach().double() - f0.detach().double()) / (t1 - t0)
    return float((2.0 * (a - b) / (t2 - t0)).pow(2).mean().sqrt())


def measure_trajectory(denoise: Denoiser, scheduler, latents: torch.Tensor, *,
                       sampler_output: SamplerOutput | None = None, on_step: Callable[[], None] | None = None,
                       step: SamplerStep | None = None, segment_of: Callable[[float], Any] | None = None
                       ) -> SampleCurves:
    """Run the sampler from ``latents`` and measure the secants at every grid timestep it visits.

    ``scheduler`` must have had ``set_timesteps`` called; a deep copy is stepped, so its multistep
    history never leaks between samples. ``denoise(x, t)`` is the measured output; the sampler steps
    with ``sampler_output(x, t, f)`` when given (e.g. CFG-combined while the conditional branch is
    measured), else with f itself; ``step(sched, output, t, x, k)`` is the pipeline's own stepping where it is
    not ``sched.step(output, t, x)`` (default). x' for ‖J_x‖ is the sampler's own next latent.
    ``segment_of(t)`` names the expert that serves t (Wan 2.2's two transformers): J_t and the curvature are then
    measured within each expert's steps only.
    """
    sched = copy.deepcopy(scheduler)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    timesteps = sched.timesteps
    segments = _segments(timesteps, segment_of)
    out = SampleCurves(timesteps=[float(t) for t in timesteps])
    x = latents
    visited, outputs = [], []  # outputs: (t, f) of the last three steps of one expert, for the path's curvature
    curvature: dict[int, float] = {}  # at the middle step of each window
    for k, t in enumerate(timesteps):
        visited.append(x)
        f = denoise(x, t)
        if segments is not None and k > 0 and segments[k] != segments[k - 1]:
            outputs = []  # a new expert: its outputs do not continue the other's path
        outputs = (outputs + [(float(t), f)])[-3:]
        if len(outputs) == 3:
            curvature[k - 1] = second_difference(*outputs[0], *outputs[1], *outputs[2])
        model_output = sampler_output(x, t, f) if sampler_output is not None else f
        x_next = step(sched, model_output, t, x, k) if step is not None else \
            sched.step(model_output, t, x, return_dict=False)[0]
        jx, jt = secants(denoise, x, t, x_next, _other_timestep(timesteps, k, segments), f_xt=f)
        out.jx.append(jx)
        out.jt.append(jt)
        x = x_next
        if on_step is not None:
            on_step()
    out.final = x
    out.jtt = _fill_ends(curvature, segments or [0] * len(timesteps))
    out.dist = distance_matrix(visited).tolist()  # what budget mode replays the rule on
    return out


def _fill_ends(values: dict[int, float], segments: list) -> list[float]:
    """One value per step: the measured ones, and at each expert's ends (no centred window) the nearest measured
    value of the same expert; 0.0 for an expert with fewer than three steps."""
    out = []
    for k, seg in enumerate(segments):
        if k in values:
            out.append(values[k])
            continue
        same = [j for j in values if segments[j] == seg]
        out.append(values[min(same, key=lambda j: abs(j - k))] if same else 0.0)
    return out


def is_flow_matching(scheduler) -> bool:
    """True for a flow-matching scheduler (flow sigmas, flow prediction, or a FlowMatch class)."""
    config = getattr(scheduler, "config", {}) or {}
    return bool(
        config.get("use_flow_sigmas") or config.get("prediction_type") == "flow_prediction"
        or "FlowMatch" in type(scheduler).__name__
    )


def noise_to(scheduler, x0: torch.Tensor, noise: torch.Tensor, k: int) -> torch.Tensor:
    """x_{t_k} from clean x0: (1 − σ_k)·x0 + σ_k·ε for flow matching, else ``scheduler.add_noise``."""
    if is_flow_matching(scheduler):
        sigma = float(scheduler.sigmas[k])
        return (1.0 - sigma) * x0 + sigma * noise
    t = scheduler.timesteps[k : k + 1]
    return scheduler.add_noise(x0, noise, t)


def measure_noised(denoise: Denoiser, scheduler, x0: torch.Tensor, noise: torch.Tensor, *,
                   sampler_output: SamplerOutput | None = None, on_step: Callable[[], None] | None = None,
                   segment_of: Callable[[float], Any] | None = None) -> SampleCurves:
    """Secants at x_{t_k} = x0 noised to each grid timestep; x' is one step of a fresh scheduler at k."""
    timesteps = scheduler.timesteps
    segments = _segments(timesteps, segment_of)
    out = SampleCurves(timesteps=[float(t) for t in timesteps])
    for k, t in enumerate(timesteps):
        x = noise_to(scheduler, x0, noise, k)
        f = denoise(x, t)
        model_output = sampler_output(x, t, f) if sampler_output is not None else f
        sched = copy.deepcopy(scheduler)
        if not hasattr(sched, "set_begin_index"):
            raise UnsupportedModelError(f"{type(sched).__name__} cannot start at step {k} (no set_begin_index)")
        sched.set_begin_index(k)
        x_next = sched.step(model_output, t, x, return_dict=False)[0]
        jx, jt = secants(denoise, x, t, x_next, _other_timestep(timesteps, k, segments), f_xt=f)
        out.jx.append(jx)
        out.jt.append(jt)
        if on_step is not None:
            on_step()
    return out


def smooth_121(values: Sequence[float]) -> list[float]:
    """Centred (1,2,1)/4 moving average (ends: (2,1)/3). Cancels an exact step-to-step zig-zag."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        return v.tolist()
    out = np.empty_like(v)
    out[1:-1] = 0.25 * v[:-2] + 0.5 * v[1:-1] + 0.25 * v[2:]
    out[0] = (2.0 * v[0] + v[1]) / 3.0
    out[-1] = (2.0 * v[-1] + v[-2]) / 3.0
    return out.tolist()


def aggregate(timesteps: Sequence[float], samples: Sequence[SampleCurves], jt_curve: str = "raw",
              segment_of: Callable[[float], Any] | None = None) -> dict:
    """Per-timestep mean over samples (in the given order) plus spread; the SensitivityProfile fields. With
    ``segment_of`` (the expert serving each t) the smoothed J_t never averages over two experts."""
    if jt_curve not in ("raw", "smooth"):
        raise SenCacheError(f"jt_curve must be 'raw' or 'smooth' (got {jt_curve!r})")
    if not samples:
        raise SenCacheError("no samples to aggregate")
    n = len(timesteps)
    for s in samples:
        if len(s.jx) != n or len(s.jt) != n:
            raise SenCacheError(f"a sample has {len(s.jx)} entries for {n} grid timesteps; calibration is inconsistent")
    jx = np.array([s.jx for s in samples], dtype=np.float64)
    jt = np.array([s.jt for s in samples], dtype=np.float64)
    for name, values in (("J_x", jx), ("J_t", jt)):
        bad = np.argwhere(~np.isfinite(values))
        if bad.size:
            i, k = bad[0]
            raise SenCacheError(
                f"{name} is NaN or inf for sample {int(i)} at t={timesteps[int(k)]:g}: the model output is not finite "
                f"there; check the model and its dtype (try float32)"
            )
    jx_mean, jt_raw = jx.mean(axis=0), jt.mean(axis=0)
    segments = _segments(timesteps, segment_of) or [0] * n
    jt_smooth = np.empty(n)
    for seg in dict.fromkeys(segments):
        idx = [k for k in range(n) if segments[k] == seg]  # an expert's steps are contiguous on the grid
        jt_smooth[idx] = smooth_121(jt_raw[idx])
    spread = {"count": [float(len(samples))] * n}
    for name, values in (("jx", jx), ("jt", jt)):
        for q in (10, 50, 90):
            spread[f"{name}_p{q}"] = np.percentile(values, q, axis=0).tolist()
    curves = {"jt_raw": jt_raw.tolist(), "jt_smooth": jt_smooth.tolist()}
    if all(len(s.jtt) == n for s in samples):  # sampled trajectories: the output's curvature along the path
        jtt = np.array([s.jtt for s in samples], dtype=np.float64)
        if np.all(np.isfinite(jtt)):
            curves["jtt"] = jtt.mean(axis=0).tolist()
            for q in (10, 50, 90):
                spread[f"jtt_p{q}"] = np.percentile(jtt, q, axis=0).tolist()
    return dict(
        timesteps=list(timesteps), jx=jx_mean.tolist(), jt=(jt_raw if jt_curve == "raw" else jt_smooth).tolist(),
        spread=spread, curves=curves,
    )
