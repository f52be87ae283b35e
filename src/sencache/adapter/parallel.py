"""Rank-consistent caching decisions when one generation is split over several ranks.

Under diffusers' context parallelism (``transformer.enable_parallelism(config=ContextParallelConfig(...))``)
every rank runs the same denoising step on a slice of the token sequence, and the attention layers
exchange data between the ranks (Ulysses all-to-all, ring all-gather). If one rank skipped the block
stack while another ran it, the one that ran would wait forever in a collective, and the output would
mix cached and fresh slices. So every rank must take the same reuse/refresh decision at every step.

:class:`DecisionSync` makes that so, with two small collectives per step:

* **global RMS** — the adapter hands the rule (through :attr:`sencache.core.rules.base.StepInput.rms`) a
  reducer that all-reduces, per sample, the sum of squares and the element count, so the rule sees the
  RMS of the *whole* latent (or residual) even when its rank holds only a slice. SenCache's predicted
  change S is then the same number on every rank.
* **guard** — the final reuse mask is all-reduced with MIN (a sample refreshes if any rank wants to).
  With the global RMS the SenCache rule never needs it; rules that look at rank-local data (MagCache's
  residual norms, a custom rule) do. Every decision the guard changes is marked ``sync_refresh`` in the
  trace, and a note says how many there were.

A third, cheap all-reduce makes the adapter's NaN/inf check on the latent global, so every rank raises
together instead of one rank raising while the others wait in a collective.

:func:`resolve_sync` picks the group. By default (``sync_group="auto"``) it syncs only when
torch.distributed is initialised *and* diffusers has set a parallel config on the transformer
(``transformer._parallel_config``, set by ``enable_parallelism`` or ``from_pretrained(parallel_config=...)``),
over the group of that config's device mesh. It never syncs in plain data-parallel runs
(``torchrun`` + ``sencache generate/compare``), where ranks run different prompts and must not block on
each other.
"""

from __future__ import annotations

from typing import Any

import torch

from sencache.errors import SenCacheError

AUTO = "auto"
CP_HOOK_PREFIXES = ("cp_input---", "cp_output---")  # diffusers.hooks.context_parallel hook names


def _dist():
    import torch.distributed as dist

    return dist if dist.is_available() and dist.is_initialized() else None


def parallel_config_of(transformer) -> Any:
    """The parallel config diffusers recorded on the transformer (``_parallel_config``), or None."""
    return getattr(transformer, "_parallel_config", None)


def _mesh_group(config) -> Any:
    """The process group of the config's device mesh (the ranks that share one generation), or None."""
    cp = getattr(config, "context_parallel_config", None)
    if cp is None and hasattr(config, "ring_degree"):  # a bare ContextParallelConfig
        cp = config
    mesh = getattr(cp, "_flattened_mesh", None) if cp is not None else None
    if mesh is None:
        tp = getattr(config, "tensor_parallel_config", None)
        mesh = getattr(tp, "_mesh", None) if tp is not None else None
    if mesh is None:
        return None
    try:
        return mesh.get_group()
    except Exception:  # a mesh of several dimensions has no single group
        return None


def resolve_sync(transformer, sync_group=AUTO) -> "DecisionSync | None":
    """The :class:`DecisionSync` to use for ``transformer``, or None for rank-local decisions.

    ``sync_group``: ``"auto"`` (default; see the module docstring), ``None``/``False`` (never sync),
    ``True`` (the default process group), or a ``torch.distributed`` ProcessGroup.
    """
    if sync_group is None or sync_group is False:
        return None
    dist = _dist()
    if isinstance(sync_group, str):
        if sync_group != AUTO:
            raise SenCacheError(f"sync_group must be 'auto', True, False/None or a ProcessGroup (got {sync_group!r})")
        config = parallel_config_of(transformer)
        if dist is None or config is None:
            return None
        group = _mesh_group(config) or dist.group.WORLD
    else:
        if dist is None:
            raise SenCacheError("sync_group needs torch.distributed to be initialised first "
                                "(torch.distributed.init_process_group, or run under torchrun)")
        group = dist.group.WORLD if sync_group is True else sync_group
    if dist.get_world_size(group) <= 1:
        return None
    return DecisionSync(group)


class DecisionSync:
    """The collectives that keep caching decisions identical on every rank of ``group``."""

    def __init__(self, group=None):
        dist = _dist()
        if dist is None:
            raise SenCacheError("DecisionSync needs an initialised torch.distributed process group")
        self._dist = dist
        self.group = group if group is not None else dist.group.WORLD
        self.world_size = dist.get_world_size(self.group)
        self.backend = str(dist.get_backend(self.group)).lower()

    def _device(self, like: torch.Tensor | None = None) -> torch.device:
        """Where the collective's tensor must live: the CPU for gloo, a CUDA device for NCCL."""
        if like is not None and like.device.type != "cpu" and self.backend != "gloo":
            return like.device
        if "gloo" in self.backend:
            return torch.device("cpu")
        if "nccl" in self.backend:
            return torch.device("cuda", torch.cuda.current_device())
        return like.device if like is not None else torch.device("cpu")

    def _all_reduce(self, tensor: torch.Tensor, op) -> torch.Tensor:
        self._dist.all_reduce(tensor, op=op, group=self.group)
        return tensor

    def rms(self, x: torch.Tensor) -> torch.Tensor:
        """Per-sample RMS over every rank's slice: (B, ...) -> (B,) float32, the same on every rank."""
        flat = x.detach().reshape(x.shape[0], -1)
        stats = torch.stack([flat.double().pow(2).sum(dim=1),
                             torch.full((flat.shape[0],), float(flat.shape[1]), dtype=torch.float64,
                                        device=flat.device)], dim=1)
        stats = self._all_reduce(stats.to(self._device(flat)), self._dist.ReduceOp.SUM)
        return (stats[:, 0] / stats[:, 1].clamp_min(1.0)).sqrt().float().to(x.device)

    def reuse_all(self, reuse: torch.Tensor) -> torch.Tensor:
        """(B,) bool: True only where every rank wants to reuse (all-reduce MIN). CPU bool out."""
        flags = reuse.detach().to(self._device(reuse), torch.int32)
        return self._all_reduce(flags, self._dist.ReduceOp.MIN).cpu().bool()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is True on any rank."""
        box = torch.tensor([1 if flag else 0], dtype=torch.int32, device=self._device())
        return bool(self._all_reduce(box, self._dist.ReduceOp.MAX).item())


def place_inside_parallel_hooks(module: torch.nn.Module, hook_name: str) -> list[str]:
    """Move diffusers' context-parallel hooks on ``module`` outside the hook ``hook_name``.

    diffusers runs the hook registered last outermost. The CP plan of e.g. Wan splits the sequence at the
    input of the first block (``cp_input---blocks.0``); if sencache was enabled after ``enable_parallelism``,
    its block hook would see (and, when skipping, return) the whole sequence while the rest of the model
    works on this rank's slice. Re-registering the CP hooks after ours puts the split outside, so the
    cached residuals are rank-local slices, like everything between the split and the gather.
    Returns the names of the hooks that moved.
    """
    registry = getattr(module, "_diffusers_hook", None)
    if registry is None or hook_name not in registry.hooks:
        return []
    order = list(registry._hook_order)
    ours = order.index(hook_name)
    cp_before = [i for i, name in enumerate(order[:ours]) if name.startswith(CP_HOOK_PREFIXES)]
    if not cp_before:
        return []
    # diffusers' remove_hook is only safe for the outermost hook (removing an inner one re-links the next
    # hook's ``forward``, which bypasses a hook that defines ``new_forward``, like ours): so take the hooks
    # off from the outside in, then put them back with the CP hooks last.
    tail = order[cp_before[0]:]
    hooks = {name: registry.hooks[name] for name in tail}
    for name in reversed(tail):
        registry.remove_hook(name, recurse=False)
    moved = [name for name in tail if name.startswith(CP_HOOK_PREFIXES)]
    for name in [n for n in tail if n not in moved] + moved:
        registry.register_hook(hooks[name], name)
    return moved
