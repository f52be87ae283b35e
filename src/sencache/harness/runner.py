"""The one reference-vs-cached runner: the uncached run of a prompt and seed, then each cache on the same
inputs, scored on raw frames against it (PSNR capped at :data:`~sencache.harness.metrics.PSNR_CAP_DB`).

``sencache compare`` (method registry handles), the SenCache variants and the ablations (configs through
:func:`sencache.enable`) all run through :func:`against_reference`. :func:`cached_nfe` is the NFE a config
achieves on given prompts, without a reference.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Protocol, Sequence

import numpy as np
from tqdm import tqdm

from sencache.adapter.hooks import quiet_sencache
from sencache.harness.metrics import PSNR_CAP_DB, video_metrics
from sencache.methods.ours import SessionHandle
from sencache.runtime.generation import generate
from sencache.toolbox.numbers import finite_or_none


class Handle(Protocol):
    """A cache put on a pipeline: what it did in the last generation, and how to take it off."""

    def stats(self) -> dict:
        """What the cache did in the last generation (with ``nfe``)."""

    def remove(self) -> None:
        """Take the cache off the pipeline."""


class _Uncached:
    def stats(self) -> dict:
        """What the cache did in the last generation (with ``nfe``)."""
        return {}

    def remove(self) -> None:
        """Take the cache off the pipeline."""
        return None


@dataclass
class Run:
    """One generation under a cache (or none): raw frames (F, H, W, 3) in [0, 1], wall time, the handle's stats."""

    frames: np.ndarray
    seconds: float
    stats: dict


def run_with(pipe, attach: Callable[[], Handle], prompt: str, seed: int, gen_kwargs: dict) -> Run:
    """Put a cache on ``pipe`` (``attach()``), generate once, read its stats, take it off (whatever happens)."""
    handle = attach()
    try:
        with quiet_sencache():  # "reused no step" is expected at the low end of a sweep; the trace keeps it
            out = generate(pipe, prompt, int(seed), **gen_kwargs)
        stats = handle.stats()
    finally:
        handle.remove()
    return Run(out.frames, out.seconds, stats)


def score(reference: np.ndarray, test: np.ndarray, use_lpips: bool) -> dict:
    """Fidelity of ``test`` to ``reference``: psnr (capped), psnr_capped, ssim, lpips (None when not computed)."""
    m = video_metrics(reference, test, lpips=use_lpips)
    psnr = float(m["psnr"])
    return {"psnr": min(psnr, PSNR_CAP_DB), "psnr_capped": psnr >= PSNR_CAP_DB, "ssim": finite_or_none(m["ssim"]),
            "lpips": finite_or_none(m.get("lpips"))}


def against_reference(pipe, prompt: str, seed: int, gen_kwargs: dict, caches: dict[str, Callable[[], Handle]],
                      use_lpips: bool, reference: Callable[[], Handle] | None = None,
                      on_run: Callable[[str | None, Run, dict | None], None] | None = None
                      ) -> tuple[Run, dict[str, tuple[Run, dict]]]:
    """The uncached run, then every cache in ``caches`` (key -> attach function) on the same prompt and seed.

    Args:
        pipe: the pipeline.
        prompt, seed: the job.
        gen_kwargs: pipeline call arguments (num_inference_steps, guidance_scale, sizes, ...).
        caches: key -> a function that puts the cache on ``pipe`` and returns its :class:`Handle`.
        use_lpips: also compute LPIPS.
        reference: how to attach the reference run (e.g. an accounting-only handle); default no hooks.
        on_run: called after every run with (key or None for the reference, the run, its scores or None).

    Returns:
        (reference run, {key: (run, scores)}).
    """
    ref = run_with(pipe, reference or _Uncached, prompt, seed, gen_kwargs)
    if on_run is not None:
        on_run(None, ref, None)
    out = {}
    for key, attach in caches.items():
        run = run_with(pipe, attach, prompt, seed, gen_kwargs)
        scores = score(ref.frames, run.frames, use_lpips)
        out[key] = (run, scores)
        if on_run is not None:
            on_run(key, run, scores)
    return ref, out


def runs_against_reference(pipe, jobs, configs: dict, gen_kwargs: dict, use_lpips: bool, desc: str,
                           progress: bool = True) -> dict:
    """For every (prompt, seed) job: the uncached reference, then each SenCache config on the same inputs.

    Returns ``{key: [{prompt, seed, nfe, psnr, ssim, lpips}, ...]}`` in job order.
    """
    bar = tqdm(total=len(jobs) * (1 + len(configs)), desc=desc, unit="run", disable=not progress, leave=False)
    runs: dict = {k: [] for k in configs}
    try:
        for p, s in jobs:
            caches = {key: (lambda cfg=cfg: SessionHandle(pipe, cfg)) for key, cfg in configs.items()}
            _, results = against_reference(pipe, p, s, gen_kwargs, caches, use_lpips,
                                           on_run=lambda *_: bar.update(1))
            for key, (run, scores) in results.items():
                ssim = scores["ssim"] if scores["ssim"] is not None else math.nan  # means stay computable
                runs[key].append({"prompt": p, "seed": s, "nfe": int(run.stats["nfe"]), "psnr": scores["psnr"],
                                  "ssim": ssim, "lpips": scores["lpips"]})
    finally:
        bar.close()
    return runs


def cached_nfe(pipe, config, prompts: Sequence[str], seeds: Sequence[int] = (0,), num_inference_steps: int = 50,
               guidance_scale: float = 5.0, call_kwargs: dict | None = None) -> list[int]:
    """The NFE of a cached generation per prompt x seed (from the adapter's trace). ``call_kwargs`` go to
    the pipeline call (e.g. height, width, num_frames)."""
    gen_kwargs = dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale, **(call_kwargs or {}))
    handle = SessionHandle(pipe, config)
    out = []
    try:
        for p in prompts:
            for s in seeds:
                with quiet_sencache():
                    generate(pipe, p, int(s), **gen_kwargs)
                out.append(int(handle.stats()["nfe"]))
    finally:
        handle.remove()
    return out
