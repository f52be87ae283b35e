"""The call protocol the hooks drive: open a call, decide once per step, run or skip the stack, close the call.

``begin_call`` checks the latent, starts a new generation, step or expert when this is one, then decides (unless
the rule waits for the first block) and leaves the :class:`~sencache.adapter.plan.StackPlan` for the block hooks;
``end_call`` stores the computing rows' new residuals, tells the rule, writes the trace rows and tells each
observer; ``abort_call`` drops the call after an error, so the next call starts a fresh generation. Decision state
lives on the CPU (per-sample masks, counters); cached residuals with the activations (or in host memory).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from sencache.adapter.generation import CallState, GenerationState
from sencache.adapter.grid import token_grid
from sencache.adapter.noise_level import noise_level
from sencache.adapter.observers import CallEvent
from sencache.adapter.parallel import DecisionSync
from sencache.adapter.plan import StackPlan
from sencache.adapter.rank_guard import RankGuard
from sencache.adapter.residual_store import ResidualStore
from sencache.adapter.step_clock import StepClock
from sencache.adapter.trace_recorder import TraceRecorder
from sencache.core.rules.base import Decision, StepInput, rms_per_sample
from sencache.errors import SenCacheError


def on_cpu(decision: Decision) -> Decision:
    """The decision with its per-sample mask, scores and orders on the CPU, where every piece of decision state lives
    (counters, masks, trace): a rule may compute on the latent's device, and a CUDA mask must never meet a CPU
    counter in one op."""
    reuse = decision.reuse.detach().to("cpu", torch.bool)
    order = decision.order.detach().to("cpu", torch.long) if decision.order is not None else None
    score = decision.score.detach().cpu() if decision.score is not None else None  # the trace reads it per row
    predicted = decision.predicted.detach().cpu() if decision.predicted is not None else None
    return replace(decision, reuse=reuse, order=order, score=score, predicted=predicted)


def host_timesteps(latent: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
    """(B,) timesteps on the latent's device, their float64 host copy, and whether the latent holds NaN or inf:
    the call's one host sync before the stack."""
    batch = latent.shape[0]
    t_rows = timestep.detach().reshape(batch, -1)[:, 0].float() if timestep.numel() >= batch else \
        timestep.detach().reshape(-1)[:1].float().expand(batch)
    host = torch.cat([t_rows.double(), torch.isfinite(latent).all().double().reshape(1)]).cpu()
    return t_rows, host[:-1], not bool(host[-1])


def _version(t: torch.Tensor) -> int | None:
    try:
        return t._version
    except RuntimeError:  # inference-mode tensors keep no version counter: never taken as unchanged
        return None


class HostInputs:
    """:func:`host_timesteps` of a call, kept for the step's next call when it gets the very same, unchanged tensors
    (classifier-free guidance in two calls: cond then uncond), so a step syncs the host once, not once per call."""

    def __init__(self):
        self.last: tuple | None = None

    def read(self, latent: torch.Tensor, timestep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, bool]:
        """(timesteps on the device, their host copy, whether the latent holds NaN or inf)."""
        versions = (_version(latent), _version(timestep))
        last = self.last
        if last is not None and last[0] is latent and last[1] is timestep and None not in versions \
                and last[2] == versions:
            return last[3]
        got = host_timesteps(latent, timestep)
        self.last = (latent, timestep, versions, got) if not got[2] else None
        return got

    def forget(self) -> None:
        """Drop the kept tensors (a new generation, or an error)."""
        self.last = None


def call_mask(decision: Decision, have: torch.Tensor) -> tuple[torch.Tensor, list[str]]:
    """(B,) rows whose stack runs (a reuse needs a cached residual) and each row's reason for the trace."""
    reuse = decision.reuse
    reasons = list(decision.reason or [("reuse" if r else "refresh") for r in reuse.tolist()])
    reasons = ["no_residual" if (r and not h) else why for r, h, why in zip(reuse.tolist(), have.tolist(), reasons)]
    return ~(reuse & have), reasons


def fill_plan(plan: StackPlan, call: CallState, gen: GenerationState,
              clock: Callable[[CallState], torch.Tensor]) -> None:
    """Turn the call's per-sample mask into the block hooks' plan: the mode, the computing rows and what the reusing
    rows add (``clock``: the call's forecast position, read only when a row reuses), all on the stack's device (no
    block hook syncs on a tensor)."""
    store = gen.store
    device = call.latent.device
    if bool(call.compute.all()):
        plan.mode = "full"
        return
    plan.mode = "skip" if not bool(call.compute.any()) else "subset"
    if plan.mode == "subset":
        plan.rows = call.compute.nonzero().flatten().to(device, non_blocking=True)
    order = gen.decision.order if gen.decision is not None else None
    plan.reused = store.reused(call.branch, device, order, call.compute, clock(call))
    if call.branch in store.encoder_residual:
        plan.reused_encoder = store.cached(call.branch, device, encoder=True)


def take_refresh(rule, gen: GenerationState, call: CallState, plan: StackPlan, now: torch.Tensor) -> torch.Tensor:
    """After the stack ran: tell a rule that measures refreshes what holding and forecasting would have given, store
    the computing rows' new residuals, tell the rule of the refresh; returns the new video-stream residual (R, ...)."""
    rows = plan.rows if plan.mode == "subset" else None  # on the stack's device
    rows_cpu = call.compute.nonzero().flatten() if rows is not None else None
    new_res = plan.out_hidden - (plan.head_hidden if rows is None else plan.head_hidden.index_select(0, rows))
    decider = call.branch == gen.decider_branch
    if decider and getattr(rule, "measures_refresh", False):
        hold, linear = gen.store.refresh_errors(call.branch, new_res, rows_cpu, now, gen.step_input.rms)
        rule.observe_errors(gen.rule_state, call.compute.clone(), hold, linear)
    gen.store.put(call.branch, rows_cpu, new_res, now)
    encoder, head_e = plan.out_encoder, plan.head_encoder
    if encoder is not None and head_e is not None and encoder.shape[1:] == head_e.shape[1:]:
        head_e = head_e if rows is None else head_e.index_select(0, rows)
        gen.store.put(call.branch, rows_cpu, encoder - head_e, now, encoder=True)
    gen.store.mark(call.branch, call.compute)
    if decider:
        rule.observe_refresh(gen.rule_state, gen.step_input, call.compute.clone(), new_res)
    return new_res


def call_event(call: CallState, index: int, expert: str, records, module, args, kwargs, output) -> CallEvent:
    """What observers are told of a finished call."""
    return CallEvent(call=index, step=call.step, num_steps=call.num_steps, branch=call.branch, decider=call.decider,
                     timestep=call.timestep, latent=call.latent, modulation=call.modulation, computed=call.compute,
                     residual=call.residual, records=records, module=module, args=args, kwargs=kwargs or {},
                     output=output, expert=expert)


class CallProtocol:
    """Call by call, the cache of one session: its generation, the call in progress and the plan for the blocks."""

    def __init__(self, rule, clock: StepClock, recorder: TraceRecorder, plan: StackPlan, *, transformers: dict,
                 profile=None, sync: DecisionSync | None = None, offload_residuals: bool = False,
                 observers: list | None = None):
        self.rule, self.clock, self.recorder, self.plan = rule, clock, recorder, plan
        self.transformers, self.profile, self.sync = transformers, profile, sync
        self.offload_residuals = bool(offload_residuals)
        self.observers: list = observers if observers is not None else []  # the session's list, shared
        self.guard = RankGuard(sync, recorder.trace) if sync is not None else None
        self.step_clock = getattr(rule, "forecast_clock", "timestep") == "step"  # forecasts in step units
        self.gen = GenerationState()
        self.call: CallState | None = None
        self.poisoned = False  # the last call raised: the next one starts a fresh generation
        self.inputs = HostInputs()

    def reset(self) -> None:
        """Forget the generation; the next call starts a new one."""
        self.gen, self.call = GenerationState(), None
        self.inputs.forget()
        self.plan.active = False
        self.plan.clear()

    def abort_call(self) -> None:
        """The transformer raised: drop the call, and start afresh next time (no stale residuals)."""
        self.reset()
        self.poisoned = True

    def resolve_step(self, context, timestep: torch.Tensor, branch: str) -> tuple[int, int]:
        """(step, num_steps) of this call (see :class:`~sencache.adapter.step_clock.StepClock`)."""
        return self.clock.resolve(context, timestep, branch, self.gen)

    @torch.compiler.disable  # host-side bookkeeping: never traced, even when the whole transformer is compiled
    def begin_call(self, branch: str, step: int, num_steps: int, latent: torch.Tensor, timestep: torch.Tensor,
                   expert: str = "transformer", grid: torch.Tensor | None = None, context_sigma=None) -> None:
        """Open a call and leave the plan for the block hooks (deciding now unless the rule waits for a block)."""
        t_rows, t_host, bad = self.inputs.read(latent, timestep)
        if self.sync is not None:
            bad = self.sync.any(bad)  # every rank raises together instead of leaving the others waiting
        if bad:
            self.reset()
            raise SenCacheError(
                f"the latent given to the transformer at step {step} holds NaN or inf; the sampler diverged "
                f"before caching could act (check the scheduler settings, or run without the cache to compare)")
        gen = self._generation_for(branch, step, num_steps, latent.shape[0], expert)
        gen.branches_this_step.add(branch)
        t_cpu = t_host * self.clock.t_scale if self.clock.t_scale != 1.0 else t_host
        self.call = CallState(branch=branch, step=step, num_steps=num_steps, latent=latent, timestep=t_rows,
                              t_cpu=t_cpu, grid=grid)
        if grid is not None:
            self.call.sigma = noise_level(self.clock.scheduler, context_sigma, step, float(t_cpu[0]))
        plan = self.plan
        plan.clear()
        plan.active = True
        plan.keep_modulation = bool(self.observers)
        if plan.decide_in_attention:
            plan.mode = "pending"  # until the first block's first attention layer is called
        elif not plan.decide_at_head:
            self._decide(None)

    def _generation_for(self, branch: str, step: int, num_steps: int, batch: int, expert: str) -> GenerationState:
        """The generation this call belongs to: a new one, the same with another expert, or the current one."""
        gen = self.gen
        if (self.poisoned or gen.step is None or step < gen.step
                or (step == 0 and (gen.step != 0 or branch in gen.branches_this_step))
                or batch != gen.batch or num_steps != gen.num_steps):
            self.recorder.start(num_steps, self.clock.check_profile(self.profile))
            if self.guard is not None:
                self.guard.reset()
            self.poisoned = False
            gen = GenerationState(rule_state=self.rule.new_state(batch), num_steps=num_steps, batch=batch,
                                  store=self._new_store(batch), expert=expert)
        elif expert != gen.expert:
            self.recorder.note(f"sencache: {expert} took over from {gen.expert} at step {step}; it starts with an "
                               f"empty cache, so this step computes")
            gen = gen.switched_to(expert, self.rule.new_state(batch), self._new_store(batch))
        if step != gen.step:
            gen.step, gen.decision, gen.step_input, gen.decider_branch = step, None, None, None
            gen.branches_this_step = set()
        self.gen = gen
        return gen

    def _new_store(self, batch: int) -> ResidualStore:
        return ResidualStore(batch, offload=self.offload_residuals,
                             forecasts=bool(getattr(self.rule, "forecasts", False)))

    @torch.compiler.disable
    def decide_at_head(self, modulation: torch.Tensor | None) -> None:
        """The decision for a rule that reads the first block's modulation, taken inside that block's hook
        (kept out of any compiled graph: under ``fullgraph=True`` such a rule cannot be compiled)."""
        self._decide(modulation)

    @torch.compiler.disable
    def decide_in_attention(self, tokens: torch.Tensor) -> None:
        """The decision for a rule that reads the first block's modulated input (the video tokens its first
        attention layer receives), put on the token grid."""
        self.call.grid = token_grid(self.transformers[self.gen.expert], self.call.grid, tokens)
        self._decide(None)

    def _decide(self, modulation: torch.Tensor | None) -> None:
        """Ask the rule once per step (later branches of the step follow), then write the plan."""
        gen, call = self.gen, self.call
        call.modulation = modulation
        call.decider = gen.decision is None
        if call.decider:
            sync = self.sync
            inp = StepInput(step=call.step, num_steps=call.num_steps, timestep=call.t_cpu.float(),
                            latent=call.latent, modulation=modulation,
                            rms=sync.rms if sync is not None else rms_per_sample, grid=call.grid, sigma=call.sigma)
            decision = on_cpu(self.rule.decide(gen.rule_state, inp))
            if self.guard is not None:
                decision = self.guard.apply(decision, call.step)
            gen.decision, gen.step_input, gen.decider_branch = decision, inp, call.branch
            run = gen.reuse_run if gen.reuse_run is not None else torch.zeros(gen.batch, dtype=torch.long)
            gen.reuse_run = torch.where(decision.reuse, run + 1, torch.zeros_like(run))
        call.compute, call.reasons = call_mask(gen.decision, gen.store.has(call.branch))
        fill_plan(self.plan, call, gen, self._clock)

    def _clock(self, call: CallState) -> torch.Tensor:
        """(B,) float64 position of this call on the forecast's axis: the timestep, or the step index."""
        if self.step_clock:
            return torch.full_like(call.t_cpu, float(call.step), dtype=torch.float64)
        return call.t_cpu

    @torch.compiler.disable  # host-side bookkeeping: never traced, even when the whole transformer is compiled
    def end_call(self, module=None, args: tuple = (), kwargs: dict | None = None, output=None) -> None:
        """Close the call: residuals and the rule's news if the stack ran, the trace rows, one event per observer."""
        gen, call, plan = self.gen, self.call, self.plan
        plan.active = False
        self.call = None
        if call is None or call.compute is None:  # the transformer ran no block of its stack
            plan.clear()
            return
        if plan.modulation is not None:
            call.modulation = plan.modulation
        if plan.out_hidden is not None:
            residual = take_refresh(self.rule, gen, call, plan, self._clock(call))
            if self.observers:  # kept only for the end-of-call event: no extra device memory without observers
                call.residual = residual.detach()
            self.recorder.trace.stack_runs += 1
        plan.clear()
        records = self.recorder.record(call.step, call.branch, gen.expert, gen.decision, call.compute, call.t_cpu,
                                       gen.reuse_run, call.reasons)
        if call.step == call.num_steps - 1:
            self.recorder.note_if_nothing_reused(gen.num_steps)
        if self.observers:
            event = call_event(call, self.recorder.call_index - 1, gen.expert, records, module, args, kwargs, output)
            for observer in self.observers:
                observer.on_call(event)
