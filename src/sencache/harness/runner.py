"""The one reference-vs-cached runner: for every prompt and seed, the uncached run, then each cache config on
the same inputs, scored on raw frames (PSNR capped at :data:`~sencache.harness.metrics.PSNR_CAP_DB`). And
:func:`cached_nfe`, the NFE a config achieves on given prompts."""

from __future__ import annotations

from typing import Sequence

from sencache.adapter import hooks
from sencache.adapter.hooks import quiet_sencache
from sencache.harness.metrics import PSNR_CAP_DB, video_metrics
from sencache.runtime.generation import generate


# --------------------------------------------------------------------------------------------
# transfer to held-out prompts
# --------------------------------------------------------------------------------------------
def cached_nfe(pipe, config, prompts: Sequence[str], seeds: Sequence[int] = (0,), num_inference_steps: int = 50,
                guidance_scale: float = 5.0, call_kwargs: dict | None = None) -> list[int]:
    """The NFE of a cached generation per prompt x seed (from the adapter's trace). ``call_kwargs`` go to
    the pipeline call (e.g. height, width, num_frames)."""

    out = []
    session = hooks.enable(pipe, config)
    try:
        for p in prompts:
            for s in seeds:
                with quiet_sencache():
                    generate(pipe, p, int(s), num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                             **(call_kwargs or {}))
                out.append(int(session.summary()["nfe"]))
    finally:
        hooks.disable(pipe)
    return out


def runs_against_reference(pipe, jobs, configs: dict, gen_kwargs: dict, use_lpips: bool, desc: str,
                           progress: bool = True) -> dict:
    """For every (prompt, seed) job: the uncached reference, then each SenCache config on the same inputs.

    Returns ``{key: [{prompt, seed, nfe, psnr, ssim, lpips}, ...]}`` in job order (PSNR capped at PSNR_CAP_DB).
    """
    from tqdm import tqdm


    bar = tqdm(total=len(jobs) * (1 + len(configs)), desc=desc, unit="run", disable=not progress, leave=False)
    runs: dict = {k: [] for k in configs}
    try:
        for p, s in jobs:
            ref = generate(pipe, p, s, **gen_kwargs).frames
            bar.update(1)
            for key, cfg in configs.items():
                session = hooks.enable(pipe, cfg)
                try:
                    with quiet_sencache():
                        test = generate(pipe, p, s, **gen_kwargs).frames
                    nfe = int(session.summary()["nfe"])
                finally:
                    hooks.disable(pipe)
                m = video_metrics(ref, test, lpips=use_lpips)
                runs[key].append({"prompt": p, "seed": s, "nfe": nfe, "psnr": min(float(m["psnr"]), PSNR_CAP_DB),
                                  "ssim": float(m["ssim"]), "lpips": m["lpips"]})
                bar.update(1)
    finally:
        bar.close()
    return runs
