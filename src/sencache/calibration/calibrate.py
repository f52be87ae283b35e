"""Measure a model's sensitivity profile: ‖J_x‖(t) and ‖J_t‖(t) on its sampling grid.

    profile = sencache.calibrate(pipe, ["a red ball rolls left"], num_inference_steps=50, num_samples=8)
    profile.save("profile.json")

or ``sencache calibrate --model DIR --prompts prompts.txt --steps 50 --samples 8 --out profile.json``,
sharded over ranks with ``torchrun --nproc_per_node=K -m sencache.cli calibrate ...``.

For every sample (sample i: prompt ``i % len(prompts)``, generator seed ``seed + i``) and every grid
timestep t_k, with x = x_{t_k} the latent the transformer receives there and f the measured branch:

    ‖J_x‖ ≈ rms(f(x', t_k) − f(x, t_k)) / rms(x' − x)      x' = one real solver step from x
    ‖J_t‖ ≈ rms(f(x, t') − f(x, t_k)) / |t' − t_k|        t' = t_{k+1} (last point: t_{k−1})

Two sources of x_{t_k}:
  (a) default: the model's own sampling trajectory. The loop is the pipeline's own (same latents,
      same CFG, a fresh copy of its scheduler per sample), so x' is exactly the latent the sampler
      hands the transformer at the next step; no data set needed.
  (b) ``videos=DIR``: real videos encoded to latents and noised to each t_k the flow-matching way,
      x = (1 − σ_k)·x_0 + σ_k·ε; x' is one step of a fresh scheduler started at step k.
The measured branch is the conditional output (``guided=False``, the paper's choice) or the
CFG-combined output. Everything is RMS over elements, so a profile serves any resolution; timesteps
are in the units the transformer receives, so it serves any step count or shift.

The core, :func:`measure_trajectory` / :func:`measure_noised`, knows nothing of diffusers pipelines:
a denoiser callable ``f(x, t)`` and a scheduler in, per-timestep secants out.
"""

from __future__ import annotations

import copy
import datetime as _dt
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sencache.adapter.hooks import active_session
from sencache.calibration.secants import (
    SMOOTHING,
    TIMESTEP_UNIT,
    SampleCurves,
    aggregate,
    measure_noised,
    measure_trajectory,
)
from sencache.calibration.targets import target_for
from sencache.calibration.videos import list_videos, load_video
from sencache.core.profile import (
    SensitivityProfile,
    model_class_name,
    model_config_hash,
)
from sencache.core.trajectories import trajectory_metadata
from sencache.errors import SenCacheError, check_int
from sencache.runtime import distributed as dist
from sencache.runtime.checkpoint import RunCheckpoint
from sencache.version import __version__


@dataclass
class Sample:
    """One calibration sample: its index i, prompt, generator seed and (source b) video index."""

    index: int
    prompt: str
    seed: int
    video: int | None = None  # index into the loaded videos


def _refuse_active_cache(pipe) -> None:
    if active_session(pipe) is not None:
        raise SenCacheError("a sencache cache is enabled on this pipeline; "
                            "call sencache.disable(pipe) before calibrating")
    if getattr(pipe.transformer, "is_cache_enabled", False):
        raise SenCacheError("a diffusers cache is enabled on this transformer; call transformer.disable_cache() first")


def calibrate(pipe, prompts: Sequence[str] | None, num_inference_steps: int = 50, num_samples: int = 8, seed: int = 0,
              guided: bool = False, videos=None, progress: bool = True, jt_curve: str = "raw",
              checkpoint=None, resume: bool = False, **pipe_kwargs) -> SensitivityProfile:
    """Measure the sensitivity profile of ``pipe``'s transformer on its ``num_inference_steps`` grid.

    Sample i uses prompt ``prompts[i % len(prompts)]`` and seed ``seed + i``; its trajectory is the one
    ``pipe(prompt, generator=torch.Generator().manual_seed(seed + i), **pipe_kwargs)`` samples.
    With ``videos`` (a folder of .mp4/.gif/.npy, or a list of paths), sample i noises video
    ``i % len(videos)`` instead; a ``NAME.txt`` next to a video is its prompt, else ``prompts`` cycle
    (or the empty prompt). ``guided=True`` measures the CFG-combined output instead of the conditional
    branch. ``pipe_kwargs``: height, width, num_frames, guidance_scale, negative_prompt,
    max_sequence_length, attention_kwargs (pipeline defaults, or the model family's, otherwise).

    ‖J_t‖ zig-zags from step to step; the profile keeps ``curves['jt_raw']`` and a (1,2,1)/4-smoothed
    ``curves['jt_smooth']``; ``jt_curve`` chooses which one becomes ``jt`` (default raw: which serves
    the cache better is for the fidelity comparison to decide).

    ``checkpoint``: a folder where every finished sample is written as it completes; with ``resume=True`` a
    run interrupted there continues (its arguments must match; the result equals an uninterrupted run's).
    The folder is left in place: delete it (the CLI does) once the profile is saved.

    Under ``torchrun`` samples are sharded round-robin across ranks and gathered to rank 0, which
    aggregates in global sample order (so the result equals a single-process run up to float
    summation order); every rank returns the same profile. Costs about 3 transformer forwards per
    sample per timestep (4 with CFG, 6 measuring the guided output).
    """
    num_inference_steps = check_int("num_inference_steps", num_inference_steps, 2)
    num_samples = check_int("num_samples", num_samples, 1)
    seed = check_int("seed", seed, 0)
    if jt_curve not in ("raw", "smooth"):
        raise SenCacheError(f"jt_curve must be 'raw' or 'smooth' (got {jt_curve!r})")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in (prompts or [])]
    if not prompts and videos is None:
        raise SenCacheError("calibrate needs at least one prompt (or videos to noise)")

    target = target_for(pipe, pipe_kwargs)
    _refuse_active_cache(pipe)
    samples, frames, video_names = plan_samples(prompts, videos, num_samples, seed)

    dist.init_if_needed()
    grid_scheduler = copy.deepcopy(pipe.scheduler)
    target.set_timesteps(grid_scheduler, num_inference_steps)
    grid = [float(t) for t in grid_scheduler.timesteps]
    if len(set(grid)) != len(grid):
        raise SenCacheError(f"the scheduler's {len(grid)}-step grid repeats a timestep; use another step count")
    per_step = target.forwards_per_step(guided)
    if progress and dist.is_main():
        _announce(num_samples, len(grid), per_step)

    conditioning = target.conditioning_digest()
    saved = None
    if checkpoint is not None:
        saved = RunCheckpoint(checkpoint, {
            "model_class": model_class_name(target.transformer), "config_hash": model_config_hash(target.transformer),
            "grid": grid, "latent_shape": list(target.latent_shape), "guided": bool(guided),
            "guidance": target.guidance, "negative_prompt": target.negative_prompt, "dtype": str(target.dtype),
            **({"conditioning": conditioning} if conditioning else {}),
            "samples": [[s.index, s.prompt, s.seed, None if s.video is None else video_names[s.video]]
                        for s in samples]}, resume=resume, what="calibration")
    mine = dist.shard(samples)
    payload, failure = _measure(pipe, target, mine, frames, grid_scheduler, num_inference_steps, guided,
                                progress and dist.is_main(), len(grid), saved)
    outcome = _gather(payload, num_samples, grid, jt_curve, target.segment_of())
    if outcome[0] == "error":
        if failure is not None:
            raise failure
        if len(outcome) > 2 and outcome[2] is not None and dist.is_main():
            raise outcome[2]
        rank, message = outcome[1][0]
        raise SenCacheError(f"calibration failed on rank {rank}: {message}")
    _, fields, curves = outcome
    metadata = profile_metadata(pipe, target, guided, videos is not None, video_names, jt_curve, samples,
                                num_inference_steps, per_step)
    metadata.update(target.expert_metadata(grid))
    if conditioning:  # image-to-video: which image the profile was measured on
        metadata["conditioning"] = conditioning
    if videos is None and all(c.dist is not None for c in curves):
        metadata["trajectories"] = trajectory_metadata(grid, [np.asarray(c.dist) for c in curves],
                                                       metadata["prompts"], metadata["seeds"])
    return SensitivityProfile(**fields, metadata=metadata)


def plan_samples(prompts: list[str], videos, num_samples: int, seed: int) -> tuple[list[Sample], list, list[str]]:
    """(samples, video frames, video names): sample i's prompt, seed and video. Every rank reads every used
    video, so a bad file fails everywhere alike."""
    if videos is None:
        return [Sample(i, prompts[i % len(prompts)], seed + i) for i in range(num_samples)], [], []
    paths = list_videos(videos) if isinstance(videos, (str, Path)) else [Path(p) for p in videos]
    if not paths:
        raise SenCacheError("videos is empty; pass a folder of .mp4, .gif or .npy videos")
    paths = paths[:num_samples]
    frames = [load_video(p) for p in paths]
    samples = []
    for i in range(num_samples):
        v = i % len(paths)
        caption = paths[v].with_suffix(".txt")
        if caption.is_file():
            prompt = caption.read_text(encoding="utf-8").strip()
        else:
            prompt = prompts[i % len(prompts)] if prompts else ""
        samples.append(Sample(i, prompt, seed + i, v))
    return samples, frames, [p.name for p in paths]


def _announce(num_samples: int, steps: int, per_step: int) -> None:
    total = num_samples * steps * per_step
    ranks = dist.world_size()
    print(f"sencache calibrate: {num_samples} samples x {steps} timesteps x {per_step} forwards "
          f"= {total} transformer forwards" + (f" over {ranks} ranks (~{math.ceil(total / ranks)} each)"
                                               if ranks > 1 else ""), file=sys.stderr)


def _measure(pipe, target, mine, frames, grid_scheduler, num_inference_steps: int, guided: bool, show: bool,
             steps: int, saved: RunCheckpoint | None = None) -> tuple[tuple, BaseException | None]:
    """This rank's samples measured (or read back from ``saved``, where each new one is also written):
    (("ok", [(index, curves), ...]) or ("error", message), the exception)."""
    bar = tqdm(total=len(mine) * steps, desc="calibrating", unit="step", disable=not show, file=sys.stderr)
    try:
        results = []
        with torch.inference_mode():
            for _, sample in mine:
                done = saved.load(sample.index) if saved is not None else None
                if done is not None:
                    results.append((sample.index, SampleCurves(**done[0])))
                    bar.update(steps)
                    continue
                denoise, sampler_output = target.denoisers(sample.prompt, guided)
                if sample.video is None:
                    scheduler = copy.deepcopy(pipe.scheduler)
                    target.set_timesteps(scheduler, num_inference_steps)
                    start = target.noise(sample.seed)
                    step = target.sampler_step()  # after noise(): it goes on with the same generator
                    curves = measure_trajectory(denoise, scheduler, start, sampler_output=sampler_output,
                                                on_step=bar.update, step=step, segment_of=target.segment_of())
                else:
                    x0 = target.encode_video(frames[sample.video])
                    noise = target.noise(sample.seed)
                    curves = measure_noised(denoise, grid_scheduler, x0, noise, sampler_output=sampler_output,
                                            on_step=bar.update, segment_of=target.segment_of())
                curves.final = None  # only the numbers travel to rank 0
                if saved is not None:
                    saved.save(sample.index, curves.record())
                results.append((sample.index, curves))
        return ("ok", results), None
    except Exception as exc:
        return ("error", str(exc) or type(exc).__name__), exc
    finally:
        bar.close()


def _gather(payload: tuple, num_samples: int, grid: list[float], jt_curve: str, segment_of=None) -> tuple:
    """Every rank's payload to rank 0, aggregated there in global sample order, and the outcome back to every
    rank: ("ok", profile fields, curves) or ("error", [(rank, message)], the exception on rank 0 or None)."""
    gathered = dist.gather_objects(payload)
    outcome, failure = None, None
    if dist.is_main():
        errors = [(r, p[1]) for r, p in enumerate(gathered) if p[0] == "error"]
        if errors:
            outcome = ("error", errors)
        else:
            ordered = sorted((item for p in gathered for item in p[1]), key=lambda item: item[0])
            if [i for i, _ in ordered] != list(range(num_samples)):
                outcome = ("error", [(0, "ranks returned an inconsistent set of samples")])
            else:
                try:
                    outcome = ("ok", aggregate(grid, [c for _, c in ordered], jt_curve=jt_curve,
                                               segment_of=segment_of),
                               [c for _, c in ordered])
                except SenCacheError as exc:
                    failure = exc
                    outcome = ("error", [(0, str(exc))])
    outcome = dist.broadcast_object(outcome)
    return outcome if outcome[0] == "ok" else (*outcome, failure)


def profile_metadata(pipe, target, guided: bool, from_videos: bool, video_names: list[str], jt_curve: str,
                     samples: list[Sample], num_inference_steps: int, per_step: int) -> dict:
    """What a profile records about how it was measured (model, scheduler, branch, size, prompts, seeds, ...)."""
    sched_cfg = dict(getattr(pipe.scheduler, "config", {}) or {})
    shift = sched_cfg.get("flow_shift", sched_cfg.get("shift"))
    return dict(
        model_class=model_class_name(target.transformer),
        config_hash=model_config_hash(target.transformer),
        pipeline_class=type(pipe).__name__,
        scheduler_class=type(pipe.scheduler).__name__,
        shift=float(shift) if isinstance(shift, (int, float)) else shift,
        timestep_unit=TIMESTEP_UNIT,
        branch=target.branch(guided),
        guidance=target.guidance,
        source="videos" if from_videos else "trajectory",
        videos=video_names,
        jx_direction="one solver step of a fresh scheduler at t_k" if from_videos else
        "one solver step (the sampler's next latent)",
        jt_curve=jt_curve,
        jt_smoothing=SMOOTHING,
        latent_shape=list(target.latent_shape),
        calibration_size={"num_frames": target.num_frames, "height": target.height, "width": target.width},
        dtype=str(target.dtype).replace("torch.", ""),
        num_samples=len(samples),
        num_inference_steps=num_inference_steps,
        prompts=[s.prompt for s in samples],
        seeds=[s.seed for s in samples],
        forwards_per_step=per_step,
        world_size=dist.world_size(),
        sencache_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
