"""The one diffusers adapter: hooks on a transformer and its block stack that apply a caching rule.

On every transformer call the model hook notes the branch (the pipeline's ``cache_context``), the
denoising step, the noisy latent and the timestep, and asks the rule once per step which samples may
reuse; all CFG branches of that step follow the same decision, each with its own cached residual. It
leaves a :class:`~sencache.adapter.plan.StackPlan` for the block hooks: for the samples that reuse, the
block stack is skipped and ``input_of_first_block + cached_residual`` is handed on, so the output head
still runs with the current timestep. When the samples of a batch disagree, the stack runs for the
refreshing rows only (every tensor argument with the batch as its first dimension is sliced) and the rows
are merged. After the call the model hook stores the new residuals.

Decisions, host syncs and bookkeeping stay in the model hook (never traced by ``torch.compile``), so the
block hooks compile under ``fullgraph=True`` with one graph per mode (full, skip, subset). Only a rule
that reads the first block's modulation (TeaCache) decides inside the first block, behind a graph break.

Nothing is monkey-patched: hooks live in diffusers' per-module HookRegistry, so two pipelines in
one process keep separate state, and :func:`disable` removes every hook.

Under diffusers' context parallelism every rank must take the same decision at every step: the
adapter then computes the rule's RMS over all ranks and guards the final mask with an all-reduce MIN
(:mod:`sencache.adapter.parallel`). ``offload_residuals=True`` keeps the cached residuals in (pinned) CPU
memory and copies them back to the device when a step reuses them.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Sequence

import torch
from diffusers.hooks import HookRegistry, ModelHook
from diffusers.hooks.hooks import StateManager
from diffusers.models.attention import AttentionModuleMixin
from diffusers.models.attention_processor import Attention

from sencache.adapter.arguments import ArgumentReader
from sencache.adapter.conditioning import noisy_latent, step_timesteps
from sencache.adapter.grid import latent_grid
from sencache.adapter.layout import BlockLayout, denoisers
from sencache.adapter.observers import SessionObserver
from sencache.adapter.parallel import (
    AUTO,
    place_inside_parallel_hooks,
    resolve_sync,
)
from sencache.adapter.plan import StackSkipped
from sencache.adapter.session import CacheSession
from sencache.errors import SenCacheError

MODEL_HOOK = "sencache_model"
BLOCK_HOOK = "sencache_block"
ATTENTION_HOOK = "sencache_attention"
logger = logging.getLogger("sencache")


class SenCacheModelHook(ModelHook):
    """On the transformer: reads branch/step/latent/timestep, resets on a new generation or an error."""

    _is_stateful = True

    def __init__(self, session: CacheSession, expert: str = "transformer"):
        super().__init__()
        self.session = session
        self.expert = expert  # which of the pipeline's denoising transformers this hook sits on
        self.context_state = StateManager(_NoState)  # diffusers sets the cache context on it
        self.arguments = None

    def initialize_hook(self, module):
        """Resolve where the transformer's forward takes its arguments."""
        self.arguments = ArgumentReader(type(module).forward)
        return module

    def new_forward(self, module, *args, **kwargs):
        """Note branch, step, latent and timestep; run the transformer; record the call (a new generation
        or an error resets the state).
        """
        calls = self.session.calls
        latent = self.arguments.get("hidden_states", args, kwargs)
        timestep = self.arguments.get("timestep", args, kwargs)
        if not isinstance(latent, torch.Tensor) or not isinstance(timestep, torch.Tensor):
            return self.fn_ref.original_forward(*args, **kwargs)
        # the sampler's state only: no image-conditioning channels, the noisy tokens' timestep
        latent = noisy_latent(module, latent)
        timestep = step_timesteps(timestep, latent.shape[0])
        context = self.context_state._context
        branch = context.name if context is not None else "default"
        step, num_steps = calls.resolve_step(context, timestep, branch)
        grid = None
        if self.session.reads_grid:
            grid = latent_grid(module, latent, lambda name: self.arguments.get(name, args, kwargs))
        calls.begin_call(branch, step, num_steps, latent, timestep, self.expert, grid=grid,
                         context_sigma=getattr(context, "sigma", None))
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        except BaseException:
            calls.abort_call()  # the next call starts a fresh generation with no stale residuals
            raise
        calls.end_call(module, args, kwargs, output)
        return output

    def reset_state(self, module):
        """Forget the cache (diffusers calls this at the end of a pipeline call)."""
        self.session.reset()
        return module


class _NoState:
    def reset(self):
        pass


def _slice_rows(value, batch: int, rows: torch.Tensor):
    """Select the computed rows of every batch-first tensor, also inside tuples (rotary embeddings)."""
    if isinstance(value, torch.Tensor) and value.ndim >= 1 and value.shape[0] == batch:
        return value.index_select(0, rows.to(value.device))  # a no-op (and traceable) on the stack's device
    if isinstance(value, (tuple, list)):
        return type(value)(_slice_rows(v, batch, rows) for v in value)
    return value


class SenCacheBlockHook(ModelHook):
    """On each block of the stack: skip, run, or run a subset of rows, as the step's decision says."""

    def __init__(self, session: CacheSession, layout: BlockLayout, index: int, count: int):
        super().__init__()
        self.session = session
        self.layout = layout  # this block's streams (a two-list stack has two kinds of block)
        self.is_head = index == 0
        self.is_tail = index == count - 1
        self.arguments = None

    def initialize_hook(self, module):
        """Resolve where the block's forward takes its arguments."""
        self.arguments = ArgumentReader(type(module).forward)
        return module

    def new_forward(self, module, *args, **kwargs):
        """Skip the stack, run it, or run the computing rows only, as the call's plan says.

        Traceable by torch.compile with ``fullgraph=True``: only the plan's Python fields are branched on
        (dynamo guards on them: one graph per mode), no tensor is read on the host (see
        :mod:`sencache.adapter.plan`).
        """
        plan = self.session.plan
        if not plan.active:  # called outside a hooked transformer forward: behave like the plain block
            return self.fn_ref.original_forward(*args, **kwargs)
        layout = self.layout
        read = self.arguments.get
        if self.is_head:
            if plan.decide_at_head or plan.keep_modulation:
                plan.modulation = read("temb", args, kwargs)
            if plan.decide_at_head:
                self.session.calls.decide_at_head(plan.modulation)
            plan.head_hidden = read(layout.hidden_arg, args, kwargs)
            plan.head_encoder = read("encoder_hidden_states", args, kwargs) if layout.encoder_index is not None \
                else None
            if plan.decide_in_attention:
                return self._decide_inside(plan, layout, args, kwargs)
        mode = plan.mode
        if mode == "skip":  # the head hands on the reused streams; every later block passes its input on
            if self.is_head:
                return layout.pack(*self._reused_streams(plan))
            return layout.pack(read(layout.hidden_arg, args, kwargs), read("encoder_hidden_states", args, kwargs))
        if mode == "subset":
            batch = plan.head_hidden.shape[0]
            args = tuple(_slice_rows(a, batch, plan.rows) for a in args)
            kwargs = {k: _slice_rows(v, batch, plan.rows) for k, v in kwargs.items()}
        output = self.fn_ref.original_forward(*args, **kwargs)
        if not self.is_tail:
            return output
        hidden, encoder = layout.unpack(output)
        return self._hand_on(plan, mode, output, hidden, encoder)

    def _hand_on(self, plan, mode: str, output, hidden, encoder):
        """The last block: keep the computing rows' streams for the residual; in subset mode merge them into the
        reused rows' streams."""
        plan.out_hidden, plan.out_encoder = hidden, encoder
        if mode != "subset":
            return output
        merged_h, merged_e = self._reused_streams(plan)
        merged_h = merged_h.index_copy(0, plan.rows, hidden)
        if encoder is not None:
            merged_e = merged_e.index_copy(0, plan.rows, encoder)
        return self.layout.pack(merged_h, merged_e)

    def _decide_inside(self, plan, layout, args, kwargs):
        """Run the first block whole; its first attention layer's pre-hook decides. Skip: the rest of the
        block is abandoned and the reused streams handed on. Subset: the later blocks take the computing rows."""
        try:
            output = self.fn_ref.original_forward(*args, **kwargs)
        except StackSkipped:
            return self.layout.pack(*self._reused_streams(plan))
        if plan.mode == "pending":
            raise SenCacheError("the first block called no attention layer, so the paper's SeaCache had no "
                                "modulated input to decide on; use method 'seacache' (the latent) instead")
        if not self.is_tail:
            return output
        hidden, encoder = layout.unpack(output)
        if plan.mode == "subset":  # the block ran every row: keep the computing ones
            hidden = hidden.index_select(0, plan.rows)
            encoder = encoder.index_select(0, plan.rows) if encoder is not None else None
        return self._hand_on(plan, plan.mode, output, hidden, encoder)

    @staticmethod
    def _reused_streams(plan):
        """The first block's input plus the cached (or forecast) residual, per stream."""
        hidden = plan.head_hidden + plan.reused
        encoder = plan.head_encoder
        if encoder is not None and plan.reused_encoder is not None:
            encoder = encoder + plan.reused_encoder
        return hidden, encoder


class SenCacheAttentionHook(ModelHook):
    """On the first block's first attention layer, for rules that decide on the modulated input it receives."""

    def __init__(self, session: CacheSession):
        super().__init__()
        self.session = session
        self.arguments = None

    def initialize_hook(self, module):
        """Resolve where the attention's forward takes its input."""
        self.arguments = ArgumentReader(type(module).forward)
        return module

    def new_forward(self, module, *args, **kwargs):
        """Decide on the tokens about to enter attention; abandon the block when no row runs the stack."""
        plan = self.session.plan
        if plan.active and plan.mode == "pending":
            self.session.calls.decide_in_attention(self.arguments.get("hidden_states", args, kwargs))
            if plan.mode == "skip":
                raise StackSkipped
        return self.fn_ref.original_forward(*args, **kwargs)


def first_attention(block: torch.nn.Module) -> torch.nn.Module:
    """The first attention layer a block registers (Wan's attn1, CogVideoX's and LTX's attn1, FLUX's attn)."""
    for module in block.modules():
        if module is not block and isinstance(module, (Attention, AttentionModuleMixin)):
            return module
    raise SenCacheError(f"{type(block).__name__} has no attention layer: the paper's SeaCache has no modulated input "
                        f"to decide on; use method 'seacache' (the latent) instead")


def enable(target, config, *, num_inference_steps: int | None = None, sync_group=AUTO,
           offload_residuals: bool = False, observers: Sequence[SessionObserver] = ()) -> CacheSession:
    """Accelerate a diffusers pipeline (or a bare transformer) with a caching rule.

    ``config`` is a :class:`~sencache.SenCacheConfig` or any baseline config with ``build_rule()``.
    Returns the :class:`CacheSession`; its ``trace`` holds the decisions of the last pipeline call.
    Enabling again on the same transformer replaces the previous cache. A pipeline with two denoising
    transformers (Wan 2.2: ``transformer`` for the high-noise steps, ``transformer_2`` for the low-noise ones) gets
    both cached by one session: one step count and trace (each record names its expert), and each expert starts
    with an empty cache when it takes over; a SenCache profile calibrated on such a pipeline holds both experts'
    curves.

    ``sync_group`` keeps decisions identical on every rank that shares one generation
    (:mod:`sencache.adapter.parallel`): ``"auto"`` (default) syncs only when torch.distributed is initialised and
    diffusers has set a parallel config on the transformer (``enable_parallelism``), over that config's
    mesh group; never in plain data-parallel runs. ``True`` syncs over the default group, a ProcessGroup
    over that group, ``None``/``False`` never. ``offload_residuals=True`` keeps the cached residuals in CPU
    memory (pinned when CUDA is available; non-blocking copies out after a refresh and back on reuse):
    less device memory, one host-to-device copy per reused call. ``session.residual_bytes()`` reports what
    is held per branch. ``observers`` receive a :class:`~sencache.adapter.observers.CallEvent` at the end of
    every transformer call (see :mod:`sencache.adapter.recorder`).

    Args:
        target: a diffusers pipeline with a ``.transformer`` (and maybe ``.transformer_2``), or the transformer.
        config: the rule's config: :class:`~sencache.SenCacheConfig`, ``MagCacheConfig``, ``TeaCacheConfig``,
            ``FixedConfig``, ``NoCacheConfig`` or anything with ``build_rule()``.
        num_inference_steps: only for a bare transformer without a scheduler: T, to count steps.
        sync_group: ``"auto"``, ``True``, ``None``/``False`` or a ProcessGroup (see above).
        offload_residuals: keep cached residuals in host memory.
        observers: objects with ``on_call(event)``.
    """
    experts = denoisers(target)
    transformer = experts["transformer"]
    scheduler = getattr(target, "scheduler", None) if target is not transformer else None
    if not hasattr(config, "build_rule"):
        raise SenCacheError(f"{type(config).__name__} is not a sencache config (SenCacheConfig, MagCacheConfig, ...)")
    profile = getattr(config, "profile", None)
    if profile is not None:
        for name, module in experts.items():
            profile.check_model(module, expert=name)
    sync = resolve_sync(transformer, sync_group)
    session = CacheSession(experts, scheduler, config, num_inference_steps=num_inference_steps, sync=sync,
                           offload_residuals=offload_residuals, observers=observers,
                           remove=lambda: _disable_if_current(target, session))
    disable(target)
    for name, module in experts.items():
        _install(session, name, module)
    return session


def _install(session: CacheSession, name: str, module) -> None:
    """The model hook on one denoising transformer, a block hook on each block of its stack, and for rules that
    decide on the modulated input the attention hook on its first block's first attention layer."""
    registry = HookRegistry.check_if_exists_or_initialize(module)
    registry.register_hook(SenCacheModelHook(session, name), MODEL_HOOK)
    stack = session.stacks[name]
    count = len(stack.blocks)
    for index, (block, layout) in enumerate(zip(stack.blocks, stack.layouts)):
        HookRegistry.check_if_exists_or_initialize(block).register_hook(
            SenCacheBlockHook(session, layout, index, count), BLOCK_HOOK
        )
        place_inside_parallel_hooks(block, BLOCK_HOOK)  # CP split/gather stay outside the cache
    if session.plan.decide_in_attention:
        HookRegistry.check_if_exists_or_initialize(first_attention(stack.blocks[0])).register_hook(
            SenCacheAttentionHook(session), ATTENTION_HOOK)
    registry.invalidate_child_registries_cache()


def disable(target) -> None:
    """Remove every sencache hook from the pipeline's denoising transformers (or the transformer)."""
    for transformer in denoisers(target).values():
        registry = getattr(transformer, "_diffusers_hook", None)
        if registry is not None:
            registry.remove_hook(MODEL_HOOK, recurse=False)
        for module in transformer.modules():
            child = getattr(module, "_diffusers_hook", None)
            if child is not None and module is not transformer:
                child.remove_hook(BLOCK_HOOK, recurse=False)
                child.remove_hook(ATTENTION_HOOK, recurse=False)
        if registry is not None:
            registry.invalidate_child_registries_cache()


def _disable_if_current(target, session: CacheSession) -> None:
    """``session.disable()``: removes the hooks only while they are this session's; a session replaced by a later
    ``enable`` has nothing left to remove, and removing the newer one's hooks would be a surprise."""
    current = active_session(target)
    if current is not session:
        logger.warning("sencache: this session was replaced by a later sencache.enable on the same pipeline; "
                       "disable() left the newer cache in place (call sencache.disable(pipe) to remove it)")
        return
    disable(target)


def active_session(target) -> CacheSession | None:
    """The :class:`CacheSession` sencache has on this pipeline's transformer, or None."""
    transformer = denoisers(target)["transformer"]
    registry = getattr(transformer, "_diffusers_hook", None)
    hook = registry.get_hook(MODEL_HOOK) if registry is not None else None
    return hook.session if hook is not None else None


@contextlib.contextmanager
def quiet_sencache():
    """Silence the adapter's per-generation warnings (e.g. "reused no step") while sweeping thresholds:
    they are expected at the low end of a sweep, and the trace keeps them as notes."""
    log = logging.getLogger("sencache")
    level = log.level
    log.setLevel(logging.ERROR)
    try:
        yield
    finally:
        log.setLevel(level)
