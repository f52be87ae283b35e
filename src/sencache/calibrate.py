"""Measure a model's sensitivity profile: ‖J_x‖(t) and ‖J_t‖(t) on its sampling grid.

    profile = sencache.calibrate.calibrate(pipe, ["a red ball rolls left"], num_inference_steps=50, num_samples=8)
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
import inspect
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from . import distributed as dist
from .errors import SenCacheError, UnsupportedModelError
from .loading import load_pipeline
from .profile import SensitivityProfile, model_class_name, model_config_hash
from .prompts import read_prompts

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t) -> model output
SamplerOutput = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (x, t, f) -> sampler's output

TIMESTEP_UNIT = "transformer input (scheduler.timesteps)"
VIDEO_EXTS = (".mp4", ".gif", ".npy", ".webm", ".mov", ".avi", ".mkv")
SMOOTHING = "binomial (1,2,1)/4 over neighbouring grid steps; (2,1)/3 at the ends"


# --------------------------------------------------------------------------------------------
# core: secants along trajectories, given a denoiser and a scheduler
# --------------------------------------------------------------------------------------------
def rms(x: torch.Tensor) -> float:
    return float(x.detach().double().pow(2).mean().sqrt())


def rms_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.detach().double() - b.detach().double()).pow(2).mean().sqrt())


@dataclass
class SampleCurves:
    """One sample's secants, one entry per grid timestep (transformer-input units)."""

    timesteps: list[float]
    jx: list[float] = field(default_factory=list)
    jt: list[float] = field(default_factory=list)
    final: torch.Tensor | None = None  # trajectory source: the sampler's final latent
    dist: list | None = None  # trajectory source: D[j][k] = rms(x_k - x_j) over grid steps (budget mode)


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


def _other_timestep(timesteps: torch.Tensor, k: int):
    if len(timesteps) < 2:
        raise SenCacheError("calibration needs at least 2 inference steps (J_t is a secant between grid timesteps)")
    return timesteps[k + 1] if k + 1 < len(timesteps) else timesteps[k - 1]


def measure_trajectory(denoise: Denoiser, scheduler, latents: torch.Tensor, *,
                       sampler_output: SamplerOutput | None = None, on_step: Callable[[], None] | None = None
                       ) -> SampleCurves:
    """Run the sampler from ``latents`` and measure the secants at every grid timestep it visits.

    ``scheduler`` must have had ``set_timesteps`` called; a deep copy is stepped, so its multistep
    history never leaks between samples. ``denoise(x, t)`` is the measured output; the sampler steps
    with ``sampler_output(x, t, f)`` when given (e.g. CFG-combined while the conditional branch is
    measured), else with f itself. x' for ‖J_x‖ is the sampler's own next latent.
    """
    sched = copy.deepcopy(scheduler)
    if hasattr(sched, "set_begin_index"):
        sched.set_begin_index(0)
    timesteps = sched.timesteps
    out = SampleCurves(timesteps=[float(t) for t in timesteps])
    x = latents
    visited = []
    for k, t in enumerate(timesteps):
        visited.append(x)
        f = denoise(x, t)
        model_output = sampler_output(x, t, f) if sampler_output is not None else f
        x_next = sched.step(model_output, t, x, return_dict=False)[0]
        jx, jt = secants(denoise, x, t, x_next, _other_timestep(timesteps, k), f_xt=f)
        out.jx.append(jx)
        out.jt.append(jt)
        x = x_next
        if on_step is not None:
            on_step()
    out.final = x
    from .budget import distance_matrix

    out.dist = distance_matrix(visited).tolist()  # what budget mode replays the rule on
    return out


def is_flow_matching(scheduler) -> bool:
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
                   sampler_output: SamplerOutput | None = None, on_step: Callable[[], None] | None = None
                   ) -> SampleCurves:
    """Secants at x_{t_k} = x0 noised to each grid timestep; x' is one step of a fresh scheduler at k."""
    timesteps = scheduler.timesteps
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
        jx, jt = secants(denoise, x, t, x_next, _other_timestep(timesteps, k), f_xt=f)
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


def aggregate(timesteps: Sequence[float], samples: Sequence[SampleCurves], jt_curve: str = "raw") -> dict:
    """Per-timestep mean over samples (in the given order) plus spread; the SensitivityProfile fields."""
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
    jt_smooth = np.asarray(smooth_121(jt_raw))
    spread = {"count": [float(len(samples))] * n}
    for name, values in (("jx", jx), ("jt", jt)):
        for q in (10, 50, 90):
            spread[f"{name}_p{q}"] = np.percentile(values, q, axis=0).tolist()
    return dict(
        timesteps=list(timesteps), jx=jx_mean.tolist(), jt=(jt_raw if jt_curve == "raw" else jt_smooth).tolist(),
        spread=spread, curves={"jt_raw": jt_raw.tolist(), "jt_smooth": jt_smooth.tolist()},
    )


# --------------------------------------------------------------------------------------------
# videos (source b)
# --------------------------------------------------------------------------------------------
def list_videos(directory) -> list[Path]:
    d = Path(directory)
    if not d.is_dir():
        raise SenCacheError(f"video folder {d} not found; pass --videos DIR holding .mp4, .gif or .npy files")
    paths = sorted(p for p in d.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_EXTS)
    if not paths:
        raise SenCacheError(f"video folder {d} holds no videos ({', '.join(VIDEO_EXTS)})")
    return paths


def load_video(path) -> np.ndarray:
    """A video as uint8 (F, H, W, 3): mp4/gif/... via imageio, or a .npy uint8 array (F, H, W, 3)."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".npy":
            arr = np.load(path, allow_pickle=False)
        else:
            import imageio.v2 as iio

            arr = np.stack([np.asarray(f) for f in iio.mimread(path, memtest=False)])
    except Exception as exc:  # imageio/ffmpeg/numpy raise many kinds; all mean "cannot read this file"
        lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
        why = lines[-1] if lines else type(exc).__name__
        raise SenCacheError(f"cannot read video {path}: {why}") from None
    if arr.ndim == 3:  # grayscale frames
        arr = np.repeat(arr[..., None], 3, axis=-1)
    if arr.ndim != 4 or arr.shape[-1] not in (3, 4) or arr.shape[0] < 1 or arr.dtype != np.uint8:
        raise SenCacheError(
            f"cannot read video {path}: expected uint8 frames (F, H, W, 3), got {arr.dtype} {tuple(arr.shape)}"
        )
    return np.ascontiguousarray(arr[..., :3])


def resize_video(frames: np.ndarray, num_frames: int, height: int, width: int) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (num_frames, height, width, 3) in [0, 255]: nearest in time, bilinear in space."""
    idx = np.round(np.linspace(0, frames.shape[0] - 1, num_frames)).astype(int)
    x = torch.from_numpy(frames[idx]).float().permute(0, 3, 1, 2)  # (F, 3, H, W)
    if tuple(x.shape[-2:]) != (height, width):
        x = torch.nn.functional.interpolate(x, size=(height, width), mode="bilinear", align_corners=False,
                                            antialias=True).clamp(0, 255)
    return x.permute(0, 2, 3, 1).contiguous()


# --------------------------------------------------------------------------------------------
# model adapter: what calibration needs from a pipeline
# --------------------------------------------------------------------------------------------
def model_defaults(pipe) -> dict:
    """Model-specific pipeline defaults for calibration (the one place that knows the demo model)."""
    from .demo_model.build import demo_call_kwargs, is_demo_pipeline

    return demo_call_kwargs() if is_demo_pipeline(pipe) else {}


def size_kwargs(pipe, frames: int | None = None, height: int | None = None, width: int | None = None) -> dict:
    """Pipeline size arguments for a (frames, height, width) output video; None keeps the default."""
    from .demo_model.build import demo_call_kwargs, is_demo_pipeline, pipeline_size_kwargs

    if is_demo_pipeline(pipe):
        trained = demo_call_kwargs()
        given = zip((frames, height, width), (trained["num_frames"], trained["height"], trained["width"]))
        return pipeline_size_kwargs(*(v if v is not None else d for v, d in given))
    given = {"num_frames": frames, "height": height, "width": width}
    return {k: v for k, v in given.items() if v is not None}


def _is_wan(pipe) -> bool:
    try:
        from diffusers import WanPipeline
    except ImportError:  # pragma: no cover
        return False
    return isinstance(pipe, WanPipeline)


class WanTarget:
    """Calibration view of a (text-to-video) WanPipeline: encode, initial noise, denoisers, VAE."""

    ACCEPTED = ("height", "width", "num_frames", "guidance_scale", "negative_prompt", "max_sequence_length",
                "attention_kwargs")

    def __init__(self, pipe, pipe_kwargs: dict):
        self.pipe = pipe
        unknown = sorted(set(pipe_kwargs) - set(self.ACCEPTED))
        if unknown:
            raise SenCacheError(
                f"calibrate() got unsupported pipeline argument(s) {', '.join(unknown)}; "
                f"it accepts {', '.join(self.ACCEPTED)}"
            )
        if getattr(pipe, "transformer", None) is None or getattr(pipe, "transformer_2", None) is not None:
            raise UnsupportedModelError(
                "calibrate supports Wan pipelines with one transformer; a two-expert Wan 2.2 pipeline needs one "
                "profile per expert, which is not supported yet"
            )
        defaults = {k: p.default for k, p in inspect.signature(type(pipe).__call__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        kw = {**{k: defaults.get(k) for k in self.ACCEPTED}, **model_defaults(pipe), **pipe_kwargs}
        self.transformer = pipe.transformer
        self.device = pipe._execution_device
        self.dtype = self.transformer.dtype
        self.guidance = float(kw["guidance_scale"] if kw["guidance_scale"] is not None else 1.0)
        self.cfg = self.guidance > 1.0
        self.negative_prompt = kw["negative_prompt"] or ""
        self.max_sequence_length = int(kw["max_sequence_length"])
        self.attention_kwargs = kw["attention_kwargs"]
        height, width, num_frames = int(kw["height"]), int(kw["width"]), int(kw["num_frames"])
        if height % 16 or width % 16 or height <= 0 or width <= 0:
            raise SenCacheError(f"height and width must be positive multiples of 16 (got {height}x{width})")
        tf, sf = pipe.vae_scale_factor_temporal, pipe.vae_scale_factor_spatial
        if num_frames % tf != 1:  # the pipeline rounds the same way
            num_frames = num_frames // tf * tf + 1
        num_frames = max(num_frames, 1)
        patch = self.transformer.config.patch_size
        height, width = height // (sf * patch[1]) * (sf * patch[1]), width // (sf * patch[2]) * (sf * patch[2])
        if height <= 0 or width <= 0:
            raise SenCacheError(f"the video is smaller than one patch ({sf * patch[1]}x{sf * patch[2]} pixels)")
        self.height, self.width, self.num_frames = height, width, num_frames
        self.latent_shape = (1, self.transformer.config.in_channels, (num_frames - 1) // tf + 1, height // sf,
                             width // sf)
        self._embeds: dict[str, tuple] = {}

    # -- conditioning --------------------------------------------------------------------------
    def conditioning(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        if prompt not in self._embeds:
            with torch.no_grad():  # as in the pipeline: the text encoder may take another kernel path with grad
                cond, uncond = self.pipe.encode_prompt(
                    prompt=prompt, negative_prompt=self.negative_prompt, do_classifier_free_guidance=self.cfg,
                    num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length, device=self.device,
                )
            self._embeds[prompt] = (cond.to(self.dtype), uncond.to(self.dtype) if uncond is not None else None)
        return self._embeds[prompt]

    def noise(self, seed: int) -> torch.Tensor:
        """The initial latent the pipeline draws with ``generator=torch.Generator().manual_seed(seed)``."""
        generator = torch.Generator().manual_seed(seed)
        _, c, f, h, w = self.latent_shape
        return self.pipe.prepare_latents(1, c, self.height, self.width, self.num_frames, torch.float32, self.device,
                                         generator)

    def encode_video(self, frames: np.ndarray) -> torch.Tensor:
        _, c, f, h, w = self.latent_shape
        vae = getattr(self.pipe, "vae", None)
        if vae is None:
            raise UnsupportedModelError("encoding videos needs the pipeline's VAE, and this pipeline has none")
        video = resize_video(frames, self.num_frames, self.height, self.width)  # (F, H, W, 3) in [0, 255]
        video = (video / 127.5 - 1.0).permute(3, 0, 1, 2)[None].to(vae.device, vae.dtype)
        z = vae.encode(video).latent_dist.mode().float()
        cfg = vae.config
        if getattr(cfg, "latents_mean", None) is not None and getattr(cfg, "latents_std", None) is not None:
            mean = torch.tensor(cfg.latents_mean).view(1, -1, 1, 1, 1).to(z)
            std = torch.tensor(cfg.latents_std).view(1, -1, 1, 1, 1).to(z)
            z = (z - mean) / std
        if tuple(z.shape) != self.latent_shape:
            raise SenCacheError(f"the VAE gave a latent {tuple(z.shape)}, expected {self.latent_shape}")
        return z.to(self.device)

    # -- the denoiser --------------------------------------------------------------------------
    def forward(self, x: torch.Tensor, t: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
        """One transformer call exactly as WanPipeline makes it."""
        t = torch.as_tensor(t, device=x.device)
        if self.pipe.config.expand_timesteps:
            mask = torch.ones(x.shape[2:], dtype=torch.float32, device=x.device)
            timestep = (mask[:, ::2, ::2] * t).flatten().unsqueeze(0).expand(x.shape[0], -1)
        else:
            timestep = t.expand(x.shape[0])
        return self.transformer(hidden_states=x.to(self.dtype), timestep=timestep, encoder_hidden_states=embeds,
                                attention_kwargs=self.attention_kwargs, return_dict=False)[0]

    def denoisers(self, prompt: str, guided: bool) -> tuple[Denoiser, SamplerOutput | None]:
        cond, uncond = self.conditioning(prompt)
        g = self.guidance

        def f_cond(x, t):
            return self.forward(x, t, cond)

        if not self.cfg:
            return f_cond, None

        def combine(x, t, f_c):
            f_u = self.forward(x, t, uncond)
            return f_u + g * (f_c - f_u)

        if guided:
            return (lambda x, t: combine(x, t, f_cond(x, t))), None
        return f_cond, combine

    def forwards_per_step(self, guided: bool) -> int:
        return 3 if not self.cfg else (6 if guided else 4)

    def branch(self, guided: bool) -> str:
        return "guided" if (guided and self.cfg) else "cond"


def target_for(pipe, pipe_kwargs: dict) -> WanTarget:
    if _is_wan(pipe):
        return WanTarget(pipe, pipe_kwargs)
    raise UnsupportedModelError(
        f"calibrate supports WanPipeline for now, got {type(pipe).__name__}; open an issue with the model name"
    )


# --------------------------------------------------------------------------------------------
# calibrate()
# --------------------------------------------------------------------------------------------
@dataclass
class _Sample:
    index: int
    prompt: str
    seed: int
    video: int | None = None  # index into the loaded videos


def _check_int(name: str, value, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise SenCacheError(f"{name} must be an integer >= {minimum} (got {value!r})")
    return int(value)


def _refuse_active_cache(pipe) -> None:
    from .hooks import active_session

    if active_session(pipe) is not None:
        raise SenCacheError("a sencache cache is enabled on this pipeline; "
                            "call sencache.disable(pipe) before calibrating")
    if getattr(pipe.transformer, "is_cache_enabled", False):
        raise SenCacheError("a diffusers cache is enabled on this transformer; call transformer.disable_cache() first")


def calibrate(pipe, prompts: Sequence[str] | None, num_inference_steps: int = 50, num_samples: int = 8, seed: int = 0,
              guided: bool = False, videos=None, progress: bool = True, jt_curve: str = "raw",
              **pipe_kwargs) -> SensitivityProfile:
    """Measure the sensitivity profile of ``pipe``'s transformer on its ``num_inference_steps`` grid.

    Sample i uses prompt ``prompts[i % len(prompts)]`` and seed ``seed + i``; its trajectory is the one
    ``pipe(prompt, generator=torch.Generator().manual_seed(seed + i), **pipe_kwargs)`` samples.
    With ``videos`` (a folder of .mp4/.gif/.npy, or a list of paths), sample i noises video
    ``i % len(videos)`` instead; a ``NAME.txt`` next to a video is its prompt, else ``prompts`` cycle
    (or the empty prompt). ``guided=True`` measures the CFG-combined output instead of the conditional
    branch. ``pipe_kwargs``: height, width, num_frames, guidance_scale, negative_prompt,
    max_sequence_length, attention_kwargs (pipeline defaults, or the demo model's, otherwise).

    ‖J_t‖ zig-zags from step to step; the profile keeps ``curves['jt_raw']`` and a (1,2,1)/4-smoothed
    ``curves['jt_smooth']``; ``jt_curve`` chooses which one becomes ``jt`` (default raw: which serves
    the cache better is for the fidelity comparison to decide).

    Under ``torchrun`` samples are sharded round-robin across ranks and gathered to rank 0, which
    aggregates in global sample order (so the result equals a single-process run up to float
    summation order); every rank returns the same profile. Costs about 3 transformer forwards per
    sample per timestep (4 with CFG, 6 measuring the guided output).
    """
    num_inference_steps = _check_int("num_inference_steps", num_inference_steps, 2)
    num_samples = _check_int("num_samples", num_samples, 1)
    seed = _check_int("seed", seed, 0)
    if jt_curve not in ("raw", "smooth"):
        raise SenCacheError(f"jt_curve must be 'raw' or 'smooth' (got {jt_curve!r})")
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = [str(p) for p in (prompts or [])]
    if not prompts and videos is None:
        raise SenCacheError("calibrate needs at least one prompt (or videos to noise)")

    target = target_for(pipe, pipe_kwargs)
    _refuse_active_cache(pipe)

    # samples, and their videos (every rank reads all used videos, so a bad file fails everywhere alike)
    frames: list[np.ndarray] = []
    video_names: list[str] = []
    samples: list[_Sample] = []
    if videos is not None:
        paths = list_videos(videos) if isinstance(videos, (str, Path)) else [Path(p) for p in videos]
        if not paths:
            raise SenCacheError("videos is empty; pass a folder of .mp4, .gif or .npy videos")
        paths = paths[:num_samples]
        for p in paths:
            frames.append(load_video(p))
            video_names.append(p.name)
        for i in range(num_samples):
            v = i % len(paths)
            caption = paths[v].with_suffix(".txt")
            if caption.is_file():
                prompt = caption.read_text(encoding="utf-8").strip()
            else:
                prompt = prompts[i % len(prompts)] if prompts else ""
            samples.append(_Sample(i, prompt, seed + i, v))
    else:
        samples = [_Sample(i, prompts[i % len(prompts)], seed + i) for i in range(num_samples)]

    dist.init_if_needed()
    grid_scheduler = copy.deepcopy(pipe.scheduler)
    grid_scheduler.set_timesteps(num_inference_steps, device=target.device)
    grid = [float(t) for t in grid_scheduler.timesteps]
    if len(set(grid)) != len(grid):
        raise SenCacheError(f"the scheduler's {len(grid)}-step grid repeats a timestep; use another step count")

    per_step = target.forwards_per_step(guided)
    mine = dist.shard(samples)
    main = dist.is_main()
    if progress and main:
        total = num_samples * len(grid) * per_step
        ranks = dist.world_size()
        print(f"sencache calibrate: {num_samples} samples x {len(grid)} timesteps x {per_step} forwards "
              f"= {total} transformer forwards" + (f" over {ranks} ranks (~{math.ceil(total / ranks)} each)"
                                                   if ranks > 1 else ""), file=sys.stderr)

    from tqdm.auto import tqdm

    bar = tqdm(total=len(mine) * len(grid), desc="calibrating", unit="step", disable=not (progress and main),
               file=sys.stderr)
    payload: tuple
    failure: BaseException | None = None
    try:
        results = []
        with torch.inference_mode():
            for _, sample in mine:
                denoise, sampler_output = target.denoisers(sample.prompt, guided)
                if sample.video is None:
                    scheduler = copy.deepcopy(pipe.scheduler)
                    scheduler.set_timesteps(num_inference_steps, device=target.device)
                    curves = measure_trajectory(denoise, scheduler, target.noise(sample.seed),
                                                sampler_output=sampler_output, on_step=bar.update)
                else:
                    x0 = target.encode_video(frames[sample.video])
                    noise = target.noise(sample.seed)
                    curves = measure_noised(denoise, grid_scheduler, x0, noise, sampler_output=sampler_output,
                                            on_step=bar.update)
                curves.final = None  # only the numbers travel to rank 0
                results.append((sample.index, curves))
        payload = ("ok", results)
    except Exception as exc:
        failure = exc
        payload = ("error", str(exc) or type(exc).__name__)
    finally:
        bar.close()

    gathered = dist.gather_objects(payload)
    outcome = None
    if main:
        errors = [(r, p[1]) for r, p in enumerate(gathered) if p[0] == "error"]
        if errors:
            outcome = ("error", errors)
        else:
            ordered = sorted((item for p in gathered for item in p[1]), key=lambda item: item[0])
            if [i for i, _ in ordered] != list(range(num_samples)):
                outcome = ("error", [(0, "ranks returned an inconsistent set of samples")])
            else:
                try:
                    fields = aggregate(grid, [c for _, c in ordered], jt_curve=jt_curve)
                    outcome = ("ok", fields, [c for _, c in ordered])
                except SenCacheError as exc:
                    failure = exc
                    outcome = ("error", [(0, str(exc))])
    outcome = dist.broadcast_object(outcome)
    if outcome[0] == "error":
        if failure is not None:
            raise failure
        rank, message = outcome[1][0]
        raise SenCacheError(f"calibration failed on rank {rank}: {message}")

    from . import __version__

    sched_cfg = dict(getattr(pipe.scheduler, "config", {}) or {})
    shift = sched_cfg.get("flow_shift", sched_cfg.get("shift"))
    metadata = dict(
        model_class=model_class_name(target.transformer),
        config_hash=model_config_hash(target.transformer),
        pipeline_class=type(pipe).__name__,
        scheduler_class=type(pipe.scheduler).__name__,
        shift=float(shift) if isinstance(shift, (int, float)) else shift,
        timestep_unit=TIMESTEP_UNIT,
        branch=target.branch(guided),
        guidance=target.guidance,
        source="videos" if videos is not None else "trajectory",
        videos=video_names,
        jx_direction="one solver step (the sampler's next latent)" if videos is None else
        "one solver step of a fresh scheduler at t_k",
        jt_curve=jt_curve,
        jt_smoothing=SMOOTHING,
        latent_shape=list(target.latent_shape),
        calibration_size={"num_frames": target.num_frames, "height": target.height, "width": target.width},
        dtype=str(target.dtype).replace("torch.", ""),
        num_samples=num_samples,
        num_inference_steps=num_inference_steps,
        prompts=[s.prompt for s in samples],
        seeds=[s.seed for s in samples],
        forwards_per_step=per_step,
        world_size=dist.world_size(),
        sencache_version=__version__,
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    )
    if videos is None and all(c.dist is not None for c in outcome[2]):
        from .budget import trajectory_metadata

        metadata["trajectories"] = trajectory_metadata(grid, [np.asarray(c.dist) for c in outcome[2]],
                                                       metadata["prompts"], metadata["seeds"])
    return SensitivityProfile(**outcome[1], metadata=metadata)


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate", help="measure a model's sensitivity profile (J_x, J_t per timestep)",
        description="Measure ||J_x|| and ||J_t|| along the model's own sampling trajectories (or noised videos) "
                    "and write a profile for `sencache generate --profile`. Shard over GPUs/CPUs with "
                    "`torchrun --nproc_per_node=K -m sencache.cli calibrate ...`.",
    )
    p.add_argument("--model", help="diffusers pipeline folder (default: the shipped demo model)")
    p.add_argument("--prompts", help="text file, one prompt per line")
    p.add_argument("--steps", type=int, default=50, help="inference steps: the timestep grid (default 50)")
    p.add_argument("--samples", type=int, default=8, help="number of trajectories (prompt x seed; default 8)")
    p.add_argument("--out", default="profile.json", help="where to write the profile (default profile.json)")
    p.add_argument("--seed", type=int, default=0, help="sample i uses generator seed SEED+i (default 0)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the pipeline's)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guided", action="store_true", help="measure the CFG-combined output, not the cond branch")
    p.add_argument("--videos", help="folder of .mp4/.gif/.npy videos to noise instead of sampling trajectories")
    p.add_argument("--frames", type=int, default=None, help="video frames (default: the model's)")
    p.add_argument("--height", type=int, default=None, help="video height in pixels (default: the model's)")
    p.add_argument("--width", type=int, default=None, help="video width in pixels (default: the model's)")
    p.add_argument("--jt-curve", choices=("raw", "smooth"), default="raw", help="which J_t curve becomes jt")
    p.add_argument("--device", default=None, help="torch device (default: cuda:LOCAL_RANK if available, else cpu)")
    p.add_argument("--dtype", choices=("float32", "bfloat16", "float16"), default="float32")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--target-nfe", type=float, default=None,
                   help="also pick the eps whose simulated NFE on these trajectories is closest to this target "
                        "(stored as recommended_eps; SenCacheConfig(profile, target_nfe=N) does the same at load)")
    p.set_defaults(func=run_cli)


def resolve_model_dir(model) -> Path:
    if model is None:
        from . import demo_model

        default = getattr(demo_model, "DEFAULT_MODEL_DIR", None)
        if default is None:
            raise SenCacheError("no --model given and this sencache ships no demo model; pass --model DIR "
                                "(a diffusers pipeline folder)")
        model = default
    path = Path(model)
    if not path.is_dir():
        raise SenCacheError(f"model folder {path} not found; pass --model DIR (a diffusers pipeline folder)")
    return path


def run_cli(args) -> int:
    # cheap checks first: no model is loaded for a mistake in the arguments
    _check_int("--samples", args.samples, 1)
    _check_int("--steps", args.steps, 2)
    _check_int("--seed", args.seed, 0)
    for name in ("frames", "height", "width"):
        value = getattr(args, name)
        if value is not None:
            _check_int(f"--{name}", value, 1)
    out = Path(args.out)
    if out.is_dir():
        raise SenCacheError(f"--out {out} is a folder; give a file name like {out / 'profile.json'}")
    target_nfe = getattr(args, "target_nfe", None)
    if target_nfe is not None:
        if not (math.isfinite(target_nfe) and 1 <= target_nfe <= args.steps):
            raise SenCacheError(f"--target-nfe must be between 1 and --steps {args.steps} (got {target_nfe:g})")
        if args.videos is not None:
            raise SenCacheError("--target-nfe needs sampling trajectories; it cannot be combined with --videos")
    prompts = read_prompts(args.prompts) if args.prompts else None
    if prompts is None and args.videos is None:
        raise SenCacheError("pass --prompts FILE (one prompt per line), or --videos DIR")
    videos = list_videos(args.videos) if args.videos is not None else None
    model_dir = resolve_model_dir(args.model)

    dist.init_if_needed()
    pipe = load_pipeline(model_dir, args.device, args.dtype, progress=not args.no_progress and dist.is_main())
    kwargs = size_kwargs(pipe, args.frames, args.height, args.width)
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    profile = calibrate(pipe, prompts, num_inference_steps=args.steps, num_samples=args.samples, seed=args.seed,
                        guided=args.guided, videos=videos, progress=not args.no_progress, jt_curve=args.jt_curve,
                        **kwargs)
    if dist.is_main():
        profile.metadata["model_dir"] = str(model_dir)
        if target_nfe is not None:
            from .budget import recommend

            budget = recommend(profile, target_nfe)
            print(f"budget: eps={budget['eps']:.4g} gives a simulated mean NFE of {budget['simulated_nfe']:g} "
                  f"(target {target_nfe:g} of {args.steps}) on the {budget['trajectories']} calibration trajectories")
        profile.save(out)
        print(f"wrote {out}: {len(profile.timesteps)} timesteps, J_x {min(profile.jx):.4g}..{max(profile.jx):.4g}, "
              f"J_t {min(profile.jt):.4g}..{max(profile.jt):.4g} ({profile.metadata['branch']} branch, "
              f"{profile.metadata['num_samples']} samples)")
    dist.barrier()
    return 0
