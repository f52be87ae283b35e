"""The paper's two ablations on SenCache against the uncached reference: n = max_reuse 1…7 at a fixed ε,
and an ε sweep at fixed n (NFE, PSNR, SSIM, LPIPS), as a table and a plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from sencache.core.budget import recommended_eps
from sencache.core.replay import solve_eps
from sencache.core.rules.sencache import SenCacheConfig
from sencache.core.trajectories import trajectories_of
from sencache.errors import SenCacheError
from sencache.harness.lpips_weights import lpips_weights_path
from sencache.harness.runner import runs_against_reference
from sencache.report.plots import plain_log_ticks
from sencache.toolbox.numbers import fmt_number, jsonable

# --------------------------------------------------------------------------------------------
# ablations
# --------------------------------------------------------------------------------------------
DEFAULT_N_VALUES = (1, 2, 3, 4, 5, 6, 7)
EPS_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8)


def default_ablation_eps(profile, num_inference_steps: int) -> float:
    """The ε the n-ablation holds fixed: the profile's recommended_eps, else budget mode's ε for NFE ≈ T/2
    (at n = 3), else 0.1."""

    eps = recommended_eps(profile)
    if eps is not None:
        return eps
    try:
        traj = trajectories_of(profile)
        if traj.num_steps == num_inference_steps:
            return solve_eps(SenCacheConfig(profile), num_inference_steps / 2, traj)["eps"]
    except SenCacheError:
        pass
    return 0.1


def ablations(pipe, profile, prompts: Sequence[str], seeds: Sequence[int] = (0,), num_inference_steps: int = 50,
              guidance_scale: float = 5.0, eps: float | None = None, n_values: Sequence[int] = DEFAULT_N_VALUES,
              eps_values: Sequence[float] | None = None, n_fixed: int = 3, final_steps: int = 1,
              use_lpips: bool | None = None, out_dir=None, progress: bool = True,
              call_kwargs: dict | None = None) -> dict:
    """The paper's ablations on SenCache against the uncached reference.

    (a) n = max_reuse over ``n_values`` at fixed ``eps``; (b) ε over ``eps_values`` (default
    eps × 0.5…2.8) at n = ``n_fixed``. NFE from the adapter's trace; PSNR / SSIM / LPIPS of the frames
    against the uncached frames, averaged over prompts x seeds. With ``out_dir``: ablations.json,
    ablations.md, ablations.png.
    """

    if use_lpips is None:
        use_lpips = lpips_weights_path().is_file()
    eps = float(eps) if eps is not None else default_ablation_eps(profile, num_inference_steps)
    eps_values = [float(v) for v in (eps_values or [eps * f for f in EPS_FACTORS])]
    settings = [("max_reuse", int(n), eps, int(n)) for n in n_values] + \
               [("eps", e, e, int(n_fixed)) for e in eps_values]
    jobs = [(p, int(s)) for p in prompts for s in seeds]
    if not jobs:
        raise SenCacheError("ablations need at least one prompt and one seed")

    configs = {i: SenCacheConfig(profile, eps=e, max_reuse=n, final_steps=final_steps)
               for i, (_, _, e, n) in enumerate(settings)}
    per = runs_against_reference(pipe, jobs, configs,
                                 dict(num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                                      **(call_kwargs or {})), use_lpips, desc="ablations", progress=progress)
    rows = []
    for i, (kind, value, e, n) in enumerate(settings):
        r = per[i]
        rows.append({"ablation": kind, "value": value, "eps": e, "max_reuse": n,
                     "nfe": float(np.mean([x["nfe"] for x in r])), "psnr": float(np.mean([x["psnr"] for x in r])),
                     "ssim": float(np.mean([x["ssim"] for x in r])),
                     "lpips": float(np.mean([x["lpips"] for x in r])) if use_lpips else None, "runs": r})
    result = {"format": "sencache-ablations/1", "num_inference_steps": int(num_inference_steps),
              "guidance_scale": float(guidance_scale), "prompts": list(prompts), "seeds": [int(s) for s in seeds],
              "eps_fixed": eps, "n_fixed": int(n_fixed), "final_steps": int(final_steps), "rows": rows}
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        files = {"ablations.json": out / "ablations.json", "ablations.md": out / "ablations.md",
                 "ablations.png": out / "ablations.png"}
        files["ablations.json"].write_text(json.dumps(jsonable(result), indent=1, allow_nan=False))
        files["ablations.md"].write_text(ablation_table(result))
        plot_ablations(result, files["ablations.png"])
        result["files"] = {k: str(v) for k, v in files.items()}
    return result


def ablation_table(result: dict) -> str:
    """The ablations as markdown: NFE and fidelity per max_reuse n at a fixed ε, and per ε."""
    T = result["num_inference_steps"]
    head = "| {} | NFE | PSNR dB | SSIM | LPIPS |\n|---|---|---|---|---|"
    out = [f"SenCache ablations (T = {T}, {len(result['prompts'])} prompt(s) x {len(result['seeds'])} seed(s), "
           f"against the uncached run, final_steps = {result['final_steps']})", "",
           f"(a) n = max_reuse at fixed ε = {result['eps_fixed']:.4g}", "", head.format("n")]
    for r in result["rows"]:
        if r["ablation"] == "max_reuse":
            out.append(f"| {r['value']} | {r['nfe']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{fmt_number(r['lpips'], '.4f')} |")
    out += ["", f"(b) ε at fixed n = {result['n_fixed']}", "", head.format("ε")]
    for r in result["rows"]:
        if r["ablation"] == "eps":
            out.append(f"| {r['value']:.4g} | {r['nfe']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{fmt_number(r['lpips'], '.4f')} |")
    return "\n".join(out) + "\n"


def plot_ablations(result: dict, path) -> Path:
    """PSNR against NFE of both ablations, one panel each, written to ``path``."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    fig, axes = plt.subplots(1, 3, figsize=(14, 4.2), constrained_layout=True)
    for ax, kind, label in ((axes[0], "max_reuse", f"n = max_reuse (ε = {result['eps_fixed']:.3g})"),
                            (axes[1], "eps", f"ε (n = {result['n_fixed']})")):
        rows = [r for r in result["rows"] if r["ablation"] == kind]
        x = [r["value"] for r in rows]
        ax.plot(x, [r["nfe"] for r in rows], "o-", color="tab:blue", label="NFE")
        ax.set_xlabel(label)
        ax.set_ylabel("NFE", color="tab:blue")
        ax.tick_params(axis="y", colors="tab:blue")
        if kind == "eps":
            ax.set_xscale("log")
            plain_log_ticks(ax.xaxis, x)
            ax.set_xticks(x)
            ax.xaxis.set_major_formatter(lambda v, _pos: f"{v:.3g}")
        twin = ax.twinx()
        twin.plot(x, [r["psnr"] for r in rows], "s--", color="tab:red", markerfacecolor="none", markersize=9,
                  label="PSNR")  # hollow: the NFE curve shows through where the two coincide
        twin.set_ylabel("PSNR dB vs uncached", color="tab:red")
        twin.tick_params(axis="y", colors="tab:red")
        ax.grid(True, alpha=0.3)
    ax = axes[2]
    for kind, marker, color, size, dy in (("max_reuse", "o", "tab:purple", 9, -11), ("eps", "s", "tab:green", 5, 4)):
        rows = [r for r in result["rows"] if r["ablation"] == kind]
        ax.plot([r["nfe"] for r in rows], [r["psnr"] for r in rows], marker + "-", color=color, markersize=size,
                markerfacecolor="none" if kind == "max_reuse" else color,
                label="vary n (hollow)" if kind == "max_reuse" else "vary ε")
        seen: dict = {}
        for r in rows:  # one label per point; settings that land on the same point share it
            key = (round(r["nfe"], 6), round(r["psnr"], 6))
            text = f"{r['value']:.3g}" if kind == "eps" else f"n={r['value']}"
            seen[key] = text if key not in seen else (seen[key].split(",")[0] + "…" if kind == "eps"
                                                      else seen[key].split("–")[0] + "–" + str(r["value"]))
        for (nfe, psnr), text in seen.items():
            ax.annotate(text, (nfe, psnr), fontsize=7, xytext=(4, dy), textcoords="offset points", color=color)
    ax.set_xlabel("NFE")
    ax.set_ylabel("PSNR dB vs uncached")
    ax.legend(fontsize=8)
    ax.grid(True, alpha=0.3)
    fig.suptitle(f"SenCache ablations, T = {result['num_inference_steps']}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
