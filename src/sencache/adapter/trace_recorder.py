"""Writing the trace: one :class:`~sencache.adapter.trace.TraceRecord` per sample and call, and the notes a user
needs when a generation went differently than asked (nothing reused, an expert took over)."""

from __future__ import annotations

import logging
import math

import torch

from sencache.adapter.trace import Trace, TraceRecord
from sencache.core.rules.base import Decision
from sencache.toolbox.numbers import finite_or_none

logger = logging.getLogger("sencache")


class TraceRecorder:
    """Fills ``trace`` call by call for a session whose rule is ``method`` (``final_steps``: steps that always
    compute, to explain a generation that reused nothing)."""

    def __init__(self, trace: Trace, method: str, final_steps: int = 0):
        self.trace, self.method, self.final_steps = trace, method, final_steps
        self.call_index = 0  # transformer calls of this generation so far
        self.warned_no_reuse = False

    def start(self, num_steps: int, note: str | None = None) -> None:
        """A new generation: an empty trace (with ``note``, if any)."""
        self.trace.clear(self.method, num_steps)
        self.call_index, self.warned_no_reuse = 0, False
        if note:
            self.trace.notes.append(note)

    def note(self, msg: str) -> None:
        """Add a note to this generation's trace."""
        self.trace.notes.append(msg)

    def record(self, step: int, branch: str, expert: str, decision: Decision, computed: torch.Tensor,
               times: torch.Tensor, runs: torch.Tensor, reasons: list[str]) -> list[TraceRecord]:
        """One row per sample of this call; returns them. One conversion per tensor, then plain Python per row
        (the timesteps are the host copy: reading a device tensor per row would sync the GPU once per row)."""
        batch = computed.shape[0]
        done_rows, t_rows, run_rows = computed.tolist(), times.tolist(), runs.tolist()
        scores = decision.score.tolist() if decision.score is not None else [None] * batch
        orders = decision.order.tolist() if decision.order is not None else [0] * batch
        predicted = decision.predicted.tolist() if decision.predicted is not None else [None] * batch
        eps = None if decision.eps is None or math.isnan(decision.eps) else float(decision.eps)
        rows = [TraceRecord(
            call=self.call_index, step=step, timestep=float(t_rows[row]), branch=branch, sample=row,
            computed=bool(done_rows[row]), score=finite_or_none(scores[row]), eps=eps,
            reuse_run=0 if done_rows[row] else int(run_rows[row]), reason=reasons[row],
            forecast=0 if done_rows[row] else int(orders[row]), expert=expert,
            predicted_error=finite_or_none(predicted[row]),
        ) for row in range(batch)]
        self.trace.records.extend(rows)
        self.call_index += 1
        return rows

    def note_if_nothing_reused(self, num_steps: int | None) -> None:
        """At the last step: say why a generation that reused nothing did so (once per generation)."""
        records = self.trace.records
        if self.warned_no_reuse or self.method == "none" or any(not r.computed for r in records):
            return  # a rule that never reuses (recording runs) has nothing to explain
        self.warned_no_reuse = True
        # judged by the tolerance in force at each step (an ε schedule changes it along the run), not the config's
        open_ = [r for r in records if r.reason not in ("first", "final", "warmup")]
        if num_steps is not None and num_steps <= 1 + self.final_steps:
            why = f"only {num_steps} steps, and the first and final steps always compute"
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
