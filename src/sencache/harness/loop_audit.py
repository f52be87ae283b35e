"""Audit of the closed-loop rule: does it predict its local errors, and the error each clip ends up with?

Per prompt × seed, at one fixed tolerance: the uncached reference, then the cached generation with the measuring
probe of :mod:`sencache.harness.audit` (at every reused call the real forward also runs, for measurement only).

* **Local:** at every reused step (decider branch) the rule's predicted residual error ê = cost / gain(t) against
  the real error of the output (rms(cached − real)); Spearman pooled over steps and samples, and within a step
  across samples, for held and forecast steps apart.
* **Clip:** the rule's predicted clip error (frame RMS, the sum of its reused steps' costs × combine) against the
  real one (frame RMS against the uncached clip), Spearman across clips; predicted PSNR against real PSNR.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sencache.core.loop import loop_calibration, step_gain
from sencache.harness.audit import audit_run, correlations
from sencache.harness.metrics import psnr
from sencache.runtime.generation import generate
from sencache.statistics.ranks import spearman
from sencache.toolbox.numbers import jsonable


def local_records(records: Sequence, profile, num_steps: int) -> list[dict]:
    """The probe's records with the score turned from clip cost into the predicted local error ê."""
    calibrated = int(loop_calibration(profile)["num_inference_steps"])
    out = []
    for r in records:
        row = asdict(r)
        if row["score"] is not None and math.isfinite(row["score"]):
            gain = float(step_gain(profile, torch.tensor([row["timestep"]]), num_steps, calibrated)[0])
            row["score"] = row["score"] / gain
        out.append(row)
    return out


def loop_audit(pipe, config, prompts: Sequence[str], seeds: Sequence[int], num_inference_steps: int = 50,
               guidance_scale: float = 5.0, progress: bool = True) -> dict:
    """Run the audit at ``config`` (a closed-loop :class:`~sencache.SenCacheConfig`); a JSON-able dict."""
    jobs = [(p, int(s)) for p in prompts for s in seeds]
    records, clips = [], []
    for prompt, seed in tqdm(jobs, desc="loop audit", disable=not progress):
        ref = generate(pipe, prompt, seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
        run = audit_run(pipe, config, prompt, seed, num_inference_steps, guidance_scale, method="sencache",
                        return_frames=True)
        records.extend(local_records(run["records"], config.profile, num_inference_steps))
        predicted = run["summary"].get("predicted_psnr_per_sample") or [None]
        real_err = float(np.sqrt(np.mean((run["frames"].astype(np.float64) - ref.frames) ** 2)))
        clips.append({"prompt": prompt, "seed": seed, "nfe": run["nfe"], "predicted_psnr": predicted[0],
                      "predicted_error": 10 ** (-predicted[0] / 20) if predicted[0] is not None else 0.0,
                      "real_error": real_err, "real_psnr": psnr(ref.frames, run["frames"])})
    x = [c["predicted_error"] for c in clips]
    y = [c["real_error"] for c in clips]
    stats = correlations(records)
    return {
        "format": "sencache-loop-audit/1",
        "eps": float(config.eps),
        "num_inference_steps": int(num_inference_steps),
        "prompts": list(prompts), "seeds": [int(s) for s in seeds],
        "local": stats,
        "clip": {"spearman": spearman(x, y) if len(clips) >= 3 else math.nan,
                 "median_real_over_predicted": float(np.median([b / a for a, b in zip(x, y) if a > 0]))
                 if any(a > 0 for a in x) else math.nan,
                 "mean_nfe": float(np.mean([c["nfe"] for c in clips]))},
        "clips": clips,
        "records": records,
    }


def audit_table(results: Sequence[dict]) -> str:
    """Markdown: one block per tolerance, local Spearman (all / hold / forecast) and clip Spearman."""
    lines = ["| ε (tolerance) | mean NFE | local Spearman (all / hold / forecast) | within-step Spearman (all) | "
             "clip Spearman (predicted vs real error) | median real / predicted clip error |",
             "|---|---|---|---|---|---|"]
    for r in results:
        loc = r["local"]

        def sp(name, key="spearman"):
            v = loc.get(name, {}).get(key, math.nan)
            return "–" if v is None or not math.isfinite(v) else f"{v:.2f}"
        lines.append(f"| {r['eps']:.3g} | {r['clip']['mean_nfe']:.1f} | {sp('sencache')} / {sp('sencache [hold]')} / "
                     f"{sp('sencache [forecast]')} | {sp('sencache', 'within_step_spearman')} | "
                     f"{r['clip']['spearman']:.2f} | {r['clip']['median_real_over_predicted']:.2f} |")
    return "\n".join(lines) + "\n"


def plot_loop_audit(results: Sequence[dict], path) -> Path:
    """Two panels: predicted vs real local error (log-log), predicted vs real PSNR per clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4.2))
    for r in results:
        pts = [(x["score"], x["actual"]) for x in r["records"] if x["score"] and x["actual"] and x["branch"] in
               ("cond", "cond_uncond", "default")]
        if pts:
            xs, ys = zip(*pts)
            a.scatter(xs, ys, s=6, alpha=0.5, label=f"ε {r['eps']:.2g}")
        c = [(x["predicted_psnr"], x["real_psnr"]) for x in r["clips"] if x["predicted_psnr"] is not None]
        if c:
            b.scatter(*zip(*c), s=16, label=f"ε {r['eps']:.2g} (NFE {r['clip']['mean_nfe']:.0f})")
    a.set(xscale="log", yscale="log", xlabel="predicted residual error ê at a reused step",
          ylabel="real output error rms(cached − real)", title="local error")
    lo, hi = b.get_xlim()
    b.plot([lo, hi], [lo, hi], color="grey", lw=0.8, ls="--")
    b.set(xlabel="predicted PSNR (dB)", ylabel="real PSNR (dB)", title="per clip")
    a.legend(fontsize=8)
    b.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def write_loop_audit(results: Sequence[dict], out_dir) -> dict[str, Path]:
    """audit.json, audit.md and audit.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audit.json").write_text(json.dumps(jsonable(list(results)), indent=1))
    (out / "audit.md").write_text(audit_table(results))
    return {"json": out / "audit.json", "md": out / "audit.md", "png": plot_loop_audit(results, out / "audit.png")}
