"""Which denoising step a transformer call belongs to, and in which units its timestep comes.

The pipeline's context (diffusers' ``cache_context`` with a step index) answers first; else the scheduler's
timestep grid (the nearest entry); else counting calls on a bare transformer. FLUX-style pipelines hand the
transformer ``timestep / num_train_timesteps``: the clock finds that from the grid and keeps the factor
(``t_scale``), so the rule, the profile and the trace all see scheduler units.
"""

from __future__ import annotations

import logging

import torch

from sencache.errors import SenCacheError

logger = logging.getLogger("sencache")


class StepClock:
    """The step index and timestep units of each call, read off the scheduler (or counted).

    Args:
        scheduler: the pipeline's scheduler, or None for a bare transformer.
        num_inference_steps: T for a bare transformer without a scheduler.
    """

    def __init__(self, scheduler, num_inference_steps: int | None = None):
        self.scheduler = scheduler
        self.num_inference_steps = num_inference_steps
        self.t_scale = 1.0  # transformer timestep -> scheduler units (FLUX: num_train_timesteps)
        self._grid_cache: tuple[int, torch.Tensor] | None = None
        self._matched: dict[float, tuple[int, float]] = {}  # t0 -> (step, t_scale) on the cached grid
        self._checked: tuple | None = None  # (profile, scheduler grid) last checked for coverage
        self._note: str | None = None

    @torch.compiler.disable  # host-side bookkeeping: never traced, even when the whole transformer is compiled
    def resolve(self, context, timestep: torch.Tensor, branch: str, generation) -> tuple[int, int]:
        """(step, num_steps) of this call; ``generation`` is the current one (its step, batch and branches)."""
        grid = self.grid()
        if grid is not None:  # also finds the units the transformer gets its timestep in
            step = self._match(grid, float(timestep.reshape(-1)[0]))
        if context is not None and context.step_index is not None and context.num_inference_steps:
            return int(context.step_index), int(context.num_inference_steps)
        if grid is not None:
            return step, int(grid.numel())
        if self.num_inference_steps:
            if generation.step is None or generation.batch is None:
                return 0, self.num_inference_steps
            step = generation.step + 1 if branch in generation.branches_this_step else generation.step
            return step % self.num_inference_steps, self.num_inference_steps
        raise SenCacheError(
            "sencache cannot tell the denoising step: enable it on the pipeline (sencache.enable(pipe, ...)) "
            "or pass num_inference_steps=... when enabling it on a bare transformer"
        )

    def grid(self) -> torch.Tensor | None:
        """The scheduler's timesteps as a float64 CPU tensor (copied once per schedule), or None."""
        timesteps = getattr(self.scheduler, "timesteps", None) if self.scheduler is not None else None
        if not isinstance(timesteps, torch.Tensor) or timesteps.numel() == 0:
            return None
        if self._grid_cache is None or self._grid_cache[0] != id(timesteps):
            self._grid_cache = (id(timesteps), timesteps.detach().double().cpu())
            self._matched = {}
        return self._grid_cache[1]

    def check_profile(self, profile) -> str | None:
        """The profile's grid against this run's timesteps: refused when it misses most of them, a warning once per
        scheduler grid when it misses some (see SensitivityProfile.check_covers)."""
        grid = self.grid()
        if profile is None or grid is None:
            return None
        key = (id(profile), id(self.scheduler.timesteps))
        if self._checked == key:
            return self._note
        note = profile.check_covers(grid, what="this run")
        if note:
            logger.warning(note)
        self._checked, self._note = key, note
        return note

    def _match(self, grid: torch.Tensor, t0: float) -> int:
        """The grid step nearest to ``t0``, trying the transformer's units scaled by num_train_timesteps too (each
        timestep's answer kept: every generation on one schedule asks the same questions)."""
        known = self._matched.get(t0)
        if known is None:
            known = self._matched[t0] = self._nearest(grid, t0)
        self.t_scale = known[1]
        return known[0]

    def _nearest(self, grid: torch.Tensor, t0: float) -> tuple[int, float]:
        miss = (grid - t0).abs()
        t_scale = 1.0
        train = float(getattr(getattr(self.scheduler, "config", None), "num_train_timesteps", 0) or 0)
        if train > 1 and float(miss.min()) > 0:
            scaled = (grid / train - t0).abs()
            if float(scaled.min()) < float(miss.min()):
                miss, t_scale = scaled, train
        return int(torch.argmin(miss)), t_scale
