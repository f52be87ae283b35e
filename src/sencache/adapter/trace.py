"""The per-call record of every caching decision of the last pipeline call, and its summary."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path


@dataclass
class TraceRecord:
    """One sample's decision at one transformer call (see the field comments)."""
    call: int  # index of the transformer call within the generation
    step: int  # denoising step
    timestep: float  # in the transformer's units
    branch: str  # cache context: "cond", "uncond", "cond_uncond" or "default"
    sample: int  # row of the batch
    computed: bool  # True: the block stack ran for this row; False: its cached residual was reused
    score: float | None  # the rule's error estimate (SenCache: predicted change S)
    eps: float | None  # threshold in force at this step
    reuse_run: int  # consecutive reused steps of this row, this one included
    reason: str = ""  # why: first, final, reuse, above_eps, max_reuse, no_residual, ...
    forecast: int = 0  # what a reused row got: 0 the held residual, 1 the linear forecast
    expert: str = "transformer"  # the denoising transformer that served the call (Wan 2.2: or "transformer_2")
    predicted_error: float | None = None  # clip error (frame RMS) the row's reuses so far predict (closed loop)


@dataclass
class Trace:
    """Every decision of the last generation, one :class:`TraceRecord` per call and sample, with notes."""
    method: str = ""
    num_steps: int | None = None
    records: list[TraceRecord] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stack_runs: int = 0  # calls in which the block stack ran (for any row)

    def clear(self, method: str, num_steps: int | None) -> None:
        """Start a new generation's trace."""
        self.method, self.num_steps = method, num_steps
        self.records, self.notes, self.stack_runs = [], [], 0

    def __len__(self) -> int:
        return len(self.records)

    def computed_steps(self, sample: int = 0) -> list[int]:
        """Steps in which the block stack ran for ``sample``."""
        return sorted({r.step for r in self.records if r.sample == sample and r.computed})

    def predicted_errors(self) -> list[float]:
        """Per sample, the clip error (frame RMS, frames in [0, 1]) its reuses predict at the end of the generation
        (rules that predict one; empty otherwise)."""
        last: dict[int, float] = {}
        for r in self.records:
            if r.predicted_error is not None:
                last[r.sample] = r.predicted_error
        return [last[s] for s in sorted(last)]

    def summary(self) -> dict:
        """Counts of the last generation: calls, computed, reused, steps, nfe (steps computed for any
        sample), nfe per sample, skipped steps and notes; with two experts, ``experts``: each one's steps and nfe.
        """
        calls = sorted({r.call for r in self.records})
        steps = sorted({r.step for r in self.records})
        samples = sorted({r.sample for r in self.records})
        computed_steps = {r.step for r in self.records if r.computed}
        per_sample = {s: len(self.computed_steps(s)) for s in samples}
        out = {
            "method": self.method,
            "calls": len(calls),
            "computed": self.stack_runs,
            "reused": len(calls) - self.stack_runs,
            "steps": len(steps),
            "nfe": len(computed_steps),
            "nfe_per_sample": [per_sample[s] for s in samples],
            "skipped_steps": [s for s in steps if s not in computed_steps],
            "notes": list(self.notes),
        }
        predicted = self.predicted_errors()
        if predicted:  # the closed loop's forecast of each clip's quality (None: it reused nothing)
            out["predicted_psnr_per_sample"] = [round(-20.0 * math.log10(e), 2) if e > 0 else None
                                                for e in predicted]
        experts = list(dict.fromkeys(r.expert for r in self.records))
        if len(experts) > 1:  # which expert served which steps, and what each computed
            out["experts"] = {e: {"steps": sorted({r.step for r in self.records if r.expert == e}),
                                  "nfe": len({r.step for r in self.records if r.expert == e and r.computed})}
                              for e in experts}
        return out

    def to_dict(self) -> dict:
        """The summary and every record, JSON-able."""
        return {"summary": self.summary(), "records": [asdict(r) for r in self.records]}

    def save(self, path) -> Path:
        """Write :meth:`to_dict` as JSON to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_dict(), indent=1))
        return path
