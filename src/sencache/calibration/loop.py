"""Measuring what the closed-loop rule needs: the clip-error gain per step and the replay tables.

For each calibration run (prompt × seed, never an evaluation prompt):

1. One uncached generation through the adapter's recorder, keeping per step, for batch row 0 of the deciding
   branch, the latent distances to the last few steps (``dx[k][g-1] = rms(x_k − x_{k−g})``), the block-stack
   residual's hold errors (``hold[k][g-1] = rms(r_k − r_{k−g})``) and linear-forecast errors
   (``linear[k][g-1][h-1]``: r_k against the line through r_{k−g−h} and r_{k−g}, in t). Only a window of recent
   residuals is held, so a real model's memory stays bounded. These tables let budget mode replay the closed loop
   offline (:mod:`sencache.core.loop_replay`).
2. The gain: for every ``gain_every``-th step k, one more generation in which only step k reuses (holds the
   residual of step k − 1); gain(k) = frame RMS error of the finished clip / hold[k][0]. It is the price, in the
   clip, of a unit of residual error at step k. The curve is the geometric median over runs, interpolated (in
   log) onto the profile's timestep grid.
3. The combine factor: the loop rule runs on the same prompts at two tolerances; combine = geometric median of
   real clip RMS error / the sum of the predicted costs of the reused steps (errors of different steps partly
   cancel, so the plain sum over-predicts).

Cost: runs × (1 + ⌈T / gain_every⌉ + 2) generations (the demo model, 3 prompts, T = 50, every 3rd step: 57
generations, about 4.5 minutes on 2 CPU cores).
"""

from __future__ import annotations

import logging
import math
import time
from collections import deque
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sencache.adapter.hooks import disable, enable, quiet_sencache
from sencache.adapter.observers import CallEvent
from sencache.adapter.recorder import record_uncached
from sencache.core.loop_replay import solve_loop_eps
from sencache.core.rules.base import Decision, StepInput
from sencache.core.rules.sencache import SenCacheConfig
from sencache.errors import SenCacheError
from sencache.runtime.generation import generate

logger = logging.getLogger("sencache")
DEFAULT_WINDOW = 4  # max_reuse + 1: the longest interval the default rule can produce


class ReuseOneStep:
    """A rule (and its own config) that holds the cache at one step and computes every other."""

    name = "reuse-one-step"

    def __init__(self, step: int):
        self.step = int(step)

    def build_rule(self) -> "ReuseOneStep":
        """The rule itself (it is its own config)."""
        return self

    def new_state(self, batch_size: int) -> int:
        """The state is just the batch size."""
        return batch_size

    def decide(self, state: int, inp: StepInput) -> Decision:
        """Reuse for every sample at ``self.step``, refresh at every other step."""
        reuse = torch.full((state,), inp.step == self.step, dtype=torch.bool)
        return Decision(reuse=reuse, score=None, eps=math.nan, reason=["gain"] * state)

    def observe_refresh(self, state, inp, rows, residual) -> None:
        """Nothing to record: the rule keeps no state between steps."""
        return None


def _rms(x: torch.Tensor) -> float:
    return float(x.double().pow(2).mean().sqrt())


class _Tables:
    """Streams one uncached run into the replay tables, holding only the last 2·window residuals."""

    def __init__(self, window: int):
        self.window = window
        self.timesteps: list[float] = []
        self.dx: list[list[float | None]] = []
        self.hold: list[list[float | None]] = []
        self.linear: list[list[list[float | None]]] = []
        self.latents: deque = deque(maxlen=window)
        self.residuals: deque = deque(maxlen=2 * window)

    def on_call(self, event: CallEvent) -> None:
        if not event.decider or event.residual is None:
            return
        W = self.window
        x = event.latent.detach()[:1].float().cpu()
        r = event.residual.detach()[:1].float().cpu()
        t = float(event.timestep.reshape(-1)[0])
        ts = self.timesteps + [t]
        k = len(self.timesteps)
        lat, res = list(self.latents), list(self.residuals)
        self.dx.append([_rms(x - lat[-g]) if g <= len(lat) else None for g in range(1, W + 1)])
        self.hold.append([_rms(r - res[-g]) if g <= len(res) else None for g in range(1, W + 1)])
        rows = []
        for g in range(1, W + 1):
            row = []
            for h in range(1, W + 1):
                if g + h > len(res) or ts[k - g] == ts[k - g - h]:
                    row.append(None)
                    continue
                last, prev = res[-g], res[-g - h]
                scale = (t - ts[k - g]) / (ts[k - g] - ts[k - g - h])
                row.append(_rms(r - (last + (last - prev) * scale)))
            rows.append(row)
        self.linear.append(rows)
        self.timesteps.append(t)
        self.latents.append(x)
        self.residuals.append(r)

    def to_dict(self, prompt: str, seed: int) -> dict:
        return {"prompt": prompt, "seed": int(seed), "timesteps": self.timesteps, "dx": self.dx, "hold": self.hold,
                "linear": self.linear}


def _frame_rms(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.sqrt(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)))


def _geometric_median(values: Sequence[float]) -> float:
    vals = [v for v in values if v is not None and math.isfinite(v) and v > 0]
    return float(np.exp(np.median(np.log(vals)))) if vals else math.nan


def gain_curve(steps: Sequence[int], timesteps: Sequence[float], per_run: Sequence[Sequence[float]],
               grid: Sequence[float]) -> list[float]:
    """The gain on ``grid``: per measured step the geometric median over runs, log-interpolated in t (clamped)."""
    med = np.array([_geometric_median([run[i] for run in per_run]) for i in range(len(steps))])
    t = np.asarray([timesteps[k] for k in steps], dtype=np.float64)
    ok = np.isfinite(med)
    if not ok.any():
        raise SenCacheError("the gain could not be measured at any step (no residual change); "
                            "use more steps or prompts")
    t, med = t[ok], med[ok]
    if t.size == 1:  # one measured step (very short runs): a flat curve
        return [float(med[0])] * len(grid)
    order = np.argsort(t)
    return [float(v) for v in np.exp(np.interp(np.asarray(grid, np.float64), t[order], np.log(med[order])))]


def calibrate_loop(pipe, profile, prompts: Sequence[str], seeds: Sequence[int] = (0,),
                   num_inference_steps: int | None = None, guidance_scale: float = 5.0, gain_every: int = 3,
                   window: int = DEFAULT_WINDOW, progress: bool = True, call_kwargs: dict | None = None) -> dict:
    """Measure the gain curve, the replay tables and the combine factor on ``prompts`` × ``seeds`` and store them
    in ``profile`` (``curves["gain"]``, ``metadata["loop"]``). Returns the metadata dict."""
    T = int(num_inference_steps or profile.metadata.get("num_inference_steps") or 50)
    runs = [(p, int(s)) for p in prompts for s in seeds]
    if not runs:
        raise SenCacheError("calibrate_loop needs at least one prompt and seed")
    if not isinstance(gain_every, int) or gain_every < 1:
        raise SenCacheError(f"gain_every must be an integer >= 1 (got {gain_every!r})")
    if not isinstance(window, int) or window < 2:
        raise SenCacheError(f"window must be an integer >= 2 (got {window!r})")
    start = time.perf_counter()
    gen_kwargs = {"num_inference_steps": T, "guidance_scale": guidance_scale, **(call_kwargs or {})}
    steps = list(range(1, T - 1, gain_every))
    if len(steps) < 2:  # short runs: measure every step that can reuse
        steps = list(range(1, max(2, T - 1)))
    trajectories, gains, references = [], [], []
    bar = tqdm(total=len(runs) * (1 + len(steps)), desc="clip-error gain", disable=not progress, leave=False)
    for prompt, seed in runs:
        tables = _Tables(window)
        ref = record_uncached(pipe, lambda: generate(pipe, prompt, seed, **gen_kwargs), tables.on_call)
        bar.update(1)
        if len(tables.timesteps) != T:
            raise SenCacheError(f"the adapter saw {len(tables.timesteps)} steps with residuals, expected {T}")
        row = []
        for k in steps:
            enable(pipe, ReuseOneStep(k))
            try:
                with quiet_sencache():
                    out = generate(pipe, prompt, seed, **gen_kwargs)
            finally:
                disable(pipe)
            held = tables.hold[k][0]
            row.append(_frame_rms(out.frames, ref.frames) / held if held else math.nan)
            bar.update(1)
        trajectories.append(tables.to_dict(prompt, seed))
        gains.append(row)
        references.append(ref.frames)
    bar.close()
    grid_t = trajectories[0]["timesteps"]
    profile.curves["gain"] = gain_curve(steps, grid_t, gains, profile.timesteps)
    info = {
        "num_inference_steps": T,
        "window": window,
        "gain_steps": steps,
        "gain_per_run": [[float(v) for v in row] for row in gains],
        "combine": 1.0,
        "trajectories": trajectories,
        "prompts": [p for p, _ in runs],
        "seeds": [s for _, s in runs],
        "guidance_scale": guidance_scale,
        "units": "gain: frame RMS error of the clip (frames in [0, 1]) per unit of block-stack residual RMS error "
                 "at one reused step; combine: real clip error / sum of the reused steps' predicted costs",
    }
    profile.metadata["loop"] = info
    info["combine"], info["combine_samples"] = _measure_combine(pipe, profile, runs, references, gen_kwargs, progress)
    info["seconds"] = round(time.perf_counter() - start, 1)
    return info


def _measure_combine(pipe, profile, runs, references, gen_kwargs, progress) -> tuple[float, list]:
    """Run the loop rule at the tolerances that replay to NFE ≈ T/2 and T·0.3; real / predicted clip error."""
    T = gen_kwargs["num_inference_steps"]
    samples = []
    for share in (0.5, 0.3):
        config = SenCacheConfig(profile, eps=1.0, loop=True)
        lam = solve_loop_eps(config, max(1.0, T * share))["eps"]
        config = SenCacheConfig(profile, eps=lam, loop=True)
        for (prompt, seed), ref in zip(runs, references):
            session = enable(pipe, config)
            try:
                with quiet_sencache():
                    out = generate(pipe, prompt, seed, **gen_kwargs)
                spent = float(session.trace.predicted_errors()[0])
            finally:
                disable(pipe)
            if spent > 0:
                samples.append([_frame_rms(out.frames, ref), spent])
    ratios = [real / pred for real, pred in samples]
    combine = _geometric_median(ratios)
    if not math.isfinite(combine):  # too few steps to reuse any: the plain sum stands
        logger.warning("sencache calibrate: the closed loop reused no step on the calibration prompts, so its "
                       "predicted PSNR is not calibrated (combine = 1); use more steps")
        combine = 1.0
    return combine, samples
