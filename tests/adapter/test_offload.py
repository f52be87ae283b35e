"""sencache next to diffusers' offloading, as far as a CPU can show it: group offloading (block and leaf level,
with the CPU as both onload and offload device, so its hooks run but move nothing) and
``enable_model_cpu_offload(device="cpu")``. What it cannot show: the transfers themselves, their overlap with
compute (``use_stream=True``) and the memory saved, which need a GPU."""

from __future__ import annotations

import pytest
import torch
from conftest import BlockCounter, flat_profile, tiny_wan, wan_kwargs

import sencache

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

STEPS = 6
CPU = torch.device("cpu")
OFFLOADS = {
    "group, block level": lambda pipe: pipe.transformer.enable_group_offload(
        onload_device=CPU, offload_device=CPU, offload_type="block_level", num_blocks_per_group=1),
    "group, leaf level": lambda pipe: pipe.transformer.enable_group_offload(
        onload_device=CPU, offload_device=CPU, offload_type="leaf_level"),
    "model cpu offload": lambda pipe: pipe.enable_model_cpu_offload(device="cpu"),
}


def generate(pipe):
    return pipe(prompt="a red circle moving left", generator=torch.Generator().manual_seed(0),
                **wan_kwargs(steps=STEPS)).frames


@pytest.fixture(scope="module")
def reference():
    return generate(tiny_wan())


@pytest.mark.parametrize("offload", sorted(OFFLOADS))
@pytest.mark.parametrize("sencache_first", [False, True])
def test_sencache_with_offloading(offload, sencache_first, reference):
    pipe = tiny_wan()
    profile = flat_profile("WanTransformer3DModel")
    exact = sencache.SenCacheConfig(profile, eps=0.0)
    if sencache_first:
        sencache.enable(pipe, exact)
        OFFLOADS[offload](pipe)
    else:
        OFFLOADS[offload](pipe)
        sencache.enable(pipe, exact)
    assert torch.equal(generate(pipe), reference)  # ε = 0: every step computes, bit-exact through the offload hooks
    sencache.disable(pipe)

    counter = BlockCounter(pipe.transformer, "blocks")
    session = sencache.enable(pipe, sencache.SenCacheConfig(profile, eps=1e9, max_reuse=1))
    frames = generate(pipe)
    nfe = session.summary()["nfe"]
    assert nfe < STEPS and torch.isfinite(frames).all()
    assert counter.calls == 2 * nfe  # the blocks really ran only on computed steps (cond and uncond calls)
    sencache.disable(pipe)
    counter.remove()
    assert torch.equal(generate(pipe), reference)  # disable() leaves the offloaded pipeline as it was
