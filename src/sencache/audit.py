"""Audit: how well does each cache's own error estimate predict the error it really makes?

    result = sencache.audit.audit(pipe, prompts, seeds, SenCacheConfig(profile, eps=0.1),
                                  baselines=baselines, num_inference_steps=50, out_dir="runs/audit")

For every method (SenCache, and MagCache / TeaCache when their calibrated ``baselines`` are given) and
every prompt x seed, a cached generation runs as usual. At every transformer call in which some row
*reused* its cached residual, the real, uncached forward also runs, for measurement only: a plain
torch forward hook on the transformer (outside diffusers' hook registry) calls the transformer's
class ``forward`` on the very same arguments. That bypasses the cache's model hook, and the block
hooks see no active call, so every block runs for real and no cache state is read or written; the
cached run's outputs are unchanged (tested bit-exactly). Recorded per reused row:

* ``actual`` — rms(cached output − real output), RMS over elements (the transformer output's units,
  the units S is in);
* ``score`` — the method's own estimate at that step (SenCache: S; MagCache: accumulated error E;
  TeaCache: accumulated rescaled change A), from the adapter's trace;
* ``actual_guided`` — the same for the CFG-combined prediction, when both branches of the step reused.

:func:`correlations` reports per method Pearson (raw and log-log) and Spearman, pooled over steps
and samples, and the within-step Spearman across samples (prompts x seeds) averaged over steps;
:func:`plot_scatter` draws predicted against actual, log-log, one panel per method.

:func:`ablations` runs the paper's two ablations on SenCache — n = max_reuse 1…7 at a fixed ε, and an
ε sweep at fixed n — against the uncached reference (NFE, PSNR, SSIM, LPIPS), as a markdown table
and a plot. ``sencache audit`` (see :mod:`sencache.commands.audit`) drives all of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from .errors import SenCacheError


# --------------------------------------------------------------------------------------------
# statistics (no scipy needed)
# --------------------------------------------------------------------------------------------
def rankdata(values) -> np.ndarray:
    """Ranks 1..n with ties given their average rank (scipy.stats.rankdata's 'average')."""
    x = np.asarray(values, dtype=np.float64)
    order = np.argsort(x, kind="mergesort")
    ranks = np.empty(x.size, dtype=np.float64)
    sorted_x = x[order]
    i = 0
    while i < x.size:
        j = i
        while j + 1 < x.size and sorted_x[j + 1] == sorted_x[i]:
            j += 1
        ranks[order[i:j + 1]] = 0.5 * (i + j) + 1.0
        i = j + 1
    return ranks


def pearson(x, y) -> float:
    """Pearson's r; NaN when fewer than 2 points or a constant input."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"pearson needs equal lengths (got {x.size} and {y.size})")
    if x.size < 2:
        return math.nan
    dx, dy = x - x.mean(), y - y.mean()
    den = math.sqrt(float(np.dot(dx, dx)) * float(np.dot(dy, dy)))
    return float(np.dot(dx, dy) / den) if den > 0 else math.nan


def spearman(x, y) -> float:
    """Spearman's ρ: Pearson's r of the average ranks."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.size != y.size:
        raise ValueError(f"spearman needs equal lengths (got {x.size} and {y.size})")
    if x.size < 2:
        return math.nan
    return pearson(rankdata(x), rankdata(y))


# --------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------
@dataclass
class AuditRecord:
    method: str
    prompt: str
    seed: int
    step: int
    num_steps: int
    timestep: float
    branch: str
    sample: int
    score: float | None  # the method's own estimate at this step
    eps: float | None
    reuse_run: int
    actual: float  # rms(cached output - real output) of this branch
    real_rms: float  # rms(real output), for relative errors
    actual_guided: float | None = None  # the CFG-combined prediction's error (set on the step's last branch)


def _output_tensor(output) -> torch.Tensor:
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)):
        return output[0]
    sample = getattr(output, "sample", None)
    if isinstance(sample, torch.Tensor):
        return sample
    raise SenCacheError(f"cannot read the transformer output ({type(output).__name__})")


def _rms_rows(x: torch.Tensor) -> torch.Tensor:
    return x.detach().double().reshape(x.shape[0], -1).pow(2).mean(dim=1).sqrt().cpu()


class _Probe:
    """The measuring hook: after each cached transformer call with a reused row, the real forward."""

    def __init__(self, session, method: str, prompt: str, seed: int, guidance_scale: float, sink: list):
        self.session, self.method, self.prompt, self.seed = session, method, prompt, int(seed)
        self.guidance = float(guidance_scale)
        self.sink = sink
        self.real_forwards = 0
        self._pending: dict[int, dict[str, tuple[torch.Tensor, list[AuditRecord]]]] = {}

    def __call__(self, module, args, kwargs, output):
        trace = self.session.trace
        if not trace.records:
            return None
        call = self.session.gen.call_index - 1  # _end_call has just counted this call
        if trace.records[-1].call != call:
            return None  # the cache did not act on this call
        rows = [r for r in trace.records if r.call == call]
        if all(r.computed for r in rows):
            return None
        with torch.no_grad():
            real = _output_tensor(type(module).forward(module, *args, **kwargs))
        self.real_forwards += 1
        cached = _output_tensor(output)
        diff = (cached.detach().double() - real.detach().double())
        actual, real_rms = _rms_rows(diff), _rms_rows(real)
        made = []
        for r in rows:
            if r.computed:
                continue
            rec = AuditRecord(self.method, self.prompt, self.seed, r.step, trace.num_steps or 0, r.timestep, r.branch,
                              r.sample, r.score, r.eps, r.reuse_run, float(actual[r.sample]), float(real_rms[r.sample]))
            self.sink.append(rec)
            made.append(rec)
        self._combine_branches(rows[0].step, rows[0].branch, diff, made)
        return None

    def _combine_branches(self, step: int, branch: str, diff: torch.Tensor, made: list[AuditRecord]) -> None:
        """Wan calls cond then uncond: with both diffs of a step, the CFG-combined error
        rms((1 − g)·Δ_uncond + g·Δ_cond)."""
        if branch not in ("cond", "uncond"):
            return
        pending = self._pending.setdefault(step, {})
        pending[branch] = (diff, made)
        for old in [s for s in self._pending if s < step]:
            del self._pending[old]
        if "cond" in pending and "uncond" in pending:
            (dc, made_c), (du, made_u) = pending["cond"], pending["uncond"]
            guided = _rms_rows((1.0 - self.guidance) * du + self.guidance * dc)
            by_sample = {r.sample: r for r in made_u}
            for rec in made_c:
                if rec.sample in by_sample:
                    rec.actual_guided = by_sample[rec.sample].actual_guided = float(guided[rec.sample])
            del self._pending[step]


def audit_run(pipe, config, prompt: str, seed: int, num_inference_steps: int = 50, guidance_scale: float = 5.0,
              method: str | None = None, return_frames: bool = False, call_kwargs: dict | None = None) -> dict:
    """One cached generation with the measuring probe. Returns records, NFE, trace summary (and frames)."""
    from . import hooks
    from .generation import generate
    from .methods import quiet_sencache

    session = hooks.enable(pipe, config)
    method = method or session.method
    sink: list[AuditRecord] = []
    probe = _Probe(session, method, prompt, seed, guidance_scale, sink)
    handle = session.transformer.register_forward_hook(probe, with_kwargs=True)
    try:
        with quiet_sencache():
            out = generate(pipe, prompt, int(seed), num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, **(call_kwargs or {}))
        summary = session.summary()
    finally:
        handle.remove()
        hooks.disable(pipe)
    result = {"method": method, "prompt": prompt, "seed": int(seed), "nfe": int(summary["nfe"]), "summary": summary,
              "records": sink, "real_forwards": probe.real_forwards}
    if return_frames:
        result["frames"] = out.frames
    return result


def baseline_configs(baselines, num_inference_steps: int, values: dict | None = None) -> dict[str, Any]:
    """MagCache and TeaCache configs exactly as ``sencache compare`` builds them (its defaults, or ``values``)."""
    from .methods import MethodContext, _ours_config, get_method

    ctx = MethodContext(num_inference_steps=int(num_inference_steps), baselines=baselines)
    values = values or {}
    return {name: _ours_config(name, get_method(name).coerce(values.get(name)), ctx)
            for name in ("magcache", "teacache")}


def audit(pipe, prompts: Sequence[str], seeds: Sequence[int], config, *, baselines=None, configs: dict | None = None,
          num_inference_steps: int = 50, guidance_scale: float = 5.0, values: dict | None = None, out_dir=None,
          progress: bool = True, call_kwargs: dict | None = None) -> dict:
    """Measure predicted against actual caching error for SenCache (``config``) and the baselines.

    ``configs`` adds or replaces methods by name (any sencache rule config); with ``baselines`` MagCache
    and TeaCache join with compare's default thresholds (or ``values``). Returns a JSON-able dict:
    ``records`` (one per reused row and call), ``runs`` (NFE per method, prompt, seed), ``stats``
    (:func:`correlations`). With ``out_dir``: audit.json, audit.md and scatter.png there.
    """
    from tqdm.auto import tqdm

    methods: dict[str, Any] = {}
    if config is not None:
        methods["sencache"] = config
    if baselines is not None:
        methods.update(baseline_configs(baselines, num_inference_steps, values))
    methods.update(configs or {})
    if not methods:
        raise SenCacheError("nothing to audit: pass a SenCacheConfig, baselines, or configs")
    jobs = [(p, int(s)) for p in prompts for s in seeds]
    if not jobs:
        raise SenCacheError("audit needs at least one prompt and one seed")
    records: list[AuditRecord] = []
    runs = []
    bar = tqdm(total=len(jobs) * len(methods), desc="audit", unit="run", disable=not progress)
    try:
        for name, cfg in methods.items():
            for p, s in jobs:
                r = audit_run(pipe, cfg, p, s, num_inference_steps, guidance_scale, method=name,
                              call_kwargs=call_kwargs)
                records.extend(r["records"])
                runs.append({"method": name, "prompt": p, "seed": s, "nfe": r["nfe"],
                             "reused_steps": r["summary"]["skipped_steps"], "real_forwards": r["real_forwards"]})
                bar.update(1)
    finally:
        bar.close()
    result = {
        "format": "sencache-audit/1",
        "num_inference_steps": int(num_inference_steps),
        "guidance_scale": float(guidance_scale),
        "prompts": list(prompts),
        "seeds": [int(s) for s in seeds],
        "methods": {name: _describe(cfg) for name, cfg in methods.items()},
        "runs": runs,
        "stats": correlations(records),
        "records": [asdict(r) for r in records],
    }
    if out_dir is not None:
        result["files"] = {k: str(v) for k, v in write_audit(result, out_dir).items()}
    return result


def _describe(cfg) -> dict:
    out = {"config": type(cfg).__name__}
    for key in ("eps", "eps_start", "max_reuse", "final_steps", "warmup_fraction", "threshold", "max_skip",
                "retention_ratio", "correction", "target_nfe"):
        value = getattr(cfg, key, None)
        if isinstance(value, (int, float, bool)) and value is not None:
            out[key] = value
    sched = getattr(cfg, "eps_schedule", None)
    if sched is not None:
        out["eps_schedule"] = sched.to_dict()
    return out


# --------------------------------------------------------------------------------------------
# analysis
# --------------------------------------------------------------------------------------------
DECIDER_BRANCHES = ("cond", "cond_uncond", "default")


def _decider_branch(records: list[dict]) -> str | None:
    branches = {r["branch"] for r in records}
    for b in DECIDER_BRANCHES:
        if b in branches:
            return b
    return next(iter(branches), None)


def correlations(records: Sequence) -> dict:
    """Per method: Pearson (raw, log-log) and Spearman of score against actual error, pooled over steps
    and samples; within-step Spearman across samples (mean over steps with ≥ 3 points); the median
    actual / score ratio. Uses the decider branch (cond for Wan), where the score was computed."""
    rows = [asdict(r) if isinstance(r, AuditRecord) else dict(r) for r in records]
    out = {}
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        branch = _decider_branch(mine)
        pts = [r for r in mine if r["branch"] == branch and r["score"] is not None and math.isfinite(r["score"])]
        x = np.array([r["score"] for r in pts], dtype=np.float64)
        y = np.array([r["actual"] for r in pts], dtype=np.float64)
        pos = (x > 0) & (y > 0)
        by_step: dict[int, list[int]] = {}
        for i, r in enumerate(pts):
            by_step.setdefault(r["step"], []).append(i)
        within = []
        for idx in by_step.values():
            if len(idx) >= 3 and np.ptp(x[idx]) > 0 and np.ptp(y[idx]) > 0:
                within.append(spearman(x[idx], y[idx]))
        guided = [(r["score"], r["actual_guided"]) for r in pts if r.get("actual_guided") is not None]
        out[method] = {
            "branch": branch,
            "n": int(x.size),
            "pearson": pearson(x, y),
            "pearson_log": pearson(np.log(x[pos]), np.log(y[pos])) if pos.sum() >= 2 else math.nan,
            "spearman": spearman(x, y),
            "spearman_guided": spearman(*zip(*guided)) if len(guided) >= 2 else math.nan,
            "within_step_spearman": float(np.mean(within)) if within else math.nan,
            "within_step_steps": len(within),
            "median_actual_over_score": float(np.median(y[pos] / x[pos])) if pos.any() else math.nan,
        }
    return out


def _fmt(v, spec=".3f") -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, spec)


def stats_table(result: dict) -> str:
    T = result["num_inference_steps"]
    lines = [f"Predicted vs actual caching error ({len(result['prompts'])} prompt(s) x {len(result['seeds'])} seed(s), "
             f"T = {T}; actual = rms(cached output − real output) at reused steps)", "",
             "| method | mean NFE | reused points | Pearson | Pearson (log) | Spearman | within-step Spearman (steps) "
             "| median actual/score |", "|---|---|---|---|---|---|---|---|"]
    for method, s in result["stats"].items():
        nfe = np.mean([r["nfe"] for r in result["runs"] if r["method"] == method])
        lines.append(f"| {method} | {nfe:.2f} | {s['n']} | {_fmt(s['pearson'])} | {_fmt(s['pearson_log'])} | "
                     f"{_fmt(s['spearman'])} | {_fmt(s['within_step_spearman'])} ({s['within_step_steps']}) | "
                     f"{_fmt(s['median_actual_over_score'], '.3g')} |")
    lines += ["", "Scores: SenCache S (RMS output units), MagCache accumulated error E, TeaCache accumulated "
              "rescaled change A; Pearson on raw values, Spearman on ranks, pooled over steps and samples."]
    return "\n".join(lines) + "\n"


def plot_scatter(result: dict, path) -> Path:
    """Predicted (score) against actual error, log-log, one panel per method, coloured by step."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    methods = list(result["stats"])
    fig, axes = plt.subplots(1, len(methods), figsize=(4.6 * len(methods), 4.4), squeeze=False,
                             constrained_layout=True)
    T = result["num_inference_steps"]
    sc = None
    for ax, method in zip(axes[0], methods):
        s = result["stats"][method]
        pts = [r for r in result["records"] if r["method"] == method and r["branch"] == s["branch"]
               and r["score"] is not None and r["score"] > 0 and r["actual"] > 0]
        if pts:
            x = np.array([r["score"] for r in pts])
            y = np.array([r["actual"] for r in pts])
            c = np.array([r["step"] / max(1, T - 1) for r in pts])
            sc = ax.scatter(x, y, c=c, cmap="viridis", vmin=0, vmax=1, s=16, alpha=0.8, edgecolors="none")
            lo, hi = min(x.min(), y.min()), max(x.max(), y.max())
            if method == "sencache":
                ax.plot([lo, hi], [lo, hi], "k--", linewidth=0.8, label="actual = S")
                ax.legend(loc="upper left", fontsize=8)
            ax.set_xscale("log")
            ax.set_yscale("log")
            _plain_log_ticks(ax.xaxis, ax.get_xlim())
            _plain_log_ticks(ax.yaxis, ax.get_ylim())
        else:
            ax.text(0.5, 0.5, "no reused steps", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{method}: r={_fmt(s['pearson'], '.2f')}, ρ={_fmt(s['spearman'], '.2f')}, "
                     f"within-step ρ={_fmt(s['within_step_spearman'], '.2f')}, n={s['n']}", fontsize=9)
        ax.set_xlabel("predicted (the method's own score)")
        ax.set_ylabel("actual rms(cached − real output)")
        ax.grid(True, which="both", alpha=0.25)
    if sc is not None:
        fig.colorbar(sc, ax=axes[0].tolist(), label="step / (T − 1)", shrink=0.85)
    fig.suptitle(f"Caching error: predicted vs actual ({s['branch']} branch, reused steps)", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plain_log_ticks(axis, values) -> None:
    """Readable ticks on a log axis whose data span less than a decade (matplotlib would label minor ticks)."""
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= 0 or hi / max(lo, 1e-300) >= 10:
        axis.set_minor_formatter(NullFormatter())
        return
    ticks = np.geomspace(lo, hi, 6)[1:-1] if hi > lo else np.array([lo])
    axis.set_major_locator(FixedLocator(ticks))
    axis.set_minor_locator(NullLocator())
    axis.set_major_formatter(lambda v, _pos: f"{v:.3g}")


def write_audit(result: dict, out_dir) -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"audit.json": out / "audit.json", "audit.md": out / "audit.md", "scatter.png": out / "scatter.png"}
    paths["audit.json"].write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False))
    paths["audit.md"].write_text(stats_table(result))
    plot_scatter(result, paths["scatter.png"])
    return paths


def _jsonable(obj):
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items() if k != "frames"}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj


# --------------------------------------------------------------------------------------------
# ablations
# --------------------------------------------------------------------------------------------
DEFAULT_N_VALUES = (1, 2, 3, 4, 5, 6, 7)
EPS_FACTORS = (0.5, 0.7, 1.0, 1.4, 2.0, 2.8)


def default_ablation_eps(profile, num_inference_steps: int) -> float:
    """The ε the n-ablation holds fixed: the profile's recommended_eps, else budget mode's ε for NFE ≈ T/2
    (at n = 3), else 0.1."""
    from .budget import recommended_eps, solve_eps, trajectories_of
    from .rules.sencache import SenCacheConfig

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
    from .metrics import lpips_weights_path
    from .rules.sencache import SenCacheConfig

    if use_lpips is None:
        use_lpips = lpips_weights_path().is_file()
    eps = float(eps) if eps is not None else default_ablation_eps(profile, num_inference_steps)
    eps_values = [float(v) for v in (eps_values or [eps * f for f in EPS_FACTORS])]
    settings = [("max_reuse", int(n), eps, int(n)) for n in n_values] + \
               [("eps", e, e, int(n_fixed)) for e in eps_values]
    jobs = [(p, int(s)) for p in prompts for s in seeds]
    if not jobs:
        raise SenCacheError("ablations need at least one prompt and one seed")
    from .budget import runs_against_reference

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
        files["ablations.json"].write_text(json.dumps(_jsonable(result), indent=1, allow_nan=False))
        files["ablations.md"].write_text(ablation_table(result))
        plot_ablations(result, files["ablations.png"])
        result["files"] = {k: str(v) for k, v in files.items()}
    return result


def ablation_table(result: dict) -> str:
    T = result["num_inference_steps"]
    head = "| {} | NFE | PSNR dB | SSIM | LPIPS |\n|---|---|---|---|---|"
    out = [f"SenCache ablations (T = {T}, {len(result['prompts'])} prompt(s) x {len(result['seeds'])} seed(s), "
           f"against the uncached run, final_steps = {result['final_steps']})", "",
           f"(a) n = max_reuse at fixed ε = {result['eps_fixed']:.4g}", "", head.format("n")]
    for r in result["rows"]:
        if r["ablation"] == "max_reuse":
            out.append(f"| {r['value']} | {r['nfe']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{_fmt(r['lpips'], '.4f')} |")
    out += ["", f"(b) ε at fixed n = {result['n_fixed']}", "", head.format("ε")]
    for r in result["rows"]:
        if r["ablation"] == "eps":
            out.append(f"| {r['value']:.4g} | {r['nfe']:.2f} | {r['psnr']:.2f} | {r['ssim']:.4f} | "
                       f"{_fmt(r['lpips'], '.4f')} |")
    return "\n".join(out) + "\n"


def plot_ablations(result: dict, path) -> Path:
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
            _plain_log_ticks(ax.xaxis, x)
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
