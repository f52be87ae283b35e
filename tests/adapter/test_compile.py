"""torch.compile and the adapter: the block hooks trace under fullgraph=True, compile once per execution mode,
and give what the eager cached run gives, on tiny Wan, CogVideoX, LTX and FLUX (CPU backends "eager"/"aot_eager")."""

from __future__ import annotations

import pytest
import torch
from conftest import (
    RowRule,
    cog_kwargs,
    flat_profile,
    flux_kwargs,
    ltx_kwargs,
    tiny_cogvideox,
    tiny_flux,
    tiny_ltx,
    tiny_wan,
    wan_kwargs,
)
from torch._dynamo.backends.registry import lookup_backend

import sencache
from sencache import SenCacheConfig
from sencache.core.rules import FixedConfig, MagCacheConfig, TeaCacheConfig

STEPS = 8


class CountingBackend:
    """A torch.compile backend that counts the graphs dynamo hands it (one per compile or recompile)."""

    def __init__(self, name: str):
        self.inner = lookup_backend(name)
        self.graphs = 0

    def __call__(self, gm, example_inputs):
        self.graphs += 1
        return self.inner(gm, example_inputs)


def wan():
    return tiny_wan(num_layers=4), {"prompt": "a red circle moving left", **wan_kwargs(steps=STEPS)}, \
        "WanTransformer3DModel"


def cogvideox(batch=1):
    return tiny_cogvideox(), cog_kwargs(batch=batch, steps=STEPS), "CogVideoXTransformer3DModel"


def ltx():
    return tiny_ltx(), ltx_kwargs(steps=STEPS), "LTXVideoTransformer3DModel"


def compile_blocks(pipe, backend, fullgraph=True):
    """Regional compilation as users run it: diffusers' compile_repeated_blocks where the model declares its
    repeated blocks, else every block of the stack by hand (CogVideoX has no _repeated_blocks)."""
    transformer = pipe.transformer
    torch._dynamo.reset()
    if getattr(transformer, "_repeated_blocks", None):
        transformer.compile_repeated_blocks(fullgraph=fullgraph, backend=backend)
    else:
        for block in transformer.transformer_blocks:
            block.compile(fullgraph=fullgraph, backend=backend)


def generate(pipe, kwargs):
    out = pipe(generator=torch.Generator().manual_seed(0), **kwargs)
    return out.images if hasattr(out, "images") else out.frames


def eager_then_compiled(pipe, kwargs, config, backend, order="before", fullgraph=True):
    """(eager cached output, its computed steps), then the same under compile, twice, with the graph counts."""
    session = sencache.enable(pipe, config)
    eager = generate(pipe, kwargs)
    eager_pattern = [session.trace.computed_steps(s) for s in range(kwargs.get("batch", 1))]
    sencache.disable(pipe)
    if order == "before":
        session = sencache.enable(pipe, config)
        compile_blocks(pipe, backend, fullgraph)
    else:
        compile_blocks(pipe, backend, fullgraph)
        session = sencache.enable(pipe, config)
    first = generate(pipe, kwargs)
    graphs_first = backend.graphs
    second = generate(pipe, kwargs)
    pattern = [session.trace.computed_steps(s) for s in range(kwargs.get("batch", 1))]
    return eager, eager_pattern, first, second, pattern, session, graphs_first


def sencache_config(cls, **kw):
    # eps picked so that the tiny models skip some steps and compute others (both modes are traced)
    return SenCacheConfig(flat_profile(cls, jx=1.0, jt=0.0005), eps=0.3, **kw)


@pytest.mark.parametrize("order", ["before", "after"])
def test_wan_regional_fullgraph_equals_eager_and_compiles_once_per_mode(order):
    pipe, kwargs, cls = wan()
    backend = CountingBackend("eager")
    eager, eager_pattern, first, second, pattern, session, graphs = eager_then_compiled(
        pipe, kwargs, sencache_config(cls, forecast="linear"), backend, order)
    steps = session.trace.computed_steps(0)
    assert 1 < len(steps) < STEPS  # both modes ran
    assert pattern == eager_pattern
    assert torch.equal(first, eager) and torch.equal(second, eager)
    # head, middle and tail blocks in "full" and "skip" mode: at most six graphs, whatever the depth
    assert 1 <= graphs <= 6
    assert backend.graphs == graphs  # the second generation compiled nothing


def test_wan_aot_eager_backend_matches_eager():
    pipe, kwargs, cls = wan()
    backend = CountingBackend("aot_eager")
    eager, eager_pattern, first, second, pattern, _, graphs = eager_then_compiled(
        pipe, kwargs, sencache_config(cls), backend)
    assert pattern == eager_pattern
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert backend.graphs == graphs <= 6


@pytest.mark.parametrize("backend_name", ["eager", "aot_eager"])
def test_cogvideox_blocks_compiled_by_hand_with_per_sample_subsets(backend_name):
    pipe, kwargs, _ = cogvideox(batch=2)
    backend = CountingBackend(backend_name)
    eager, _, first, second, _, session, graphs = eager_then_compiled(pipe, kwargs, RowRule(rows=(0,)), backend)
    # rows: [uncond s0, uncond s1, cond s0, cond s1]; sample 0 skipped the odd steps, sample 1 none
    assert session.trace.computed_steps(0) == list(range(0, STEPS, 2))
    assert session.trace.computed_steps(1) == list(range(STEPS))
    torch.testing.assert_close(first, eager, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert backend.graphs == graphs  # no recompilation in the second generation


def test_ltx_regional_fullgraph_equals_eager():
    pipe, kwargs, cls = ltx()
    backend = CountingBackend("eager")
    eager, eager_pattern, first, second, pattern, session, graphs = eager_then_compiled(
        pipe, kwargs, sencache_config(cls), backend, order="after")
    assert 1 < len(session.trace.computed_steps(0)) < STEPS
    assert pattern == eager_pattern
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert backend.graphs == graphs <= 6


@pytest.mark.parametrize("config", [MagCacheConfig(ratios=[1.0] * STEPS, threshold=10.0, max_skip=2),
                                    FixedConfig(interval=2)],
                         ids=["magcache", "fixed"])
def test_baseline_rules_trace_under_fullgraph(config):
    pipe, kwargs, _ = wan()
    backend = CountingBackend("eager")
    eager, eager_pattern, first, _, pattern, _, graphs = eager_then_compiled(pipe, kwargs, config, backend)
    assert pattern == eager_pattern and len(pattern[0]) < STEPS
    assert torch.equal(first, eager)
    assert backend.graphs == graphs


def test_teacache_needs_the_first_blocks_modulation_so_it_compiles_with_graph_breaks():
    pipe, kwargs, _ = wan()
    backend = CountingBackend("eager")
    eager, eager_pattern, first, second, pattern, _, graphs = eager_then_compiled(
        pipe, kwargs, TeaCacheConfig(threshold=10.0, final_steps=1), backend, fullgraph=False)
    assert pattern == eager_pattern and len(pattern[0]) < STEPS
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert backend.graphs == graphs


def test_whole_transformer_compiled_without_fullgraph():
    pipe, kwargs, cls = wan()
    config = sencache_config(cls)
    session = sencache.enable(pipe, config)
    eager = generate(pipe, kwargs)
    eager_steps = session.trace.computed_steps(0)
    backend = CountingBackend("eager")
    torch._dynamo.reset()
    pipe.transformer = torch.compile(pipe.transformer, backend=backend)
    first = generate(pipe, kwargs)
    graphs = backend.graphs
    second = generate(pipe, kwargs)
    assert session.trace.computed_steps(0) == eager_steps
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert backend.graphs == graphs <= 4  # one graph per mode; the adapter's bookkeeping is never traced


def test_flux_two_lists_regional_fullgraph_equals_eager():
    """FLUX declares both block classes repeated: each list compiles under fullgraph=True with the hooks on it."""
    pipe, kwargs, cls = tiny_flux(), flux_kwargs(steps=STEPS), "FluxTransformer2DModel"
    assert set(pipe.transformer._repeated_blocks) == {"FluxTransformerBlock", "FluxSingleTransformerBlock"}
    backend = CountingBackend("eager")
    eager, eager_pattern, first, second, pattern, session, graphs = eager_then_compiled(
        pipe, kwargs, sencache_config(cls), backend)
    assert 1 < len(session.trace.computed_steps(0)) < STEPS
    assert pattern == eager_pattern
    assert torch.equal(first, eager) and torch.equal(second, eager)
    assert backend.graphs == graphs  # the second generation compiled nothing
