"""Transformers with two block lists run back to back (FLUX, HunyuanVideo): sencache skips both as one stack.

Each case is checked against plain torch hooks the adapter does not know about, one on every block list."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import (
    RowRule,
    expected_max_reuse_pattern,
    flat_profile,
    flux_kwargs,
    hunyuan_kwargs,
    tiny_flux,
    tiny_hunyuan,
)

import sencache
from sencache import SenCacheConfig, UnsupportedModelError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

CASES = {
    "flux": (tiny_flux, flux_kwargs, "FluxTransformer2DModel"),
    "hunyuanvideo": (tiny_hunyuan, hunyuan_kwargs, "HunyuanVideoTransformer3DModel"),
}
LISTS = ("transformer_blocks", "single_transformer_blocks")


def output(pipe, kwargs, seed=0, **extra):
    out = pipe(generator=torch.Generator().manual_seed(seed), **kwargs, **extra)
    return out.images if hasattr(out, "images") else out.frames


class ListCounter:
    """Counts the real runs of the first and the last block of each block list (a pre-hook on a linear inside)."""

    def __init__(self, transformer):
        self.calls: dict[str, int] = {}
        self.handles = []
        for attr in LISTS:
            blocks = getattr(transformer, attr)
            for where, block in (("first", blocks[0]), ("last", blocks[-1])):
                key = f"{attr}[{where}]"
                self.calls[key] = 0
                linear = next(m for m in block.modules() if isinstance(m, torch.nn.Linear))
                self.handles.append(linear.register_forward_pre_hook(lambda m, a, key=key: self._count(key)))

    def _count(self, key):
        self.calls[key] += 1

    def remove(self):
        for h in self.handles:
            h.remove()


@pytest.mark.parametrize("name", list(CASES))
def test_two_lists_are_found_in_forward_order(name):
    build, _, _ = CASES[name]
    pipe = build()
    stack = sencache.enable(pipe, sencache.FixedConfig(interval=2)).stack
    t = pipe.transformer
    assert stack.names == LISTS
    assert stack.blocks == [*t.transformer_blocks, *t.single_transformer_blocks]
    assert all(layout.encoder_index is not None for layout in stack.layouts)  # both streams run through both lists
    sencache.disable(pipe)


@pytest.mark.parametrize("name", list(CASES))
def test_eps_zero_is_bit_exact_and_disable_restores(name):
    build, kwargs_for, cls = CASES[name]
    pipe = build()
    kwargs = kwargs_for(steps=6)
    reference = output(pipe, kwargs)
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(cls), eps=0.0, max_reuse=3))
    assert torch.equal(output(pipe, kwargs), reference)
    assert cache.summary()["reused"] == 0
    sencache.enable(pipe, SenCacheConfig(flat_profile(cls), eps=math.inf, max_reuse=3))
    assert not torch.equal(output(pipe, kwargs), reference)  # skipping both lists really changes the output
    sencache.disable(pipe)
    assert sencache.active_session(pipe) is None
    assert torch.equal(output(pipe, kwargs), reference)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("max_reuse,final_steps", [(1, 0), (3, 1)])
def test_infinite_eps_skips_both_lists_in_the_exact_pattern(name, max_reuse, final_steps):
    build, kwargs_for, cls = CASES[name]
    pipe = build()
    steps = 9
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(cls), eps=math.inf, max_reuse=max_reuse,
                                                 final_steps=final_steps))
    counter = ListCounter(pipe.transformer)
    output(pipe, kwargs_for(steps=steps))
    counter.remove()
    pattern = expected_max_reuse_pattern(steps, max_reuse, final_steps)
    assert cache.trace.computed_steps(0) == [s for s, c in enumerate(pattern) if c]
    assert cache.summary()["nfe"] == sum(pattern) < steps
    # every block of both lists ran in exactly the computed calls, none in the reused ones
    assert set(counter.calls.values()) == {cache.summary()["computed"]}
    # the rule and the trace see scheduler timesteps, also where the transformer gets t / 1000 (FLUX)
    grid = pipe.scheduler.timesteps.tolist()
    assert [r.timestep for r in cache.trace.records] == pytest.approx(grid, rel=1e-5)


@pytest.mark.parametrize("name", list(CASES))
def test_rows_that_disagree_run_both_lists_for_the_computing_rows_only(name):
    build, kwargs_for, _ = CASES[name]
    pipe = build()
    kwargs = kwargs_for(batch=2, steps=6)
    uncached = output(pipe, kwargs)
    sencache.enable(pipe, RowRule(rows=(0, 1)))
    both_reuse = output(pipe, kwargs)
    cache = sencache.enable(pipe, RowRule(rows=(0,)))
    counter = ListCounter(pipe.transformer)
    mixed = output(pipe, kwargs)
    counter.remove()
    sencache.disable(pipe)
    assert not torch.allclose(both_reuse[1], uncached[1])  # reusing changes a row, so the comparison can fail
    torch.testing.assert_close(mixed[0], both_reuse[0], rtol=1e-4, atol=1e-5)  # row 0 reused where it did alone
    torch.testing.assert_close(mixed[1], uncached[1], rtol=1e-4, atol=1e-5)  # row 1 ran every step
    assert set(counter.calls.values()) == {6}  # the lists ran every step, for the computing rows
    assert cache.trace.computed_steps(0) == [0, 2, 4] and cache.trace.computed_steps(1) == list(range(6))


def test_a_second_list_of_an_unknown_model_is_refused_by_name():
    from diffusers import Flux2Transformer2DModel

    torch.manual_seed(0)
    model = Flux2Transformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                    attention_head_dim=8, num_attention_heads=2, joint_attention_dim=16,
                                    timestep_guidance_channels=8, axes_dims_rope=(2, 2, 2, 2))
    with pytest.raises(UnsupportedModelError, match="second block list 'single_transformer_blocks'"):
        sencache.enable(model, sencache.FixedConfig(interval=2), num_inference_steps=4)
