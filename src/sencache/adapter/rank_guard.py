"""Rank-consistent decisions under context parallelism: a sample reuses only if every rank's rule said so.

Each rank's rule decides on its own slice's statistics (the RMS is already global, see
:mod:`sencache.adapter.parallel`), yet float reductions can still differ in the last bit; an all-reduce MIN of the
reuse mask makes the verdict the same on every rank, and the trace says how often that turned a reuse into a refresh.
"""

from __future__ import annotations

import logging

from sencache.adapter.parallel import DecisionSync
from sencache.adapter.trace import Trace
from sencache.core.rules.base import Decision

logger = logging.getLogger("sencache")


class RankGuard:
    """Agrees each step's reuse mask across ranks and keeps one trace note of what it changed this generation."""

    def __init__(self, sync: DecisionSync, trace: Trace):
        self.sync, self.trace = sync, trace
        self.reset()

    def reset(self) -> None:
        """A new generation: nothing changed yet."""
        self.changes = 0
        self.steps: list[int] = []
        self.note: int | None = None  # index of the note in trace.notes

    def apply(self, decision: Decision, step: int) -> Decision:
        """The decision with reuse only where every rank reuses (its reasons say ``sync_refresh`` where not)."""
        local = decision.reuse.detach().cpu().bool()
        agreed = self.sync.reuse_all(local)
        changed = local & ~agreed
        if not bool(changed.any()):
            return decision
        reasons = list(decision.reason or [("reuse" if r else "refresh") for r in local.tolist()])
        reasons = ["sync_refresh" if c else why for c, why in zip(changed.tolist(), reasons)]
        self.changes += int(changed.sum())
        self.steps.append(step)
        msg = (f"sencache: the rank-consistency guard refreshed {self.changes} sample-step(s) this rank's rule "
               f"would have reused (steps {self.steps}): another rank refreshed there")
        if self.note is None:
            self.note = len(self.trace.notes)
            self.trace.notes.append(msg)
            logger.info(msg)
        else:
            self.trace.notes[self.note] = msg
        return Decision(reuse=agreed, score=decision.score, eps=decision.eps, reason=reasons, order=decision.order,
                        predicted=decision.predicted)
