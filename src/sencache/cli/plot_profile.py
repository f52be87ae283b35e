"""`sencache plot-profile profile.json [--out profile.png]`: ‖J_x‖ and ‖J_t‖ against the timestep.

Two panels on a log scale, sampling order left to right (noise → clean), with the p10–p90 band over
the calibration samples, and for ‖J_t‖ the raw and smoothed curves when the profile has them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from sencache.core.profile import SensitivityProfile
from sencache.errors import SenCacheError
from sencache.toolbox.files import write_atomic


def _positive(values, floor: float) -> np.ndarray:
    """Values for a log axis: zeros (and anything below floor) drawn at floor."""
    return np.maximum(np.asarray(values, dtype=np.float64), floor)


def plot_profile(profile: SensitivityProfile, out) -> Path:
    """Write a PNG of the profile to ``out`` (atomically) and return its path."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    out = Path(out)
    order = np.argsort(profile.timesteps)[::-1]  # sampling order: high t (noise) first
    t = np.asarray(profile.timesteps, dtype=np.float64)[order]
    meta = profile.metadata
    pick = lambda values: np.asarray(values, dtype=np.float64)[order]  # noqa: E731

    everything = [profile.jx, profile.jt, *profile.spread.values(), *profile.curves.values()]
    positive = [v for values in everything for v in values if v > 0]
    floor = min(positive) / 10 if positive else 1e-12

    fig, axes = plt.subplots(2, 1, figsize=(7.5, 7), sharex=True, constrained_layout=True)
    panels = [
        (axes[0], "jx", "‖J_x‖  (rms Δout / rms Δx)", "tab:blue"),
        (axes[1], "jt", "‖J_t‖  (rms Δout / |Δt|)", "tab:red"),
    ]
    for ax, name, label, color in panels:
        lo, hi = profile.spread.get(f"{name}_p10"), profile.spread.get(f"{name}_p90")
        if lo is not None and hi is not None:
            ax.fill_between(t, _positive(pick(lo), floor), _positive(pick(hi), floor), color=color, alpha=0.18,
                            linewidth=0, label="p10–p90 over samples")
        mid = profile.spread.get(f"{name}_p50")
        if mid is not None:
            ax.plot(t, _positive(pick(mid), floor), color=color, linestyle=":", linewidth=1, label="median")
        if name == "jt" and "jt_raw" in profile.curves and "jt_smooth" in profile.curves:
            used = meta.get("jt_curve", "raw")
            ax.plot(t, _positive(pick(profile.curves["jt_raw"]), floor), color=color, marker=".",
                    linewidth=1.6 if used == "raw" else 0.9, alpha=1.0 if used == "raw" else 0.6,
                    label="mean, raw" + (" (used)" if used == "raw" else ""))
            ax.plot(t, _positive(pick(profile.curves["jt_smooth"]), floor), color="black",
                    linewidth=1.6 if used == "smooth" else 0.9, alpha=1.0 if used == "smooth" else 0.7,
                    label="mean, smoothed" + (" (used)" if used == "smooth" else ""))
        else:
            ax.plot(t, _positive(pick(getattr(profile, name)), floor), color=color, marker=".", linewidth=1.6,
                    label="mean")
        ax.set_yscale("log")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8, loc="best")
    if len(t) > 1:
        axes[1].set_xlim(t.max(), t.min())  # noise on the left, clean on the right, as the sampler goes
    axes[1].set_xlabel(f"timestep: {meta.get('timestep_unit', 'transformer input')}      noise → clean")
    bits = [str(meta.get("model_class", "unknown model"))]
    if meta.get("branch"):
        bits.append(f"{meta['branch']} branch")
    if meta.get("num_samples") is not None:
        bits.append(f"{meta['num_samples']} samples")
    if meta.get("num_inference_steps") is not None:
        bits.append(f"{meta['num_inference_steps']} steps")
    if meta.get("source"):
        bits.append(f"source: {meta['source']}")
    fig.suptitle("Sensitivity profile — " + ", ".join(bits), fontsize=10)

    try:
        write_atomic(out, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
    finally:
        plt.close(fig)
    return out


def add_cli(subparsers) -> None:
    """Register ``sencache plot-profile`` and its options on ``subparsers``."""
    p = subparsers.add_parser("plot-profile", help="plot a sensitivity profile (PNG)",
                              description="Draw ||J_x|| and ||J_t|| against the timestep, with the spread "
                                          "over samples.")
    p.add_argument("profile", help="profile JSON written by `sencache calibrate`")
    p.add_argument("--out", default=None, help="PNG to write (default: the profile's name with .png)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    """``sencache plot-profile``: draw the profile to a PNG (by default the profile's name with .png)."""
    path = Path(args.profile)
    out = Path(args.out) if args.out else path.with_suffix(".png")
    if out.suffix.lower() != ".png":
        raise SenCacheError(f"--out must end in .png (got {out})")
    if out.is_dir():
        raise SenCacheError(f"--out {out} is a folder; give a file name like {out / 'profile.png'}")
    profile = SensitivityProfile.load(path)
    plot_profile(profile, out)
    print(f"wrote {out}")
    return 0
