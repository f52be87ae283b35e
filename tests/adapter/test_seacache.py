"""SeaCache through the sencache adapter: the same decisions and outputs as diffusers' own SeaCache on Wan
text-to-video, and a working cache on every other architecture (CogVideoX, LTX, FLUX, HunyuanVideo, Wan 2.2)."""

from __future__ import annotations

import diffusers
import pytest
import torch
from conftest import (
    cog_kwargs,
    flux_kwargs,
    hunyuan_kwargs,
    ltx_kwargs,
    tiny_cogvideox,
    tiny_flux,
    tiny_hunyuan,
    tiny_ltx,
    tiny_wan,
    wan_kwargs,
)

from sencache.adapter import hooks
from sencache.adapter.grid import latent_grid, token_grid
from sencache.core.rules import SeaCacheConfig
from sencache.core.rules.sea_filter import flow_sigma, sea_filter
from sencache.methods import MethodContext, get_method

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

PROMPT = "a red circle moving left"


def _wan_run(pipe, steps, **extra):
    g = torch.Generator().manual_seed(3)
    return pipe(PROMPT, generator=g, **{**wan_kwargs(steps), **extra}).frames


def _diffusers_schedule(pipe, threshold, order, steps):
    """Which steps ran the last block in the cond branch under diffusers' SeaCache, and its output."""
    ran = []
    handle = pipe.transformer.blocks[-1].ffn.register_forward_pre_hook(lambda m, a: ran.append(True))
    calls = []
    top = pipe.transformer.register_forward_pre_hook(lambda m, a: calls.append(len(ran)))
    pipe.transformer.enable_cache(diffusers.SeaCacheConfig(threshold=threshold, residual_order=order))
    try:
        out = _wan_run(pipe, steps)
    finally:
        pipe.transformer.disable_cache()
        handle.remove()
        top.remove()
    calls.append(len(ran))
    computed = [calls[i + 1] > calls[i] for i in range(len(calls) - 1)]
    return computed[0::2], out  # cond calls


@pytest.mark.parametrize("order", [1, 0])
@pytest.mark.parametrize("threshold", [0.25, 0.6, 10.0])
def test_seacache_makes_diffusers_decisions_and_outputs_on_wan(order, threshold):
    pipe = tiny_wan()
    steps = 12
    expected, want = _diffusers_schedule(pipe, threshold, order, steps)
    session = hooks.enable(pipe, SeaCacheConfig(threshold=threshold, residual_order=order))
    try:
        got = _wan_run(pipe, steps)
        schedule = [r.computed for r in session.trace.records if r.branch == "cond"]
    finally:
        hooks.disable(pipe)
    assert schedule == expected
    if threshold >= 10.0:  # the bound is never reached: diffusers' caps (first, last, 2 in a row) decide alone
        assert schedule == [True, False, False, True, False, False, True, False, False, True, False, True]
    assert not all(schedule)
    assert torch.allclose(got, want, atol=1e-6, rtol=0)


def test_sea_filter_matches_diffusers_filter():
    from diffusers.hooks.sea_cache import _apply_sea_filter

    x = torch.randn(2, 3, 6, 5, 4, generator=torch.Generator().manual_seed(0))
    for sigma in (0.0, 0.3, 0.97):
        ours = sea_filter(x, sigma)
        for i in range(2):
            assert torch.allclose(ours[i], _apply_sea_filter(x[i], sigma, 3.0), atol=1e-6)


def test_flow_sigma_keeps_the_noise_to_signal_ratio():
    for a in (0.99, 0.5, 0.01):
        s = flow_sigma(a)
        assert s / (1 - s) == pytest.approx((1 - a) ** 0.5 / a ** 0.5)


SYSTEMS = {
    "cogvideox": (tiny_cogvideox, cog_kwargs),
    "ltx": (tiny_ltx, ltx_kwargs),
    "flux": (tiny_flux, flux_kwargs),
    "hunyuan": (tiny_hunyuan, hunyuan_kwargs),
}


@pytest.mark.parametrize("system", list(SYSTEMS))
@pytest.mark.parametrize("paper", [False, True])
def test_seacache_caches_every_architecture(system, paper):
    build, kwargs = SYSTEMS[system]
    pipe = build()

    def run():
        out = pipe(**kwargs(steps=10), generator=torch.Generator().manual_seed(5))
        return out.images if system == "flux" else out.frames

    plain = run()
    config = SeaCacheConfig.paper(threshold=10.0) if paper else SeaCacheConfig(threshold=10.0)
    session = hooks.enable(pipe, config)
    try:
        cached = run()
        summary = session.summary()
        schedule = [r.computed for r in session.trace.records if r.sample == 0]
        zero = hooks.enable(pipe, SeaCacheConfig.paper(threshold=0.0) if paper else SeaCacheConfig(threshold=0.0))
        exact = run()
        assert zero.summary()["nfe"] == 10
    finally:
        hooks.disable(pipe)
    # unbounded threshold: step 0 and the last compute, at most 2 reuses in a row
    assert schedule == [True, False, False, True, False, False, True, False, False, True]
    assert summary["nfe"] == 4
    assert torch.isfinite(cached).all() and not torch.equal(cached, plain)
    assert torch.equal(exact, plain)


def test_grids_put_every_layout_on_frames_height_width():
    wan = tiny_wan().transformer
    latent = torch.randn(2, 4, 3, 8, 6)
    assert tuple(latent_grid(wan, latent, lambda n: None).shape) == (2, 3, 8, 6, 4)
    tokens = torch.randn(2, 3 * 8 * 6, 32)  # the demo Wan's patch is 1x1x1
    assert tuple(token_grid(wan, latent_grid(wan, latent, lambda n: None), tokens).shape) == (2, 3, 8, 6, 32)
    cog = tiny_cogvideox().transformer  # (B, F, C, H, W), patch 2
    latent = torch.randn(2, 3, 4, 8, 8)
    grid = latent_grid(cog, latent, lambda n: None)
    assert tuple(grid.shape) == (2, 3, 8, 8, 4) and torch.equal(grid[1, 2, 5, 7], latent[1, 2, :, 5, 7])
    assert tuple(token_grid(cog, grid, torch.randn(2, 3 * 4 * 4, 16)).shape) == (2, 3, 4, 4, 16)
    ltx = tiny_ltx().transformer
    packed = torch.arange(2 * 2 * 3 * 4 * 8, dtype=torch.float32).reshape(2, 24, 8)
    args = {"num_frames": 2, "height": 3, "width": 4}
    grid = latent_grid(ltx, packed, args.get)
    assert tuple(grid.shape) == (2, 2, 3, 4, 8) and torch.equal(grid[1, 1, 2, 3], packed[1, 23])


def test_seacache_methods_run_by_name_and_record_their_settings():
    pipe = tiny_ltx()
    ctx = MethodContext(num_inference_steps=8)
    for name in ("seacache", "seacache-paper"):
        spec = get_method(name)
        assert spec.unavailable(ctx, pipe) is None
        handle = spec.apply(pipe, 10.0, ctx)
        try:
            pipe(**ltx_kwargs(steps=8))
            stats = handle.stats()
        finally:
            handle.remove()
        assert stats["nfe"] == 4  # 0, 3, 6 and the last step
        setting = spec.setting(0.3, ctx)
        assert setting["signal"] == ("modulated" if name == "seacache-paper" else "latent")
        assert setting["residual_order"] == (0 if name == "seacache-paper" else 1)


def test_noise_level_reads_each_scheduler_family():
    from diffusers import CogVideoXDDIMScheduler, FlowMatchEulerDiscreteScheduler

    from sencache.adapter.noise_level import noise_level

    flow = FlowMatchEulerDiscreteScheduler()
    flow.set_timesteps(10)
    assert noise_level(flow, None, 3, float(flow.timesteps[3])) == pytest.approx(float(flow.sigmas[3]))
    assert noise_level(flow, 0.25, 3, 0.0) == 0.25  # the pipeline's own sigma (Wan's cache context) wins
    ddim = CogVideoXDDIMScheduler()
    ddim.set_timesteps(10)
    t = int(ddim.timesteps[2])
    assert noise_level(ddim, None, 2, float(t)) == pytest.approx(flow_sigma(float(ddim.alphas_cumprod[t])))
    assert noise_level(None, None, 0, 500.0) == 0.5
