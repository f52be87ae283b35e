"""The call protocol's host reads: one per step under classifier-free guidance, and never a stale one."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import flat_profile, tiny_wan, wan_kwargs

import sencache
from sencache import SenCacheConfig
from sencache.adapter import call_protocol
from sencache.adapter.call_protocol import HostInputs
from sencache.errors import SenCacheError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)


def test_the_same_unchanged_tensors_are_read_once():
    latent, timestep = torch.randn(2, 4, 3), torch.tensor([500.0, 500.0])
    inputs = HostInputs()
    first = inputs.read(latent, timestep)
    assert inputs.read(latent, timestep) is first  # the uncond call of the step: no second host copy
    assert inputs.read(latent.clone(), timestep) is not first  # another tensor is read again
    latent[0, 0, 0] = math.nan  # changed in place: its version moved, so it is checked again
    assert inputs.read(latent, timestep)[2] is True
    with torch.inference_mode():  # no version counter: always read
        frozen = torch.randn(1, 2)
        t = torch.tensor([1.0])
        assert inputs.read(frozen, t) is not inputs.read(frozen, t)


def test_a_cfg_step_syncs_the_host_once(monkeypatch):
    pipe = tiny_wan()
    reads = []
    real = call_protocol.host_timesteps
    monkeypatch.setattr(call_protocol, "host_timesteps", lambda *a: reads.append(1) or real(*a))
    session = sencache.enable(pipe, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.0))
    steps = 4
    pipe("a red circle", negative_prompt="", **wan_kwargs(steps=steps, guidance=5.0))
    assert session.summary()["calls"] == 2 * steps  # cond and uncond: two transformer calls per step
    assert len(reads) == steps
    sencache.disable(pipe)


def test_a_latent_turned_non_finite_between_branches_is_refused():
    pipe = tiny_wan()
    sencache.enable(pipe, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.0))
    calls = []

    def poison(module, args, kwargs):
        calls.append(1)
        if len(calls) == 2:  # between the cond and the uncond call of the first step
            kwargs["hidden_states"].fill_(math.inf)

    handle = pipe.transformer.register_forward_pre_hook(poison, with_kwargs=True, prepend=True)
    try:
        with pytest.raises(SenCacheError, match="at step 0 holds NaN or inf"):
            pipe("a red circle", negative_prompt="", **wan_kwargs(steps=3, guidance=5.0))
    finally:
        handle.remove()
        sencache.disable(pipe)
