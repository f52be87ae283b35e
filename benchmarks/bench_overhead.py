"""Decision overhead: the time the SenCache hooks add to one transformer call, as a fraction of the call.

    nice -n 19 env OMP_NUM_THREADS=1 .venv/bin/python benchmarks/bench_overhead.py

For each model size (tiny: 1 layer, 2 heads x 16; demo: the shipped config, 6 layers, 4 heads x 32;
20m: 12 layers, 8 heads x 48, ffn 512) the script runs the pipeline once uncached and records the inputs of
all 2·T transformer calls (cond and uncond of every step). It then replays those calls, in the pipeline's
cache contexts, in two ways:

1. **A/B.** Plain (no hooks) against hooked (``sencache.enable`` with eps=0: the rule decides every step, every
   call computes, the hooks do all their bookkeeping, the trace is recorded). Repetitions alternate ABBA;
   the overhead is the median over pairs of (hooked − plain) / plain. On a shared 2-core machine this
   difference is within the noise for the bigger models, which is why there is a second measurement:
2. **Direct.** A hooked replay with timers around the hook code only: a torch forward pre-/post-hook pair
   around the transformer and each block (the whole hooked call), minus the time inside each hook's
   ``fn_ref.original_forward`` (the model's own work). What is left is the hook code: diffusers' hook
   dispatch, argument binding, the latent finiteness check, ``rule.decide`` (norms, profile lookup),
   the residual subtraction and store, the trace. Per-component timers (instance wrappers on this
   session's own rule and call protocol; the residual store's ``put`` wrapped on its class during the timed
   replays and restored after) split it up. The timers' own cost,
   measured on an empty module and a no-op function, is subtracted.

The direct overhead is hook time / the rest of the same calls, both from the same timed replays (so the load
of a shared machine weighs on both alike), median over ``--direct-reps`` replays; the A/B overhead is the
independent check. Target: direct overhead < 0.5 %.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
import torch  # noqa: E402

from sencache.adapter.hooks import BLOCK_HOOK, MODEL_HOOK  # noqa: E402
from sencache.adapter.residual_store import ResidualStore  # noqa: E402

NAME = "overhead"
TARGET = 0.005  # 0.5 % of one uncached forward

COMPONENTS = ("rule_decide", "adapter_decide", "begin_call", "end_call_trace", "store_residual")
PARTS = (*COMPONENTS, "dispatch_bind_check_residual", "cache_context")


# --------------------------------------------------------------------------------------------------
# direct timing of the hook code
# --------------------------------------------------------------------------------------------------


class _Acc:
    __slots__ = ("seconds", "count")

    def __init__(self):
        self.seconds, self.count = 0.0, 0


def _timed(fn, acc: _Acc):
    perf = time.perf_counter

    def wrapper(*args, **kwargs):
        t0 = perf()
        try:
            return fn(*args, **kwargs)
        finally:
            acc.seconds += perf() - t0
            acc.count += 1

    return wrapper


class _Window:
    """Wall time of a module's calls, from the end of its forward pre-hooks to the start of its forward hooks."""

    def __init__(self, module, acc: _Acc):
        self.acc, self._t0 = acc, []
        self.handles = [module.register_forward_pre_hook(self._pre), module.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self._t0.append(time.perf_counter())

    def _post(self, module, args, output):
        self.acc.seconds += time.perf_counter() - self._t0.pop()
        self.acc.count += 1

    def remove(self):
        for h in self.handles:
            h.remove()


class HookTimer:
    """Times the hook code of one live CacheSession (see the module docstring). Undo with :meth:`remove`."""

    def __init__(self, session):
        self.session = session
        transformer = session.transformer
        self.total, self.inner = _Acc(), _Acc()
        self.components = {k: _Acc() for k in COMPONENTS}
        self._undo = []
        self._windows = []
        self.missing: list[str] = []
        modules = [(transformer, MODEL_HOOK)] + [(b, BLOCK_HOOK) for b in session.stack.blocks]
        for module, hook_name in modules:
            hook = module._diffusers_hook.get_hook(hook_name)
            original = hook.fn_ref.original_forward
            hook.fn_ref.original_forward = _timed(original, self.inner)
            self._undo.append(lambda fr=hook.fn_ref, o=original: setattr(fr, "original_forward", o))
            self._windows.append(_Window(module, self.total))
        # components: instance attributes on this session's own objects shadow their methods
        self._wrap(session.rule, "decide", "rule_decide")
        self._wrap(session.calls, "_decide", "adapter_decide")
        self._wrap(session.calls, "begin_call", "begin_call")
        self._wrap(session.calls, "end_call", "end_call_trace")
        self._wrap_class(ResidualStore, "put", "store_residual")  # a new store per generation: wrap its class

    def _wrap(self, obj, attr: str, key: str):
        if not callable(getattr(obj, attr, None)):  # the adapter changed: that part stays in the remainder
            self.missing.append(f"{type(obj).__name__}.{attr}")
            return
        setattr(obj, attr, _timed(getattr(obj, attr), self.components[key]))
        self._undo.append(lambda o=obj, a=attr: delattr(o, a))

    def _wrap_class(self, cls, attr: str, key: str):
        original = getattr(cls, attr, None)
        if not callable(original):
            self.missing.append(f"{cls.__name__}.{attr}")
            return
        setattr(cls, attr, _timed(original, self.components[key]))
        self._undo.append(lambda c=cls, a=attr, o=original: setattr(c, a, o))

    def reset(self):
        for acc in (self.total, self.inner, *self.components.values()):
            acc.seconds, acc.count = 0.0, 0

    def remove(self):
        for w in self._windows:
            w.remove()
        for undo in reversed(self._undo):
            undo()
        self._windows, self._undo = [], []

    def result(self, calls: int, window_floor: float, wrapper_cost: float) -> dict:
        """Per transformer call, in seconds: hook code (raw and with the timers' own cost removed)."""
        raw = self.total.seconds - self.inner.seconds
        timers = self.total.count * window_floor + (
            self.inner.count + sum(a.count for a in self.components.values())) * wrapper_cost
        comp = {k: a.seconds / calls for k, a in self.components.items()}
        # nested parts: begin_call runs _decide, which runs rule.decide; end_call stores the residuals
        comp["begin_call"] -= comp["adapter_decide"]
        comp["adapter_decide"] -= comp["rule_decide"]
        comp["end_call_trace"] -= comp["store_residual"]
        hook = max(raw - timers, 0.0) / calls
        comp["dispatch_bind_check_residual"] = max(hook - sum(comp.values()), 0.0)
        return {"hook_s": hook, "hook_raw_s": raw / calls, "timer_cost_s": timers / calls, "components_s": comp}


def timer_costs(reps: int = 2000) -> tuple[float, float]:
    """(empty-window floor, wrapper cost) in seconds: what the timers themselves add per window / per wrap."""
    module = torch.nn.Identity()
    x = torch.zeros(1)
    acc = _Acc()
    w = _Window(module, acc)
    floors = []
    for _ in range(5):
        acc.seconds = 0.0
        for _ in range(reps):
            module(x)
        floors.append(acc.seconds / reps)
    w.remove()
    # the body of Identity.forward is inside the window too; it is part of any module call, so keep it out
    # of the floor only as far as a bare call costs it
    bare = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            module.forward(x)
        bare.append((time.perf_counter() - t0) / reps)

    def noop():
        return None

    costs = []
    wrapped = _timed(noop, _Acc())
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            wrapped()
        t1 = time.perf_counter()
        for _ in range(reps):
            noop()
        t2 = time.perf_counter()
        costs.append(((t1 - t0) - (t2 - t1)) / reps)
    return max(min(floors) - min(bare), 0.0), max(min(costs), 0.0)


# --------------------------------------------------------------------------------------------------
# one model size
# --------------------------------------------------------------------------------------------------


def synthetic_profile(pipe, steps: int):
    """A profile on the scheduler's T-step grid (same lookup cost as a calibrated one; values are irrelevant at
    eps=0)."""
    import copy

    from sencache import SensitivityProfile
    from sencache.core.profile import model_class_name

    sched = copy.deepcopy(pipe.scheduler)
    sched.set_timesteps(steps)
    grid = [float(t) for t in sched.timesteps]
    return SensitivityProfile(grid, [1.0] * len(grid), [1e-3] * len(grid),
                              model_class=model_class_name(pipe.transformer), synthetic=True)


def measure_size(size: str, steps: int, budget_s: float, min_reps: int, max_reps: int, direct_reps: int,
                 floor: float, wrap_cost: float, model_dir=None, profile_path=None) -> dict:
    import sencache
    from sencache import SenCacheConfig
    from sencache.adapter.hooks import quiet_sencache

    pipe, info = common.load_model(size, model_dir)
    transformer = pipe.transformer
    if size == "demo" and (info["source"] != "untrained" or profile_path):
        profile, pinfo = common.load_profile(pipe, info, steps, profile_path, log=common.log)
    else:
        profile, pinfo = synthetic_profile(pipe, steps), {"source": "synthetic (scheduler grid, eps=0)"}
    calls = common.capture_calls(pipe, steps)
    config = SenCacheConfig(profile, eps=0.0, eps_start=0.0)

    hidden = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    latent = calls[0].kwargs["hidden_states"]
    p = transformer.config.patch_size
    tokens = (latent.shape[2] // p[0]) * (latent.shape[3] // p[1]) * (latent.shape[4] // p[2])

    def plain(per_call=None, context=None):
        return common.replay(transformer, calls, per_call, context)

    def hooked(per_call=None, context=None):
        session = sencache.enable(pipe, config)
        try:
            with quiet_sencache():  # eps=0 reuses nothing: keep the "no speed-up" warning off stderr
                seconds = common.replay(transformer, calls, per_call, context)
            summary = session.summary()
        finally:
            sencache.disable(pipe)
        return seconds, summary

    # warm up both paths (first calls allocate)
    plain()
    _, summary = hooked()
    all_computed = summary["nfe"] == steps and summary["computed"] == len(calls)

    plain_calls, hooked_calls, ratios, plain_tot, hooked_tot = [], [], [], [], []
    plain_ctx, hooked_ctx = [], []
    start, reps = time.perf_counter(), 0
    while reps < max_reps and (reps < min_reps or time.perf_counter() - start < budget_s):
        order = (0, 1) if reps % 2 == 0 else (1, 0)  # ABBA
        got = {}
        for which in order:
            if which == 0:
                got[0] = plain(plain_calls, plain_ctx)
            else:
                got[1], _ = hooked(hooked_calls, hooked_ctx)
        plain_tot.append(got[0])
        hooked_tot.append(got[1])
        ratios.append((got[1] - got[0]) / got[0])
        reps += 1

    fwd = common.median(plain_calls)
    # diffusers' cache_context walks every hook registry to hand the context to stateful hooks: with our
    # hooks on the transformer and each block that costs more than on an unhooked model
    context_s = max(common.median(hooked_ctx) - common.median(plain_ctx), 0.0)

    # direct: the hook code itself, on hooked replays with timers. The fraction is taken within each replay
    # (hook time / the rest of the same calls), so that the machine's load weighs on both sides alike.
    direct, fractions = [], []
    for _ in range(direct_reps):
        session = sencache.enable(pipe, config)
        timer = HookTimer(session)
        try:
            with quiet_sencache():
                seconds = common.replay(transformer, calls)
            d = timer.result(len(calls), floor, wrap_cost)
        finally:
            timer.remove()
            sencache.disable(pipe)
        rest = seconds / len(calls) - d["hook_raw_s"] - context_s
        direct.append(d)
        fractions.append((d["hook_s"] + context_s) / rest)

    hook_s = common.median(d["hook_s"] for d in direct) + context_s
    comp = {k: common.median(d["components_s"][k] for d in direct) for k in direct[0]["components_s"]}
    comp["cache_context"] = context_s
    direct_fraction = common.median(fractions)
    q25, q75 = common.quantiles(ratios)
    return {
        "model": info,
        "profile": pinfo,
        "steps": steps,
        "calls_per_replay": len(calls),
        "tokens": tokens,
        "hidden_size": hidden,
        "latent_shape": list(latent.shape),
        "all_calls_computed": bool(all_computed),
        "reps": reps,
        "forward_ms": fwd * 1e3,
        "hooked_call_ms": common.median(hooked_calls) * 1e3,
        "ab_overhead_fraction": common.median(ratios),
        "ab_overhead_p25": q25,
        "ab_overhead_p75": q75,
        "ab_call_median_fraction": (common.median(hooked_calls) - fwd) / fwd,
        "hook_us_per_call": hook_s * 1e6,
        "hook_raw_us_per_call": common.median(d["hook_raw_s"] for d in direct) * 1e6,
        "timer_cost_us_per_call": common.median(d["timer_cost_s"] for d in direct) * 1e6,
        "direct_overhead_fraction": direct_fraction,
        "direct_overhead_fraction_all": fractions,
        "components_us_per_call": {k: v * 1e6 for k, v in comp.items()},
        "direct_reps": direct_reps,
        "meets_target": bool(direct_fraction < TARGET),
    }


def table(sizes: dict) -> str:
    rows = []
    for name, r in sizes.items():
        rows.append([
            name, f"{r['model']['params'] / 1e6:.2f} M", r["tokens"], common.fmt(r["forward_ms"], ".2f"),
            common.fmt(r["hook_us_per_call"], ".0f"), common.pct(r["direct_overhead_fraction"], 3),
            f"{common.pct(r['ab_overhead_fraction'], 2)} [{common.pct(r['ab_overhead_p25'], 1)}, "
            f"{common.pct(r['ab_overhead_p75'], 1)}]", r["reps"], "yes" if r["meets_target"] else "no",
        ])
    head = ["model", "params", "tokens", "uncached call (ms)", "hook code / call (µs)", "direct overhead",
            "A/B overhead [p25, p75]", "A/B pairs", f"< {TARGET:.1%}"]
    comp_rows = []
    for name, r in sizes.items():
        c = r["components_us_per_call"]
        comp_rows.append([name] + [common.fmt(c[k], ".1f") for k in PARTS])
    comp_head = ["model", "rule.decide", "adapter decide", "begin call", "trace (end call)", "residual store",
                 "hook dispatch, bind, finiteness check, residual sub.", "cache_context (extra vs unhooked)"]
    return (common.markdown_table(head, rows) + "\n\nHook code per transformer call by part (µs):\n\n"
            + common.markdown_table(comp_head, comp_rows))


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=list(common.SIZES), choices=list(common.SIZES))
    parser.add_argument("--steps", type=int, default=8, help="denoising steps per replay (default 8: 16 calls)")
    parser.add_argument("--budget-s", type=float, default=60.0, help="A/B seconds per size (default 60)")
    parser.add_argument("--min-reps", type=int, default=8, help="fewest A/B pairs per size (default 8)")
    parser.add_argument("--max-reps", type=int, default=60, help="most A/B pairs per size (default 60)")
    parser.add_argument("--direct-reps", type=int, default=5, help="timed-hook replays per size (default 5)")
    parser.add_argument("--model", default=None, help="demo-size pipeline folder (default: the shipped model)")
    parser.add_argument("--profile", default=None, help="profile for the demo size (default: the shipped one)")
    common.add_common_args(parser, NAME)
    args = parser.parse_args(argv)
    if args.quick:
        args.sizes, args.steps, args.budget_s, args.min_reps, args.max_reps, args.direct_reps = \
            ["tiny"], 3, 0.0, 2, 2, 1
    common.set_threads(args.threads)
    started = time.perf_counter()
    floor, wrap_cost = timer_costs(300 if args.quick else 2000)
    sizes = {}
    for size in args.sizes:
        common.log(f"[overhead] {size} ...")
        sizes[size] = measure_size(size, args.steps, args.budget_s, args.min_reps, args.max_reps, args.direct_reps,
                                   floor, wrap_cost, args.model, args.profile)
    md = table(sizes)
    result = {
        **common.envelope(NAME, "bench_overhead.py", argv, args.quick, started),
        "target_fraction": TARGET,
        "timer_window_floor_us": floor * 1e6,
        "timer_wrapper_us": wrap_cost * 1e6,
        "sizes": sizes,
        "all_meet_target": all(r["meets_target"] for r in sizes.values()),
        "table_md": md,
        "notes": [
            "direct overhead = hook code per call (timers' own cost removed) / the rest of the same calls, median "
            "over the timed replays; "
            "A/B = median over ABBA pairs of (hooked - plain) / plain replays of the same 2T calls",
            "eps=0: every call computes, so the hooks do their full bookkeeping (decide, residual store, trace)",
            f"torch threads {torch.get_num_threads()}; on a GPU the forward is far shorter and the same hook "
            "code (CPU-side, plus the latent finiteness check's sync) weighs more",
        ],
    }
    return common.finish(NAME, "Decision overhead", result, md, args, started)


if __name__ == "__main__":
    main()
