"""The one diffusers adapter: hooks on a transformer and its block stack that apply a caching rule.

On every transformer call the model hook notes the branch (the pipeline's ``cache_context``), the
denoising step, the noisy latent and the timestep. The first block's hook asks the rule once per
step which samples may reuse; all CFG branches of that step follow the same decision, each with
its own cached residual. For the samples that reuse, the block stack is skipped and
``input_of_first_block + cached_residual`` is handed on, so the output head still runs with the
current timestep. When the samples of a batch disagree, the stack runs for the refreshing rows only
(every tensor argument with the batch as its first dimension is sliced) and the rows are merged.

Nothing is monkey-patched: hooks live in diffusers' per-module HookRegistry, so two pipelines in
one process keep separate state, and :func:`disable` removes every hook.

Under diffusers' context parallelism every rank must take the same decision at every step: the
adapter then computes the rule's RMS over all ranks and guards the final mask with an all-reduce MIN
(:mod:`sencache.parallel`). ``offload_residuals=True`` keeps the cached residuals in (pinned) CPU
memory and copies them back to the device when a step reuses them.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks._helpers import TransformerBlockRegistry
from diffusers.hooks.hooks import StateManager

from .arguments import ArgumentReader
from .errors import SenCacheError, UnsupportedModelError
from .parallel import AUTO, DecisionSync, place_inside_parallel_hooks, resolve_sync
from .rules.base import Decision, StepInput, rms_per_sample
from .trace import Trace, TraceRecord

logger = logging.getLogger("sencache")

MODEL_HOOK = "sencache_model"
BLOCK_HOOK = "sencache_block"

# Where each model keeps its block stack. A class not listed is accepted if it has exactly one of
# these lists and diffusers knows its block class (TransformerBlockRegistry).
BLOCK_LISTS = {
    "WanTransformer3DModel": "blocks",
    "WanVACETransformer3DModel": "blocks",
    "CogVideoXTransformer3DModel": "transformer_blocks",
    "LTXVideoTransformer3DModel": "transformer_blocks",
    "MochiTransformer3DModel": "transformer_blocks",
}
CANDIDATE_LISTS = ("blocks", "transformer_blocks")
SECOND_STACKS = ("single_transformer_blocks", "single_blocks", "refiner_blocks")


@dataclass
class BlockStack:
    name: str
    blocks: torch.nn.ModuleList
    hidden_index: int  # position of the video stream in a block's returned tuple
    encoder_index: int | None  # position of the text stream, if blocks return it
    hidden_arg: str


def find_block_stack(transformer: torch.nn.Module) -> BlockStack:
    cls = type(transformer).__name__
    name = BLOCK_LISTS.get(cls)
    if name is None:
        found = [n for n in CANDIDATE_LISTS if isinstance(getattr(transformer, n, None), torch.nn.ModuleList)]
        if len(found) != 1:
            raise UnsupportedModelError(
                f"{cls} is not supported: sencache needs one list of transformer blocks "
                f"(looked for {', '.join(CANDIDATE_LISTS)}); open an issue with the model name"
            )
        name = found[0]
    for extra in SECOND_STACKS:
        if len(getattr(transformer, extra, None) or []) > 0:
            raise UnsupportedModelError(
                f"{cls} is not supported: it has a second block stack '{extra}' that sencache cannot skip yet"
            )
    blocks = getattr(transformer, name, None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise UnsupportedModelError(f"{cls} has no blocks in '{name}'; nothing to cache")
    try:
        meta = TransformerBlockRegistry.get(type(blocks[0]))
    except ValueError:
        raise UnsupportedModelError(
            f"{cls} is not supported: diffusers has no layout facts for its block {type(blocks[0]).__name__}"
        ) from None
    return BlockStack(name, blocks, meta.return_hidden_states_index, meta.return_encoder_hidden_states_index,
                      meta.hidden_states_argument_name)


def split_target(target) -> tuple[torch.nn.Module, Any]:
    """(transformer, scheduler or None) from a pipeline or a bare transformer."""
    transformer = getattr(target, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        return transformer, getattr(target, "scheduler", None)
    if isinstance(target, torch.nn.Module):
        return target, None
    raise UnsupportedModelError(
        f"sencache.enable needs a diffusers pipeline with a .transformer or a transformer module, "
        f"got {type(target).__name__}"
    )


@dataclass
class _Call:
    branch: str
    step: int
    num_steps: int
    latent: torch.Tensor
    timestep: torch.Tensor  # (B,) float
    compute: torch.Tensor | None = None  # (B,) bool, rows whose block stack runs
    reasons: list[str] | None = None
    mode: str = "full"  # full | skip | subset
    rows: torch.Tensor | None = None  # LongTensor of computed rows in subset mode
    head_hidden: torch.Tensor | None = None
    head_encoder: torch.Tensor | None = None
    ran_stack: bool = False


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
    encoder_residual: dict = field(default_factory=dict)
    has_residual: dict = field(default_factory=dict)  # branch -> (B,) bool
    call_index: int = 0
    warned_no_reuse: bool = False
    guard_changes: int = 0  # reuse decisions the rank-consistency guard turned into refreshes
    guard_steps: list = field(default_factory=list)
    guard_note: int | None = None  # index of the guard's note in trace.notes


class CacheSession:
    """What :func:`enable` returns: the live cache of one transformer, with the trace of its last call."""

    def __init__(self, transformer, scheduler, config, num_inference_steps: int | None = None,
                 sync: DecisionSync | None = None, offload_residuals: bool = False):
        self.transformer = transformer
        self.scheduler = scheduler
        self.config = config
        self.rule = config.build_rule()
        self.method = getattr(self.rule, "name", type(self.rule).__name__)
        self.stack = find_block_stack(transformer)
        self.num_inference_steps = num_inference_steps
        self.trace = Trace(method=self.method)
        self.gen = _Generation()
        self.call: _Call | None = None
        self._poisoned = False
        self._sched_cache: tuple[int, torch.Tensor] | None = None
        self.sync = sync  # rank-consistent decisions (context parallelism), None: rank-local
        self.offload_residuals = bool(offload_residuals)
        self._pinned = torch.cuda.is_available()  # pinned host buffers only make sense next to CUDA

    # --- public -----------------------------------------------------------------------------
    def summary(self) -> dict:
        return self.trace.summary()

    def reset(self) -> None:
        """Forget all cached state; the next transformer call starts a new generation."""
        self.gen = _Generation()
        self.call = None

    def disable(self) -> None:
        disable(self.transformer)

    def residual_bytes(self) -> dict[str, int]:
        """Bytes of cached residuals held per branch (video and text streams), wherever they live."""
        out: dict[str, int] = {}
        for store in (self.gen.residual, self.gen.encoder_residual):
            for branch, value in store.items():
                out[branch] = out.get(branch, 0) + value.numel() * value.element_size()
        return out

    def residual_devices(self) -> dict[str, str]:
        """Where each branch's cached video-stream residual lives ("cpu", "cuda:0", ...)."""
        return {branch: str(value.device) for branch, value in self.gen.residual.items()}

    # --- step bookkeeping -------------------------------------------------------------------
    def _resolve_step(self, context, timestep: torch.Tensor, branch: str) -> tuple[int, int]:
        if context is not None and context.step_index is not None and context.num_inference_steps:
            return int(context.step_index), int(context.num_inference_steps)
        timesteps = getattr(self.scheduler, "timesteps", None) if self.scheduler is not None else None
        if isinstance(timesteps, torch.Tensor) and timesteps.numel() > 0:
            if self._sched_cache is None or self._sched_cache[0] != id(timesteps):
                self._sched_cache = (id(timesteps), timesteps.detach().double().cpu())
            grid = self._sched_cache[1]
            t0 = float(timestep.reshape(-1)[0])
            return int(torch.argmin((grid - t0).abs())), int(grid.numel())
        if self.num_inference_steps:
            gen = self.gen
            if gen.step is None or gen.batch is None:
                return 0, self.num_inference_steps
            step = gen.step + 1 if branch in gen.branches_this_step else gen.step
            return step % self.num_inference_steps, self.num_inference_steps
        raise SenCacheError(
            "sencache cannot tell the denoising step: enable it on the pipeline (sencache.enable(pipe, ...)) "
            "or pass num_inference_steps=... when enabling it on a bare transformer"
        )

    def _begin_call(self, branch: str, step: int, num_steps: int, latent: torch.Tensor, timestep: torch.Tensor):
        gen = self.gen
        batch = latent.shape[0]
        new_generation = (
            self._poisoned
            or gen.step is None
            or step < gen.step
            or (step == 0 and (gen.step != 0 or branch in gen.branches_this_step))
            or batch != gen.batch
            or num_steps != gen.num_steps
        )
        if new_generation:
            self._poisoned = False
            self.gen = gen = _Generation(rule_state=self.rule.new_state(batch), num_steps=num_steps, batch=batch)
            self.trace.clear(self.method, num_steps)
        if step != gen.step:
            gen.step, gen.decision, gen.step_input, gen.decider_branch = step, None, None, None
            gen.branches_this_step = set()
        gen.branches_this_step.add(branch)
        t_rows = timestep.detach().reshape(batch, -1)[:, 0].float() if timestep.numel() >= batch else \
            timestep.detach().reshape(-1)[:1].float().expand(batch)
        self.call = _Call(branch=branch, step=step, num_steps=num_steps, latent=latent, timestep=t_rows)

    def _decide(self, modulation: torch.Tensor | None) -> None:
        """Ask the rule once per step; later branches of the step follow the same verdict."""
        gen, call = self.gen, self.call
        if gen.decision is None:
            inp = StepInput(step=call.step, num_steps=call.num_steps, timestep=call.timestep.cpu(),
                            latent=call.latent, modulation=modulation,
                            rms=self.sync.rms if self.sync is not None else rms_per_sample)
            decision = self.rule.decide(gen.rule_state, inp)
            if self.sync is not None:
                decision = self._guard(decision, call.step)
            gen.decision, gen.step_input, gen.decider_branch = decision, inp, call.branch
            run = gen.reuse_run if gen.reuse_run is not None else torch.zeros(gen.batch, dtype=torch.long)
            gen.reuse_run = torch.where(decision.reuse, run + 1, torch.zeros_like(run))
        reuse = gen.decision.reuse.cpu().bool()
        have = gen.has_residual.get(call.branch, torch.zeros(gen.batch, dtype=torch.bool))
        call.compute = ~(reuse & have)
        reasons = list(gen.decision.reason or [("reuse" if r else "refresh") for r in reuse.tolist()])
        call.reasons = ["no_residual" if (r and not h) else why for r, h, why in zip(reuse.tolist(), have.tolist(), reasons)]

    def _guard(self, decision: Decision, step: int) -> Decision:
        """All ranks reuse a sample only if every rank's rule said so (all-reduce MIN of the mask)."""
        gen = self.gen
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
        return Decision(reuse=agreed.to(decision.reuse.device), score=decision.score, eps=decision.eps,
                        reason=reasons)

    def _end_call(self) -> None:
        gen, call = self.gen, self.call
        if call is None or call.compute is None:
            return
        decision = gen.decision
        if call.ran_stack:
            self.trace.stack_runs += 1
        for row in range(gen.batch):
            score = None
            if decision.score is not None:
                score = _finite_or_none(decision.score[row])
            self.trace.records.append(TraceRecord(
                call=gen.call_index, step=call.step, timestep=float(call.timestep[row]), branch=call.branch,
                sample=row, computed=bool(call.compute[row]), score=score, eps=None if decision.eps is None or math.isnan(decision.eps) else float(decision.eps),
                reuse_run=int(gen.reuse_run[row]) if not call.compute[row] else 0, reason=call.reasons[row],
            ))
        gen.call_index += 1
        if call.step == call.num_steps - 1 and not gen.warned_no_reuse:
            self._note_if_nothing_reused()
        self.call = None

    def _note_if_nothing_reused(self) -> None:
        gen = self.gen
        if self.method == "none" or any(not r.computed for r in self.trace.records):
            return  # a rule that never reuses (recording runs) has nothing to explain
        gen.warned_no_reuse = True
        scores = [r.score for r in self.trace.records if r.score is not None and math.isfinite(r.score)]
        eps = getattr(self.config, "eps", None)
        if gen.num_steps is not None and gen.num_steps <= 1 + getattr(self.config, "final_steps", 0):
            why = f"only {gen.num_steps} steps, and the first and final steps always compute"
        elif scores and eps is not None:
            why = (f"eps={eps:g} is below every predicted change (smallest S = {min(scores):.4g}); "
                   f"raise eps (or use SenCacheConfig(target_nfe=...) where available)")
        else:
            why = "the rule never allowed a reuse at these settings"
        msg = f"sencache: this generation reused no step, so there is no speed-up: {why}"
        self.trace.notes.append(msg)
        logger.warning(msg)

    # --- residual store ---------------------------------------------------------------------
    def _store_residual(self, store: dict, branch: str, rows: torch.Tensor | None, value: torch.Tensor) -> None:
        batch = self.gen.batch
        value = value.detach()
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
    def _cached(store: dict, branch: str, like: torch.Tensor) -> torch.Tensor:
        """The branch's cached residual on ``like``'s device and dtype (copied back if offloaded)."""
        return store[branch].to(device=like.device, dtype=like.dtype, non_blocking=True)


class SenCacheModelHook(ModelHook):
    """On the transformer: reads branch/step/latent/timestep, resets on a new generation or an error."""

    _is_stateful = True

    def __init__(self, session: CacheSession):
        super().__init__()
        self.session = session
        self.context_state = StateManager(_NoState)  # diffusers sets the cache context on it
        self.arguments = None

    def initialize_hook(self, module):
        self.arguments = ArgumentReader(type(module).forward)
        return module

    def new_forward(self, module, *args, **kwargs):
        s = self.session
        latent = self.arguments.get("hidden_states", args, kwargs)
        timestep = self.arguments.get("timestep", args, kwargs)
        if not isinstance(latent, torch.Tensor) or not isinstance(timestep, torch.Tensor):
            return self.fn_ref.original_forward(*args, **kwargs)
        context = self.context_state._context
        branch = context.name if context is not None else "default"
        step, num_steps = s._resolve_step(context, timestep, branch)
        bad = not bool(torch.isfinite(latent).all())
        if s.sync is not None:
            bad = s.sync.any(bad)  # every rank raises together instead of leaving the others in a collective
        if bad:
            s.reset()
            raise SenCacheError(
                f"the latent given to the transformer at step {step} holds NaN or inf; the sampler diverged "
                f"before caching could act (check the scheduler settings, or run without the cache to compare)"
            )
        s._begin_call(branch, step, num_steps, latent, timestep)
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            s._poisoned = True  # the next call starts a fresh generation with no stale residuals
            s.call = None
            raise
        s._end_call()
        return output

    def reset_state(self, module):
        self.session.reset()
        return module


class _NoState:
    def reset(self):
        pass


def _finite_or_none(value) -> float | None:
    value = float(value) if value is not None else None
    return value if value is not None and math.isfinite(value) else None


def _slice_rows(value, batch: int, rows: torch.Tensor):
    """Select the computed rows of every batch-first tensor, also inside tuples (rotary embeddings)."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value.index_select(0, rows.to(value.device))
    if isinstance(value, (tuple, list)):
        return type(value)(_slice_rows(v, batch, rows) for v in value)
    return value


class SenCacheBlockHook(ModelHook):
    """On each block of the stack: skip, run, or run a subset of rows, as the step's decision says."""

    def __init__(self, session: CacheSession, index: int, count: int):
        super().__init__()
        self.session = session
        self.is_head = index == 0
        self.is_tail = index == count - 1
        self.arguments = None

    def initialize_hook(self, module):
        self.arguments = ArgumentReader(type(module).forward)
        return module

    def _pack(self, hidden, encoder):
        st = self.session.stack
        if st.encoder_index is None:
            return hidden
        out = [None] * (max(st.hidden_index, st.encoder_index) + 1)
        out[st.hidden_index], out[st.encoder_index] = hidden, encoder
        return tuple(out)

    def _unpack(self, output):
        st = self.session.stack
        if st.encoder_index is None:
            return (output[st.hidden_index] if isinstance(output, tuple) else output), None
        return output[st.hidden_index], output[st.encoder_index]

    def new_forward(self, module, *args, **kwargs):
        s = self.session
        call = s.call
        if call is None:  # called outside a hooked transformer forward: behave like the plain block
            return self.fn_ref.original_forward(*args, **kwargs)
        st = s.stack
        batch = s.gen.batch
        if self.is_head:
            read = self.arguments.get
            hidden = read(st.hidden_arg, args, kwargs)
            encoder = read("encoder_hidden_states", args, kwargs) if st.encoder_index is not None else None
            s._decide(modulation=read("temb", args, kwargs))
            call.head_hidden, call.head_encoder = hidden, encoder
            if bool(call.compute.all()):
                call.mode = "full"
            elif not bool(call.compute.any()):
                call.mode = "skip"
            else:
                call.mode = "subset"
                call.rows = call.compute.nonzero().flatten()
        if call.mode == "skip":
            if self.is_head:
                hidden = call.head_hidden + s._cached(s.gen.residual, call.branch, call.head_hidden)
                encoder = call.head_encoder
                if encoder is not None and call.branch in s.gen.encoder_residual:
                    encoder = encoder + s._cached(s.gen.encoder_residual, call.branch, encoder)
                return self._pack(hidden, encoder)
            read = self.arguments.get
            return self._pack(read(st.hidden_arg, args, kwargs), read("encoder_hidden_states", args, kwargs))
        if call.mode == "subset":
            args = tuple(_slice_rows(a, batch, call.rows) for a in args)
            kwargs = {k: _slice_rows(v, batch, call.rows) for k, v in kwargs.items()}
        call.ran_stack = True
        output = self.fn_ref.original_forward(*args, **kwargs)
        if not self.is_tail:
            return output
        return self._finish_stack(output)

    def _finish_stack(self, output):
        """At the last block: store the new residuals and, in subset mode, merge the rows back."""
        s, call = self.session, self.session.call
        gen = s.gen
        hidden, encoder = self._unpack(output)
        rows = call.rows if call.mode == "subset" else None
        head_h = call.head_hidden if rows is None else call.head_hidden.index_select(0, rows.to(hidden.device))
        new_res = hidden - head_h
        s._store_residual(gen.residual, call.branch, rows, new_res)
        if encoder is not None and call.head_encoder is not None and encoder.shape[1:] == call.head_encoder.shape[1:]:
            head_e = call.head_encoder if rows is None else call.head_encoder.index_select(0, rows.to(encoder.device))
            s._store_residual(gen.encoder_residual, call.branch, rows, encoder - head_e)
        have = gen.has_residual.get(call.branch, torch.zeros(gen.batch, dtype=torch.bool))
        gen.has_residual[call.branch] = have | call.compute
        if call.branch == gen.decider_branch:
            s.rule.observe_refresh(gen.rule_state, gen.step_input, call.compute.clone(), new_res)
        if rows is None:
            return output
        merged_h = call.head_hidden + s._cached(gen.residual, call.branch, call.head_hidden)
        merged_h = merged_h.index_copy(0, rows.to(merged_h.device), hidden)
        merged_e = None
        if encoder is not None:
            merged_e = call.head_encoder + s._cached(gen.encoder_residual, call.branch, call.head_encoder)
            merged_e = merged_e.index_copy(0, rows.to(merged_e.device), encoder)
        return self._pack(merged_h, merged_e)


def enable(target, config, *, num_inference_steps: int | None = None, sync_group=AUTO,
           offload_residuals: bool = False) -> CacheSession:
    """Accelerate a diffusers pipeline (or a bare transformer) with a caching rule.

    ``config`` is a :class:`~sencache.SenCacheConfig` or any baseline config with ``build_rule()``.
    Returns the :class:`CacheSession`; its ``trace`` holds the decisions of the last pipeline call.
    Enabling again on the same transformer replaces the previous cache.

    ``sync_group`` keeps decisions identical on every rank that shares one generation
    (:mod:`sencache.parallel`): ``"auto"`` (default) syncs only when torch.distributed is initialised and
    diffusers has set a parallel config on the transformer (``enable_parallelism``), over that config's
    mesh group; never in plain data-parallel runs. ``True`` syncs over the default group, a ProcessGroup
    over that group, ``None``/``False`` never. ``offload_residuals=True`` keeps the cached residuals in CPU
    memory (pinned when CUDA is available; non-blocking copies out after a refresh and back on reuse):
    less device memory, one host-to-device copy per reused call. ``session.residual_bytes()`` reports what
    is held per branch.
    """
    transformer, scheduler = split_target(target)
    if not hasattr(config, "build_rule"):
        raise SenCacheError(f"{type(config).__name__} is not a sencache config (SenCacheConfig, MagCacheConfig, ...)")
    profile = getattr(config, "profile", None)
    if profile is not None:
        profile.check_model(transformer)
    sync = resolve_sync(transformer, sync_group)
    session = CacheSession(transformer, scheduler, config, num_inference_steps=num_inference_steps, sync=sync,
                           offload_residuals=offload_residuals)
    disable(transformer)
    registry = HookRegistry.check_if_exists_or_initialize(transformer)
    registry.register_hook(SenCacheModelHook(session), MODEL_HOOK)
    count = len(session.stack.blocks)
    for index, block in enumerate(session.stack.blocks):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            SenCacheBlockHook(session, index, count), BLOCK_HOOK
        )
        place_inside_parallel_hooks(block, BLOCK_HOOK)  # CP split/gather stay outside the cache
    registry.invalidate_child_registries_cache()
    return session


def disable(target) -> None:
    """Remove every sencache hook from the pipeline's transformer (or the transformer)."""
    transformer, _ = split_target(target)
    registry = getattr(transformer, "_diffusers_hook", None)
    if registry is not None:
        registry.remove_hook(MODEL_HOOK, recurse=False)
    for module in transformer.modules():
        child = getattr(module, "_diffusers_hook", None)
        if child is not None and module is not transformer:
            child.remove_hook(BLOCK_HOOK, recurse=False)
    if registry is not None:
        registry.invalidate_child_registries_cache()


def active_session(target) -> CacheSession | None:
    transformer, _ = split_target(target)
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(MODEL_HOOK) if registry is not None else None
    return hook.session if hook is not None else None
