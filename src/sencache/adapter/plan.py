"""What the block hooks of one transformer call do, decided before the block stack runs.

This is the contract that keeps the block hooks traceable by ``torch.compile`` (regional compilation with
``compile_repeated_blocks(fullgraph=True)``, ``block.compile()``, or the whole transformer): everything
data-dependent — the rule's decision, host syncs, per-sample masks, forecasts, offloaded copies — happens in
the transformer-level hook, eagerly, and leaves one :class:`StackPlan` behind. A block hook then only reads
the plan's Python fields (``active``, ``mode``: constants dynamo guards on, so one graph per execution mode)
and its tensors (graph inputs), and writes back tensors (the stack's input and output) for the transformer
hook to turn into residuals after the call. The plan object lives as long as the session, so guards on it
hold from call to call.
"""

from __future__ import annotations

import torch


class StackSkipped(Exception):
    """Raised inside the first block when a decision taken there says no row runs the stack."""


class StackPlan:
    """One call's instructions for the block hooks, and what they hand back.

    Set by the transformer hook before the stack:
        active: False outside a hooked transformer call (the block hooks then behave like plain blocks).
        mode: ``"full"`` (every row runs the stack), ``"skip"`` (no row does) or ``"subset"`` (some rows do).
        rows: (R,) long on the stack's device, the computing rows in ``"subset"`` mode.
        reused: (B, ...) what the reusing rows add to the first block's input (the cached residual, held or
            forecast), on the stack's device; None in ``"full"`` mode.
        reused_encoder: the same for the text stream of blocks that return it, or None.
        decide_at_head: the rule reads the first block's modulation, so the decision is taken there (a graph
            break under ``torch.compile``; only TeaCache does this).
        decide_in_attention: the rule reads the first block's modulated input, so the decision is taken when the
            first block's first attention layer is called (eager only; the paper's SeaCache does this). When every
            row reuses, the rest of that block is abandoned (:class:`StackSkipped`).
        keep_modulation: store the first block's modulation for observers.

    Set by the block hooks, read by the transformer hook after the stack:
        head_hidden, head_encoder: the first block's input streams.
        out_hidden, out_encoder: the last block's output streams for the computing rows (None if skipped).
        modulation: the first block's ``temb`` when kept.
    """

    def __init__(self) -> None:
        self.active = False
        self.mode = "full"
        self.decide_at_head = False
        self.decide_in_attention = False
        self.keep_modulation = False
        self.clear()

    def clear(self) -> None:
        """Drop every tensor reference (between calls nothing is held here)."""
        self.rows: torch.Tensor | None = None
        self.reused: torch.Tensor | None = None
        self.reused_encoder: torch.Tensor | None = None
        self.head_hidden: torch.Tensor | None = None
        self.head_encoder: torch.Tensor | None = None
        self.out_hidden: torch.Tensor | None = None
        self.out_encoder: torch.Tensor | None = None
        self.modulation: torch.Tensor | None = None
