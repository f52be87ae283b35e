"""The live state of one cached transformer: per-generation decisions, cached residuals and the trace.

A :class:`CacheSession` is what :func:`sencache.enable` returns. The hooks (:mod:`sencache.adapter.hooks`)
drive it call by call: ``_begin_call`` (a new generation? a new step?), ``_decide`` (ask the rule once per
step; every CFG branch of the step follows), the residual store, and ``_end_call`` (trace rows, then one
:class:`~sencache.adapter.observers.CallEvent` to each observer). Decision state lives on the CPU
(per-sample masks, counters); cached residuals live with the activations (or in host memory with
``offload_residuals``). Nothing outside the adapter reads this module's private state.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Sequence

import torch

from sencache.adapter.grid import token_grid
from sencache.adapter.layout import find_block_stack
from sencache.adapter.noise_level import noise_level
from sencache.adapter.observers import CallEvent, SessionObserver
from sencache.adapter.parallel import DecisionSync
from sencache.adapter.plan import StackPlan
from sencache.adapter.refresh_errors import refresh_errors
from sencache.adapter.trace import Trace, TraceRecord
from sencache.core.rules.base import Decision, StepInput, rms_per_sample
from sencache.errors import SenCacheError
from sencache.toolbox.numbers import finite_or_none

logger = logging.getLogger("sencache")


@dataclass
class _Call:
    branch: str
    step: int
    num_steps: int
    latent: torch.Tensor
    timestep: torch.Tensor  # (B,) float
    compute: torch.Tensor | None = None  # (B,) bool, rows whose block stack runs
    reasons: list[str] | None = None
    modulation: torch.Tensor | None = None  # the first block's temb, for observers
    t_cpu: torch.Tensor | None = None  # (B,) float64 timestep on the CPU (decisions and forecasts live there)
    decider: bool = False  # this call asked the rule for the step's decision
    residual: torch.Tensor | None = None  # new block-stack residual of the computed rows, for observers
    grid: torch.Tensor | None = None  # (B, F, H, W, C) the rule's grid signal (rules with reads_grid)
    sigma: float | None = None  # the step's noise level, given with grid


@dataclass
class _Generation:
    rule_state: Any = None
    num_steps: int | None = None
    batch: int | None = None
    step: int | None = None
    branches_this_step: set = field(default_factory=set)
    decision: Decision | None = None
    step_input: StepInput | None = None
    decider_branch: str | None = None
    reuse_run: torch.Tensor | None = None
    residual: dict = field(default_factory=dict)  # branch -> (B, ...) video-stream residual
    # forecasting (rules whose decisions carry an order): the refresh before the last, per branch and row
    residual_prev: dict = field(default_factory=dict)  # branch -> (B, ...) residual of the previous refresh
    refresh_t: dict = field(default_factory=dict)  # branch -> (B,) float64 timestep of the last refresh
    prev_t: dict = field(default_factory=dict)  # branch -> (B,) float64 timestep of the one before (NaN: none)
    encoder_residual: dict = field(default_factory=dict)
    has_residual: dict = field(default_factory=dict)  # branch -> (B,) bool
    call_index: int = 0
    warned_no_reuse: bool = False
    guard_changes: int = 0  # reuse decisions the rank-consistency guard turned into refreshes
    guard_steps: list = field(default_factory=list)
    guard_note: int | None = None  # index of the guard's note in trace.notes
    expert: str = "transformer"  # the denoising transformer serving this generation's current steps

    def switched_to(self, expert: str, rule_state) -> "_Generation":
        """The same generation (step count, trace position, guard notes) with an empty cache for another expert:
        one expert's residuals mean nothing to the other, so the new expert's first step computes."""
        keep = ("num_steps", "batch", "step", "branches_this_step", "call_index", "warned_no_reuse",
                "guard_changes", "guard_steps", "guard_note")
        return _Generation(rule_state=rule_state, expert=expert, **{k: getattr(self, k) for k in keep})


class CacheSession:
    """What :func:`sencache.enable` returns: the live cache of one transformer, with the trace of its last call.

    Args:
        transformer: the hooked transformer, or the pipeline's denoising transformers by name (Wan 2.2:
            ``{"transformer": high_noise, "transformer_2": low_noise}``): one step count, rule and trace for all;
            each expert has its own block stack and starts with an empty cache when it takes over.
        scheduler: the pipeline's scheduler (for the step index).
        config: the rule's config (``build_rule()``).
        num_inference_steps: T for a bare transformer without a scheduler.
        sync: rank-consistent decisions under context parallelism, or None.
        offload_residuals: keep cached residuals in (pinned) host memory.
        observers: told of every transformer call (:class:`~sencache.adapter.observers.CallEvent`).
        remove: takes the hooks off (what :meth:`disable` calls).

    Public state: ``trace`` (the last generation's decisions), ``observers``, ``stacks`` (each expert's block
    stack; ``stack`` the first's), ``method``; :meth:`summary`, :meth:`residuals`, :meth:`residual_bytes`,
    :meth:`cache_state`.
    """

    def __init__(self, transformer, scheduler, config, num_inference_steps: int | None = None,
                 sync: DecisionSync | None = None, offload_residuals: bool = False,
                 observers: Sequence[SessionObserver] = (), remove: Callable[[], None] | None = None):
        self.transformers = dict(transformer) if isinstance(transformer, dict) else {"transformer": transformer}
        self.transformer = next(iter(self.transformers.values()))
        self.stacks = {name: find_block_stack(module) for name, module in self.transformers.items()}
        self.stack = next(iter(self.stacks.values()))
        self.scheduler = scheduler
        self.config = config
        self.rule = config.build_rule()
        self.method = getattr(self.rule, "name", type(self.rule).__name__)
        self.num_inference_steps = num_inference_steps
        self.trace = Trace(method=self.method)
        self.standing_notes: list[str] = []  # facts about this pipeline every generation's trace repeats
        self._gen = _Generation()
        self._call: _Call | None = None
        self.plan = StackPlan()  # what the block hooks do in the current call (see sencache.adapter.plan)
        # TeaCache watches the first block's modulation, so its decision waits for that block
        self.plan.decide_at_head = bool(getattr(self.rule, "reads_modulation", False))
        # the paper's SeaCache watches the first block's modulated input: decided at that block's first attention
        self.plan.decide_in_attention = bool(getattr(self.rule, "reads_attention_input", False))
        self.reads_grid = bool(getattr(self.rule, "reads_grid", False)) or self.plan.decide_in_attention
        self.step_clock = getattr(self.rule, "forecast_clock", "timestep") == "step"  # forecasts in step units
        self._poisoned = False
        self._sched_cache: tuple[int, torch.Tensor] | None = None
        self._grid_checked: tuple | None = None  # (profile, scheduler grid) last checked for coverage
        self._grid_note: str | None = None
        self._t_scale = 1.0  # transformer timestep -> scheduler units (FLUX: num_train_timesteps)
        self.sync = sync  # rank-consistent decisions (context parallelism), None: rank-local
        self.offload_residuals = bool(offload_residuals)
        self._pinned = torch.cuda.is_available()  # pinned host buffers only make sense next to CUDA
        self.forecasts = bool(getattr(self.rule, "forecasts", False))  # keep the refresh before the last
        self.observers: list[SessionObserver] = list(observers)  # told of every call (CallEvent)
        self._remove = remove

    # --- public -----------------------------------------------------------------------------
    def __deepcopy__(self, memo):
        # a copy would share the hooks' view of one pipeline and the cached residuals of another
        raise SenCacheError("a pipeline (or transformer) with a sencache cache cannot be deep-copied: call "
                            "sencache.disable(pipe) first, copy it, then sencache.enable(...) on each copy")

    def summary(self) -> dict:
        """The trace summary of the last generation: calls, computed, reused, nfe, skipped steps, notes."""
        return self.trace.summary()

    def reset(self) -> None:
        """Forget all cached state; the next transformer call starts a new generation."""
        self._gen = _Generation()
        self._call = None
        self.plan.active = False
        self.plan.clear()

    def disable(self) -> None:
        """Remove this cache's hooks from the transformer (same as ``sencache.disable(pipe)``)."""
        if self._remove is None:
            raise SenCacheError("this session was not made by sencache.enable; call sencache.disable(pipe)")
        self._remove()

    def residuals(self) -> dict[str, torch.Tensor]:
        """The cached video-stream residual per branch (B, ...), wherever it lives; read-only use."""
        return dict(self._gen.residual)

    def cache_state(self) -> dict:
        """Everything the session holds for the current generation, for memory accounting: ``residual``,
        ``encoder_residual`` and ``has_residual`` (dicts per branch), ``rule_state`` and ``reuse_run``."""
        gen = self._gen
        return {"residual": dict(gen.residual), "encoder_residual": dict(gen.encoder_residual),
                "has_residual": dict(gen.has_residual), "rule_state": gen.rule_state, "reuse_run": gen.reuse_run}

    def residual_bytes(self) -> dict[str, int]:
        """Bytes of cached residuals held per branch (video and text streams), wherever they live."""
        out: dict[str, int] = {}
        for store in (self._gen.residual, self._gen.encoder_residual):
            for branch, value in store.items():
                out[branch] = out.get(branch, 0) + value.numel() * value.element_size()
        return out

    def residual_devices(self) -> dict[str, str]:
        """Where each branch's cached video-stream residual lives ("cpu", "cuda:0", ...)."""
        return {branch: str(value.device) for branch, value in self._gen.residual.items()}

    # --- step bookkeeping -------------------------------------------------------------------
    @torch.compiler.disable  # host-side bookkeeping: never traced, even when the whole transformer is compiled
    def _resolve_step(self, context, timestep: torch.Tensor, branch: str) -> tuple[int, int]:
        grid = self._scheduler_grid()
        if grid is not None:  # also finds the units the transformer gets its timestep in
            step = self._match_grid(grid, float(timestep.reshape(-1)[0]))
        if context is not None and context.step_index is not None and context.num_inference_steps:
            return int(context.step_index), int(context.num_inference_steps)
        if grid is not None:
            return step, int(grid.numel())
        if self.num_inference_steps:
            gen = self._gen
            if gen.step is None or gen.batch is None:
                return 0, self.num_inference_steps
            step = gen.step + 1 if branch in gen.branches_this_step else gen.step
            return step % self.num_inference_steps, self.num_inference_steps
        raise SenCacheError(
            "sencache cannot tell the denoising step: enable it on the pipeline (sencache.enable(pipe, ...)) "
            "or pass num_inference_steps=... when enabling it on a bare transformer"
        )

    def _scheduler_grid(self) -> torch.Tensor | None:
        timesteps = getattr(self.scheduler, "timesteps", None) if self.scheduler is not None else None
        if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0:
            return None
        if self._sched_cache is None or self._sched_cache[0] != id(timesteps):
            self._sched_cache = (id(timesteps), timesteps.detach().double().cpu())
        return self._sched_cache[1]

    def _check_profile_grid(self) -> str | None:
        """The profile's grid against this run's timesteps: refused when it misses most of them, a warning once per
        scheduler grid when it misses some (see SensitivityProfile.check_covers)."""
        profile, grid = getattr(self.config, "profile", None), self._scheduler_grid()
        if profile is None or grid is None:
            return None
        key = (id(profile), id(self.scheduler.timesteps))
        if self._grid_checked == key:
            return self._grid_note
        note = profile.check_covers(grid, what="this run")
        if note:
            logger.warning(note)
        self._grid_checked, self._grid_note = key, note
        return note

    def _match_grid(self, grid: torch.Tensor, t0: float) -> int:
        """The grid step nearest to ``t0``. FLUX-style pipelines hand the transformer timestep / num_train_timesteps;
        then ``_t_scale`` becomes num_train_timesteps, so the rule, the profile and the trace see scheduler units."""
        miss = (grid - t0).abs()
        self._t_scale = 1.0
        train = float(getattr(getattr(self.scheduler, "config", None), "num_train_timesteps", 0) or 0)
        if train > 1 and float(miss.min()) > 0:
            scaled = (grid / train - t0).abs()
            if float(scaled.min()) < float(miss.min()):
                miss, self._t_scale = scaled, train
        return int(torch.argmin(miss))

    @torch.compiler.disable  # host-side bookkeeping: never traced, even when the whole transformer is compiled
    def _begin_call(self, branch: str, step: int, num_steps: int, latent: torch.Tensor, timestep: torch.Tensor,
                    expert: str = "transformer", grid: torch.Tensor | None = None, context_sigma=None):
        """Open a call: check the latent, start a new generation, step or expert when this is one, then decide
        (unless the rule waits for the first block's modulation) and leave the plan for the block hooks."""
        batch = latent.shape[0]
        t_rows = timestep.detach().reshape(batch, -1)[:, 0].float() if timestep.numel() >= batch else \
            timestep.detach().reshape(-1)[:1].float().expand(batch)
        # the call's one host sync before the stack: the timesteps and whether the latent is finite, together
        host = torch.cat([t_rows.double(), torch.isfinite(latent).all().double().reshape(1)]).cpu()
        bad = not bool(host[-1])
        if self.sync is not None:
            bad = self.sync.any(bad)  # every rank raises together instead of leaving the others in a collective
        if bad:
            self.reset()
            raise SenCacheError(
                f"the latent given to the transformer at step {step} holds NaN or inf; the sampler diverged "
                f"before caching could act (check the scheduler settings, or run without the cache to compare)"
            )
        gen = self._gen
        new_generation = (
            self._poisoned
            or gen.step is None
            or step < gen.step
            or (step == 0 and (gen.step != 0 or branch in gen.branches_this_step))
            or batch != gen.batch
            or num_steps != gen.num_steps
        )
        if new_generation:
            grid_note = self._check_profile_grid()
            self._poisoned = False
            self._gen = gen = _Generation(rule_state=self.rule.new_state(batch), num_steps=num_steps, batch=batch,
                                          expert=expert)
            self.trace.clear(self.method, num_steps)
            self.trace.notes.extend(self.standing_notes)
            if grid_note:
                self.trace.notes.append(grid_note)
        elif expert != gen.expert:
            self.trace.notes.append(f"sencache: {expert} took over from {gen.expert} at step {step}; it starts with "
                                    f"an empty cache, so this step computes")
            self._gen = gen = gen.switched_to(expert, self.rule.new_state(batch))
        if step != gen.step:
            gen.step, gen.decision, gen.step_input, gen.decider_branch = step, None, None, None
            gen.branches_this_step = set()
        gen.branches_this_step.add(branch)
        t_cpu = host[:-1] * self._t_scale if self._t_scale != 1.0 else host[:-1]
        self._call = _Call(branch=branch, step=step, num_steps=num_steps, latent=latent, timestep=t_rows,
                           t_cpu=t_cpu, grid=grid)
        if grid is not None:
            self._call.sigma = noise_level(self.scheduler, context_sigma, step, float(t_cpu[0]))
        plan = self.plan
        plan.clear()
        plan.active = True
        plan.keep_modulation = bool(self.observers)
        if plan.decide_in_attention:
            plan.mode = "pending"  # until the first block's first attention layer is called
        elif not plan.decide_at_head:
            self._decide(None)
            self._prepare_plan()

    @torch.compiler.disable
    def decide_at_head(self, modulation: torch.Tensor | None) -> None:
        """The decision for a rule that reads the first block's modulation, taken inside that block's hook
        (kept out of any compiled graph: under ``fullgraph=True`` such a rule cannot be compiled)."""
        self._decide(modulation)
        self._prepare_plan()

    @torch.compiler.disable
    def decide_in_attention(self, tokens: torch.Tensor) -> None:
        """The decision for a rule that reads the first block's modulated input (the video tokens its first
        attention layer receives), put on the token grid."""
        call = self._call
        call.grid = token_grid(self.transformers[self._gen.expert], call.grid, tokens)
        self._decide(None)
        self._prepare_plan()

    def _decide(self, modulation: torch.Tensor | None) -> None:
        """Ask the rule once per step; later branches of the step follow the same verdict."""
        gen, call = self._gen, self._call
        call.modulation = modulation
        call.decider = gen.decision is None
        if gen.decision is None:
            inp = StepInput(step=call.step, num_steps=call.num_steps, timestep=call.t_cpu.float(),
                            latent=call.latent, modulation=modulation,
                            rms=self.sync.rms if self.sync is not None else rms_per_sample,
                            grid=call.grid, sigma=call.sigma)
            decision = on_cpu(self.rule.decide(gen.rule_state, inp))
            if self.sync is not None:
                decision = self._guard(decision, call.step)
            gen.decision, gen.step_input, gen.decider_branch = decision, inp, call.branch
            run = gen.reuse_run if gen.reuse_run is not None else torch.zeros(gen.batch, dtype=torch.long)
            gen.reuse_run = torch.where(decision.reuse, run + 1, torch.zeros_like(run))
        reuse = gen.decision.reuse
        have = gen.has_residual.get(call.branch, torch.zeros(gen.batch, dtype=torch.bool))
        call.compute = ~(reuse & have)
        reasons = list(gen.decision.reason or [("reuse" if r else "refresh") for r in reuse.tolist()])
        call.reasons = ["no_residual" if (r and not h) else why
                        for r, h, why in zip(reuse.tolist(), have.tolist(), reasons)]

    def _prepare_plan(self) -> None:
        """Turn the call's per-sample mask into the block hooks' plan: the mode, the computing rows and what
        the reusing rows add, all on the stack's device (so no block hook syncs or branches on a tensor)."""
        call, plan, gen = self._call, self.plan, self._gen
        compute = call.compute
        device = call.latent.device
        if bool(compute.all()):
            plan.mode = "full"
            return
        plan.mode = "skip" if not bool(compute.any()) else "subset"
        if plan.mode == "subset":
            plan.rows = compute.nonzero().flatten().to(device, non_blocking=True)
        plan.reused = self._reused_residual(call.branch, device)
        if call.branch in gen.encoder_residual:
            plan.reused_encoder = self._cached(gen.encoder_residual, call.branch, device)

    def _finish_stack(self) -> None:
        """After the stack ran: store the new residuals of the computing rows, tell the rule."""
        call, plan, gen = self._call, self.plan, self._gen
        hidden, encoder = plan.out_hidden, plan.out_encoder
        rows = plan.rows if plan.mode == "subset" else None  # on the stack's device
        rows_cpu = call.compute.nonzero().flatten() if rows is not None else None
        head_h = plan.head_hidden if rows is None else plan.head_hidden.index_select(0, rows)
        new_res = hidden - head_h
        if call.branch == gen.decider_branch and getattr(self.rule, "measures_refresh", False):
            self._report_refresh_errors(new_res, rows_cpu)
        self._store_residual(gen.residual, call.branch, rows_cpu, new_res)
        if self.observers:  # kept only for the end-of-call event: no extra device memory without observers
            call.residual = new_res.detach()
        head_e = plan.head_encoder
        if encoder is not None and head_e is not None and encoder.shape[1:] == head_e.shape[1:]:
            head_e = head_e if rows is None else head_e.index_select(0, rows)
            self._store_residual(gen.encoder_residual, call.branch, rows_cpu, encoder - head_e)
        have = gen.has_residual.get(call.branch, torch.zeros(gen.batch, dtype=torch.bool))
        gen.has_residual[call.branch] = have | call.compute
        if call.branch == gen.decider_branch:
            self.rule.observe_refresh(gen.rule_state, gen.step_input, call.compute.clone(), new_res)

    def _report_refresh_errors(self, new_res: torch.Tensor, rows_cpu: torch.Tensor | None) -> None:
        """Before the new residuals replace the cache: tell the rule what holding and forecasting would have given
        the rows that just ran (their real errors for the interval that ended), measured on the device."""
        gen, call, branch = self._gen, self._call, self._call.branch
        batch = gen.batch
        had = gen.has_residual.get(branch, torch.zeros(batch, dtype=torch.bool))
        if branch in gen.residual and bool(had.any()):
            last = self._cached(gen.residual, branch, new_res.device)
            prev = self._cached(gen.residual_prev, branch, new_res.device) if branch in gen.residual_prev else None
            nan = torch.full((batch,), math.nan, dtype=torch.float64)
            hold, linear = refresh_errors(
                new_res, rows_cpu, last, prev, self._clock(call), gen.refresh_t.get(branch, nan),
                gen.prev_t.get(branch, nan), had, gen.step_input.rms)
        else:
            hold = linear = torch.full((batch,), math.nan, dtype=torch.float64)
        self.rule.observe_errors(gen.rule_state, call.compute.clone(), hold, linear)

    def _guard(self, decision: Decision, step: int) -> Decision:
        """All ranks reuse a sample only if every rank's rule said so (all-reduce MIN of the mask)."""
        gen = self._gen
        local = decision.reuse.detach().cpu().bool()
        agreed = self.sync.reuse_all(local)
        changed = local & ~agreed
        if not bool(changed.any()):
            return decision
        reasons = list(decision.reason or [("reuse" if r else "refresh") for r in local.tolist()])
        reasons = ["sync_refresh" if c else why for c, why in zip(changed.tolist(), reasons)]
        gen.guard_changes += int(changed.sum())
        gen.guard_steps.append(step)
        msg = (f"sencache: the rank-consistency guard refreshed {gen.guard_changes} sample-step(s) this rank's rule "
               f"would have reused (steps {gen.guard_steps}): another rank refreshed there")
        if gen.guard_note is None:
            gen.guard_note = len(self.trace.notes)
            self.trace.notes.append(msg)
            logger.info(msg)
        else:
            self.trace.notes[gen.guard_note] = msg
        return Decision(reuse=agreed, score=decision.score, eps=decision.eps, reason=reasons, order=decision.order)

    @torch.compiler.disable  # host-side bookkeeping: never traced, even when the whole transformer is compiled
    def _end_call(self, module=None, args: tuple = (), kwargs: dict | None = None, output=None) -> None:
        gen, call, plan = self._gen, self._call, self.plan
        plan.active = False
        if call is None or call.compute is None:  # the transformer ran no block of its stack
            plan.clear()
            self._call = None
            return
        if plan.modulation is not None:
            call.modulation = plan.modulation
        if plan.out_hidden is not None:
            self._finish_stack()
            self.trace.stack_runs += 1
        plan.clear()
        first_record = len(self.trace.records)
        decision = gen.decision
        # one conversion per call, then plain Python per row (the timesteps from the host copy: a per-row read of
        # the device tensor would sync the GPU once per row)
        computed = call.compute.tolist()
        times = call.t_cpu.tolist()
        scores = decision.score.tolist() if decision.score is not None else [None] * gen.batch
        runs = gen.reuse_run.tolist()
        orders = decision.order.tolist() if decision.order is not None else [0] * gen.batch
        predicted = decision.predicted.tolist() if decision.predicted is not None else [None] * gen.batch
        eps = None if decision.eps is None or math.isnan(decision.eps) else float(decision.eps)
        for row in range(gen.batch):
            done = computed[row]
            self.trace.records.append(TraceRecord(
                call=gen.call_index, step=call.step, timestep=float(times[row]), branch=call.branch, sample=row,
                computed=bool(done), score=finite_or_none(scores[row]), eps=eps,
                reuse_run=0 if done else int(runs[row]), reason=call.reasons[row],
                forecast=0 if done else int(orders[row]), expert=gen.expert,
                predicted_error=finite_or_none(predicted[row]),
            ))
        gen.call_index += 1
        if call.step == call.num_steps - 1 and not gen.warned_no_reuse:
            self._note_if_nothing_reused()
        self._call = None
        if self.observers:
            event = CallEvent(
                call=gen.call_index - 1, step=call.step, num_steps=call.num_steps, branch=call.branch,
                decider=call.decider, timestep=call.timestep, latent=call.latent,
                modulation=call.modulation, computed=call.compute, residual=call.residual,
                records=self.trace.records[first_record:], module=module, args=args, kwargs=kwargs or {},
                output=output, expert=gen.expert)
            for observer in self.observers:
                observer.on_call(event)

    def _note_if_nothing_reused(self) -> None:
        gen = self._gen
        if self.method == "none" or any(not r.computed for r in self.trace.records):
            return  # a rule that never reuses (recording runs) has nothing to explain
        gen.warned_no_reuse = True
        # judged by the tolerance in force at each step (an ε schedule changes it along the run), not the config's
        open_ = [r for r in self.trace.records if r.reason not in ("first", "final", "warmup")]
        if gen.num_steps is not None and gen.num_steps <= 1 + getattr(self.config, "final_steps", 0):
            why = f"only {gen.num_steps} steps, and the first and final steps always compute"
        elif open_ and all(r.reason == "above_eps" and r.eps is not None and r.score is not None for r in open_):
            tolerances = sorted({float(r.eps) for r in open_})
            shown = f"eps={tolerances[0]:g}" if len(tolerances) == 1 else \
                f"eps (here {tolerances[0]:g}..{tolerances[-1]:g} along the run)"
            why = (f"{shown} is below the predicted change at every step (smallest S = "
                   f"{min(r.score for r in open_):.4g}); raise eps (or pick it for an NFE with "
                   f"sencache.budget.with_target)")
        else:
            why = "the rule never allowed a reuse at these settings"
        msg = f"sencache: this generation reused no step, so there is no speed-up: {why}"
        self.trace.notes.append(msg)
        logger.warning(msg)

    # --- residual store ---------------------------------------------------------------------
    def _store_residual(self, store: dict, branch: str, rows: torch.Tensor | None, value: torch.Tensor) -> None:
        batch = self._gen.batch
        value = value.detach()
        if self.forecasts and store is self._gen.residual:
            self._shift_history(branch, rows)
        if rows is None:
            store[branch] = self._offload(store.get(branch), value) if self.offload_residuals else value
            return
        full = store.get(branch)
        if full is None or full.shape[1:] != value.shape[1:]:
            full = value.new_zeros((batch, *value.shape[1:]))
        else:  # merge on the compute device: an offloaded copy may still be in flight
            full = full.to(device=value.device, non_blocking=True).clone()
        full[rows.to(full.device)] = value.to(full.dtype)
        store[branch] = self._offload(store.get(branch), full) if self.offload_residuals else full

    def _offload(self, old: torch.Tensor | None, value: torch.Tensor) -> torch.Tensor:
        """A host copy of ``value``, reusing the branch's previous buffer when it fits (pinned next to CUDA).

        The device-to-host copy is non-blocking; it is ordered on the current stream before any later
        host-to-device copy of the same buffer (:meth:`_cached`), and the host never reads it."""
        pin = self._pinned and value.is_cuda
        if old is None or old.device.type != "cpu" or old.shape != value.shape or old.dtype != value.dtype \
                or old.is_pinned() != pin:
            old = torch.empty(value.shape, dtype=value.dtype, device="cpu", pin_memory=pin)
        old.copy_(value, non_blocking=pin)
        return old

    @staticmethod
    def _cached(store: dict, branch: str, device: torch.device) -> torch.Tensor:
        """The branch's cached residual on the stack's device (copied back if offloaded)."""
        return store[branch].to(device=device, non_blocking=True)

    # --- forecasting --------------------------------------------------------------------------
    def _shift_history(self, branch: str, rows: torch.Tensor | None) -> None:
        """Before the refreshing rows get their new residual: the old one becomes the previous refresh."""
        gen, call = self._gen, self._call
        batch = gen.batch
        old = gen.residual.get(branch)
        if rows is None and not self.offload_residuals:
            # the whole batch refreshes: the old residual becomes the previous one as it is (the store puts a
            # new tensor in its place, nothing writes into it); rows that had none keep t_prev = NaN
            if old is not None:
                had = gen.has_residual.get(branch, torch.zeros(batch, dtype=torch.bool))
                gen.residual_prev[branch] = old
                gen.prev_t[branch] = torch.where(had, gen.refresh_t[branch], gen.prev_t[branch]) \
                    if branch in gen.prev_t else torch.where(had, gen.refresh_t[branch], math.nan)
            gen.refresh_t[branch] = self._clock(call)
            return
        mask = torch.ones(batch, dtype=torch.bool) if rows is None else \
            torch.zeros(batch, dtype=torch.bool).index_fill_(0, rows.cpu(), True)
        nan = torch.full((batch,), math.nan, dtype=torch.float64)
        last_t = gen.refresh_t.get(branch, nan.clone())
        had = gen.has_residual.get(branch, torch.zeros(batch, dtype=torch.bool)) & mask
        if old is not None and bool(had.any()):
            prev = gen.residual_prev.get(branch)
            if prev is None or prev.shape != old.shape:
                prev = torch.zeros_like(old)
            idx = had.nonzero().flatten().to(old.device)
            prev = prev.to(old.device).index_copy(0, idx, old.index_select(0, idx))
            gen.residual_prev[branch] = self._offload(gen.residual_prev.get(branch), prev) \
                if self.offload_residuals else prev
        gen.prev_t[branch] = torch.where(had, last_t, gen.prev_t.get(branch, nan.clone()))
        gen.refresh_t[branch] = torch.where(mask, self._clock(call), last_t)

    def _clock(self, call: _Call) -> torch.Tensor:
        """(B,) float64 position of this call on the forecast's axis: the timestep, or the step index."""
        if self.step_clock:
            return torch.full_like(call.t_cpu, float(call.step), dtype=torch.float64)
        return call.t_cpu

    def _reused_residual(self, branch: str, device: torch.device) -> torch.Tensor:
        """What the reusing rows get: the cached residual, extrapolated where the decision says order 1 and
        the row has two refreshes, r̂ = r_last + (r_last − r_prev)·(t − t_last) / (t_last − t_prev)."""
        gen, call = self._gen, self._call
        cached = self._cached(gen.residual, branch, device)
        order = gen.decision.order if gen.decision is not None else None
        if order is None or branch not in gen.residual_prev or not bool((order > 0).any()):
            return cached
        t_last, t_prev = gen.refresh_t[branch], gen.prev_t[branch]
        step = t_last - t_prev
        ok = (order > 0) & ~call.compute & torch.isfinite(t_prev) & (step != 0)
        if not bool(ok.any()):
            return cached
        scale = torch.where(ok, (self._clock(call) - t_last) / torch.where(ok, step, torch.ones_like(step)),
                            torch.zeros_like(step))
        idx = ok.nonzero().flatten()
        dev_idx = idx.to(cached.device)
        prev = self._cached(gen.residual_prev, branch, device).index_select(0, dev_idx)
        last = cached.index_select(0, dev_idx)
        factor = scale.index_select(0, idx).to(device=cached.device, dtype=cached.dtype)
        factor = factor.reshape(-1, *([1] * (cached.ndim - 1)))
        return cached.index_copy(0, dev_idx, last + (last - prev) * factor)


def on_cpu(decision: Decision) -> Decision:
    """The decision with its per-sample mask, scores and orders on the CPU, where every piece of decision state lives
    (counters, masks, trace): a rule may compute on the latent's device, and a CUDA mask must never meet a CPU
    counter in one op."""
    reuse = decision.reuse.detach().to("cpu", torch.bool)
    order = decision.order.detach().to("cpu", torch.long) if decision.order is not None else None
    score = decision.score.detach().cpu() if decision.score is not None else None  # the trace reads it per row
    predicted = decision.predicted.detach().cpu() if decision.predicted is not None else None
    return replace(decision, reuse=reuse, order=order, score=score, predicted=predicted)


