"""Audit: how well does each cache's own error estimate predict the error it really makes?

    result = sencache.harness.audit.audit(pipe, prompts, seeds, SenCacheConfig(profile, eps=0.1),
                                  baselines=baselines, num_inference_steps=50, out_dir="runs/audit")

For every method (SenCache, and MagCache / TeaCache when their calibrated ``baselines`` are given) and
every prompt x seed, a cached generation runs as usual. At every transformer call in which some row
*reused* its cached residual, the real, uncached forward also runs, for measurement only: a session
observer (:class:`~sencache.adapter.observers.CallEvent` at the end of each call) calls the transformer's
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

:func:`sencache.harness.ablations.ablations` runs the paper's two ablations on SenCache — n = max_reuse 1…7 at a fixed
ε, and an ε sweep at fixed n — against the uncached reference (NFE, PSNR, SSIM, LPIPS), as a markdown table
and a plot. ``sencache audit`` (see :mod:`sencache.cli.audit`) drives all of it.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from tqdm.auto import tqdm

from sencache.adapter import hooks
from sencache.adapter.hooks import quiet_sencache
from sencache.adapter.observers import CallEvent
from sencache.errors import SenCacheError
from sencache.methods import MethodContext, get_method, ours_config
from sencache.report.plots import plain_log_ticks
from sencache.runtime.generation import generate
from sencache.statistics.ranks import pearson, spearman
from sencache.toolbox.numbers import fmt_number, jsonable


# --------------------------------------------------------------------------------------------
# recording
# --------------------------------------------------------------------------------------------
@dataclass
class AuditRecord:
    """One reused (or probed) step: the rule's predicted error beside the error the cache really made there."""
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
    forecast: int = 0  # what the reused row got: 0 the held residual (score S), 1 the linear forecast (score S₁)


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
    """The measuring observer: after each cached transformer call with a reused row, the real forward."""

    def __init__(self, method: str, prompt: str, seed: int, guidance_scale: float, sink: list):
        self.method, self.prompt, self.seed = method, prompt, int(seed)
        self.guidance = float(guidance_scale)
        self.sink = sink
        self.real_forwards = 0
        self._pending: dict[int, dict[str, tuple[torch.Tensor, list[AuditRecord]]]] = {}

    def on_call(self, event: CallEvent) -> None:
        rows = event.records
        if not rows or all(r.computed for r in rows):
            return
        module = event.module
        with torch.no_grad():  # the class forward bypasses every cache hook: the real, uncached output
            real = _output_tensor(type(module).forward(module, *event.args, **event.kwargs))
        self.real_forwards += 1
        cached = _output_tensor(event.output)
        diff = (cached.detach().double() - real.detach().double())
        actual, real_rms = _rms_rows(diff), _rms_rows(real)
        made = []
        for r in rows:
            if r.computed:
                continue
            rec = AuditRecord(self.method, self.prompt, self.seed, r.step, event.num_steps, r.timestep, r.branch,
                              r.sample, r.score, r.eps, r.reuse_run, float(actual[r.sample]), float(real_rms[r.sample]),
                              forecast=r.forecast)
            self.sink.append(rec)
            made.append(rec)
        self._combine_branches(event.step, event.branch, diff, made)

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

    sink: list[AuditRecord] = []
    probe = _Probe(method or "", prompt, seed, guidance_scale, sink)
    session = hooks.enable(pipe, config, observers=[probe])
    method = probe.method = method or session.method
    try:
        with quiet_sencache():
            out = generate(pipe, prompt, int(seed), num_inference_steps=num_inference_steps,
                           guidance_scale=guidance_scale, **(call_kwargs or {}))
        summary = session.summary()
    finally:
        hooks.disable(pipe)
    result = {"method": method, "prompt": prompt, "seed": int(seed), "nfe": int(summary["nfe"]), "summary": summary,
              "records": sink, "real_forwards": probe.real_forwards}
    if return_frames:
        result["frames"] = out.frames
    return result


def baseline_configs(baselines, num_inference_steps: int, values: dict | None = None) -> dict[str, Any]:
    """MagCache and TeaCache configs exactly as ``sencache compare`` builds them (its defaults, or ``values``)."""

    ctx = MethodContext(num_inference_steps=int(num_inference_steps), baselines=baselines)
    values = values or {}
    return {name: ours_config(name, get_method(name).coerce(values.get(name)), ctx)
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
    if not result["stats"]:  # nothing to correlate: say so instead of writing an empty table and plot
        settings = ", ".join(name + "".join(f" {k}={v:g}" for k, v in desc.items() if isinstance(v, (int, float)))
                             for name, desc in result["methods"].items())
        raise SenCacheError(f"no method reused a step at these settings ({settings}), so there is no predicted vs "
                            f"actual error to audit; raise --eps (or give --target-nfe below --steps)")
    if out_dir is not None:
        result["files"] = {k: str(v) for k, v in write_audit(result, out_dir).items()}
    return result


def _describe(cfg) -> dict:
    out = {"config": type(cfg).__name__}
    for key in ("eps", "eps_start", "max_reuse", "final_steps", "warmup_fraction", "threshold", "max_skip",
                "retention_ratio", "correction"):
        value = getattr(cfg, key, None)
        if isinstance(value, (int, float, bool)) and value is not None:
            out[key] = value
    budget = getattr(cfg, "budget", None)
    if isinstance(budget, dict) and isinstance(budget.get("target_nfe"), (int, float)):
        out["target_nfe"] = budget["target_nfe"]  # budget mode picked eps for this target
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


def with_forecast_split(rows: list[dict]) -> list[dict]:
    """``rows`` plus, for every method that forecast somewhere, copies named "METHOD [hold]" and
    "METHOD [forecast]" by what each reused row got."""
    forecasting = {r["method"] for r in rows if r.get("forecast")}
    return rows + [{**r, "method": f"{r['method']} [{'forecast' if r.get('forecast') else 'hold'}]"}
                   for r in rows if r["method"] in forecasting]


def correlations(records: Sequence) -> dict:
    """Per method: Pearson (raw, log-log) and Spearman of score against actual error, pooled over steps
    and samples; within-step Spearman across samples (mean over steps with ≥ 3 points); the median
    actual / score ratio. Uses the decider branch (cond for Wan), where the score was computed. A method
    that forecasts also gets "METHOD [hold]" (score S) and "METHOD [forecast]" (score S₁) rows."""
    rows = with_forecast_split([asdict(r) if isinstance(r, AuditRecord) else dict(r) for r in records])
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




def stats_table(result: dict) -> str:
    """The audit as markdown: per method, how well its score orders the real caching errors."""
    T = result["num_inference_steps"]
    lines = [f"Predicted vs actual caching error ({len(result['prompts'])} prompt(s) x {len(result['seeds'])} seed(s), "
             f"T = {T}; actual = rms(cached output − real output) at reused steps)", "",
             "| method | mean NFE | reused points | Pearson | Pearson (log) | Spearman | within-step Spearman (steps) "
             "| median actual/score |", "|---|---|---|---|---|---|---|---|"]
    for method, s in result["stats"].items():
        base = method.split(" [")[0]  # "sencache [forecast]" ran as "sencache"
        nfe = np.mean([r["nfe"] for r in result["runs"] if r["method"] == base])
        lines.append(f"| {method} | {nfe:.2f} | {s['n']} | {fmt_number(s['pearson'])} | "
                     f"{fmt_number(s['pearson_log'])} | {fmt_number(s['spearman'])} | "
                     f"{fmt_number(s['within_step_spearman'])} ({s['within_step_steps']}) | "
                     f"{fmt_number(s['median_actual_over_score'], '.3g')} |")
    lines += ["", "Scores: SenCache S (RMS output units), MagCache accumulated error E, TeaCache accumulated "
              "rescaled change A; Pearson on raw values, Spearman on ranks, pooled over steps and samples. "
              "Within-step Spearman needs ≥ 3 reused samples at a step whose scores differ: a score that depends "
              "only on the timesteps (S₁ when the samples refreshed at the same steps) gives none."]
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
    records = with_forecast_split(result["records"])
    for ax, method in zip(axes[0], methods):
        s = result["stats"][method]
        pts = [r for r in records if r["method"] == method and r["branch"] == s["branch"]
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
            plain_log_ticks(ax.xaxis, ax.get_xlim())
            plain_log_ticks(ax.yaxis, ax.get_ylim())
        else:
            ax.text(0.5, 0.5, "no reused steps", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(f"{method}: r={fmt_number(s['pearson'], '.2f')}, ρ={fmt_number(s['spearman'], '.2f')}, "
                     f"within-step ρ={fmt_number(s['within_step_spearman'], '.2f')}, n={s['n']}", fontsize=9)
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




def write_audit(result: dict, out_dir) -> dict[str, Path]:
    """audit.json, audit.md and scatter.png in ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"audit.json": out / "audit.json", "audit.md": out / "audit.md", "scatter.png": out / "scatter.png"}
    paths["audit.json"].write_text(json.dumps(jsonable(result), indent=1, allow_nan=False))
    paths["audit.md"].write_text(stats_table(result))
    plot_scatter(result, paths["scatter.png"])
    return paths


