"""Shared by the closed-loop tests: a tiny Wan pipeline's 12-step grid profile, (conftest's ``loop_calibrated``: it
calibrated for the loop on two prompts)."""

from __future__ import annotations

from conftest import tiny_wan

import sencache
from sencache.demo_model.build import TEXT_LEN, pipeline_size_kwargs

STEPS = 12
PROMPTS = ["a red circle moving left", "a blue square moving right"]


def call_kwargs() -> dict:
    return dict(max_sequence_length=TEXT_LEN, **pipeline_size_kwargs(5, 16, 16))


def grid_profile():
    """A profile on a 12-step grid of the tiny pipeline's timesteps (flat sensitivities, a curvature curve)."""
    pipe = tiny_wan()
    pipe.scheduler.set_timesteps(STEPS)
    ts = [float(t) for t in pipe.scheduler.timesteps]
    n = len(ts)
    return sencache.SensitivityProfile(ts, [1.0] * n, [0.001] * n, curves={"jtt": [1e-5] * n},
                                       model_class="WanTransformer3DModel")
