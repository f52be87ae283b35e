"""Wan 2.2's two experts in one pipeline: both cached by one session, one step count and trace, each expert with
its own block stack, and an empty cache (so a computed step) when the low-noise expert takes over."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from conftest import BlockCounter, expected_max_reuse_pattern, flat_profile, tiny_wan, wan_kwargs

import sencache
from sencache import ProfileError, SenCacheConfig, SensitivityProfile
from sencache.core.rules import FixedConfig, MagCacheConfig

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

CLS = "WanTransformer3DModel"
BOUNDARY = 500.0  # boundary_ratio 0.5 x 1000 training timesteps


def two_experts(scale: float = 1.1):
    """A Wan 2.2-style pipeline: the tiny Wan transformer for t >= 500, a copy with other weights below."""
    from diffusers import WanPipeline

    p = tiny_wan()
    low_noise = copy.deepcopy(p.transformer)
    with torch.no_grad():
        for weight in low_noise.parameters():
            weight.mul_(scale)
    pipe = WanPipeline(tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, scheduler=p.scheduler,
                       transformer=p.transformer, transformer_2=low_noise, boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def joined_flat_profile(**meta) -> SensitivityProfile:
    return SensitivityProfile.join_experts({"transformer": flat_profile(CLS, **meta),
                                            "transformer_2": flat_profile(CLS, **meta)}, boundary_timestep=BOUNDARY)


def run(pipe, steps=10, seed=0):
    return pipe(prompt="a red circle", generator=torch.Generator().manual_seed(seed), **wan_kwargs(steps=steps))


def low_noise_steps(pipe) -> list[int]:
    return [i for i, t in enumerate(pipe.scheduler.timesteps.tolist()) if t < BOUNDARY]


def test_eps_zero_is_bit_exact_on_both_experts_and_disable_restores():
    pipe = two_experts()
    reference = run(pipe).frames
    cache = sencache.enable(pipe, SenCacheConfig(joined_flat_profile(), eps=0.0))
    assert torch.equal(run(pipe).frames, reference)
    assert cache.summary()["reused"] == 0
    sencache.enable(pipe, SenCacheConfig(joined_flat_profile(), eps=math.inf))
    assert not torch.equal(run(pipe).frames, reference)
    sencache.disable(pipe)
    assert sencache.active_session(pipe) is None
    for module in (pipe.transformer, pipe.transformer_2):  # no hook left on either expert
        assert module._diffusers_hook.get_hook("sencache_model") is None
    assert torch.equal(run(pipe).frames, reference)


@pytest.mark.parametrize("max_reuse,final_steps", [(1, 0), (2, 1), (3, 1)])
def test_infinite_eps_caches_both_experts_and_the_switch_computes(max_reuse, final_steps):
    pipe = two_experts()
    steps = 12
    cache = sencache.enable(pipe, SenCacheConfig(joined_flat_profile(), eps=math.inf, max_reuse=max_reuse,
                                                 final_steps=final_steps))
    counters = {"transformer": BlockCounter(pipe.transformer, "blocks"),
                "transformer_2": BlockCounter(pipe.transformer_2, "blocks")}
    run(pipe, steps=steps)
    for c in counters.values():
        c.remove()
    low = low_noise_steps(pipe)
    switch = low[0]
    assert 0 < switch < steps - 1  # the grid really has both experts' steps
    # each expert follows the max_reuse pattern from its first step; the last steps compute
    high_pattern = expected_max_reuse_pattern(switch, max_reuse, 0)
    low_pattern = expected_max_reuse_pattern(steps - switch, max_reuse, final_steps)
    expected = [s for s, c in enumerate(high_pattern + low_pattern) if c]
    assert cache.trace.computed_steps(0) == expected
    summary = cache.summary()
    assert summary["steps"] == steps and summary["nfe"] == len(expected)  # one step count over both experts
    assert summary["experts"]["transformer"]["steps"] == list(range(switch))
    assert summary["experts"]["transformer_2"]["steps"] == low
    assert summary["experts"]["transformer_2"]["nfe"] == sum(low_pattern)
    for name, counter in counters.items():  # independent counts: each expert's blocks ran in its computed calls
        computed_calls = len({r.call for r in cache.trace.records if r.expert == name and r.computed})
        assert counter.calls == computed_calls > 0
    first_low = [r for r in cache.trace.records if r.step == switch]
    assert all(r.computed and r.expert == "transformer_2" for r in first_low)
    assert any("transformer_2 took over" in n for n in summary["notes"])


def test_every_generation_starts_both_experts_afresh():
    pipe = two_experts()
    config = SenCacheConfig(joined_flat_profile(), eps=math.inf, max_reuse=2)
    cache = sencache.enable(pipe, config)
    first = run(pipe, seed=0).frames
    schedule = cache.trace.computed_steps(0)
    second = run(pipe, seed=0).frames
    assert torch.equal(first, second) and cache.trace.computed_steps(0) == schedule
    sencache.disable(pipe)


def test_baseline_rules_cache_both_experts():
    pipe = two_experts()
    cache = sencache.enable(pipe, FixedConfig(interval=3))
    run(pipe, steps=12)
    experts = cache.summary()["experts"]
    assert 0 < experts["transformer"]["nfe"] < len(experts["transformer"]["steps"])
    assert 0 < experts["transformer_2"]["nfe"] < len(experts["transformer_2"]["steps"])
    sencache.disable(pipe)
    cache = sencache.enable(pipe, MagCacheConfig(ratios=[1.0] * 12, threshold=0.12, max_skip=2))
    run(pipe, steps=12)
    experts = cache.summary()["experts"]
    switch = low_noise_steps(pipe)[0]
    assert switch in cache.trace.computed_steps(0)  # the new expert's first step computes
    assert 0 < experts["transformer_2"]["nfe"] < len(experts["transformer_2"]["steps"])
    sencache.disable(pipe)


def test_profiles_name_their_experts():
    pipe = two_experts()
    with pytest.raises(ProfileError, match="transformer_2"):  # one transformer's curve for two experts: refused
        sencache.enable(pipe, SenCacheConfig(flat_profile(CLS), eps=0.1))
    assert sencache.active_session(pipe) is None
    # one profile per expert, given as a dict: joined, each expert keeping its own range
    high = SensitivityProfile([600.0, 1000.0], [2.0, 2.0], [0.01, 0.01], model_class=CLS)
    low = SensitivityProfile([0.0, 400.0], [1.0, 1.0], [0.001, 0.001], model_class=CLS)
    config = SenCacheConfig({"transformer": high, "transformer_2": low}, eps=0.1)
    assert config.profile.timesteps == [600.0, 1000.0, 0.0, 400.0]
    jx, _ = config.profile.lookup([900.0, 100.0])
    assert jx.tolist() == [2.0, 1.0]
    assert config.profile.metadata["experts"]["transformer_2"]["timesteps"] == [0.0, 400.0]
    sencache.enable(pipe, config)
    sencache.disable(pipe)
    with pytest.raises(ProfileError, match="overlap"):
        SensitivityProfile.join_experts({"transformer": flat_profile(CLS), "transformer_2": flat_profile(CLS)})
    other = flat_profile("LTXVideoTransformer3DModel")
    with pytest.raises(ProfileError, match="LTXVideoTransformer3DModel"):  # each expert is checked
        sencache.enable(pipe, SenCacheConfig(SensitivityProfile.join_experts(
            {"transformer": flat_profile(CLS), "transformer_2": other}, boundary_timestep=BOUNDARY)))


def calibrate_two(scale: float, steps: int = 12, **call):
    from sencache.calibration.calibrate import calibrate
    from sencache.demo_model.build import TEXT_LEN, pipeline_size_kwargs

    pipe = two_experts(scale)
    size = dict(max_sequence_length=TEXT_LEN, **pipeline_size_kwargs(5, 16, 16))
    profile = calibrate(pipe, ["a red circle moving left"], num_inference_steps=steps, num_samples=1, seed=3,
                        progress=False, **size, **call)
    return pipe, profile, size


def test_calibration_measures_each_expert_on_the_steps_it_serves():
    pipe, profile, size = calibrate_two(1.1)
    grid = profile.timesteps  # the pipeline's 12-step grid
    low = [k for k, t in enumerate(grid) if t < BOUNDARY]
    assert 3 <= low[0] <= len(grid) - 3  # each expert has a centred curvature window
    experts = profile.metadata["experts"]
    assert experts["transformer"]["timesteps"] == [min(grid[:low[0]]), max(grid[:low[0]])]
    assert experts["transformer_2"]["timesteps"] == [min(grid[low[0]:]), max(grid[low[0]:])]
    assert experts["transformer"]["steps"] + experts["transformer_2"]["steps"] == len(grid)
    # another low-noise expert changes the curve on its own steps only: no secant, curvature or smoothing window
    # of the high-noise expert reaches across the switch
    _, other, _ = calibrate_two(1.5)
    high = range(low[0])
    for name in ("jx", "jt"):
        mine, theirs = getattr(profile, name), getattr(other, name)
        assert [mine[k] for k in high] == [theirs[k] for k in high], name
        assert all(mine[k] != theirs[k] for k in low), name
    for curve in ("jtt", "jt_smooth"):
        assert [profile.curves[curve][k] for k in high] == [other.curves[curve][k] for k in high], curve
    # the profile caches the pipeline it was measured on, and budget mode counts the NFE over both experts
    from sencache.budget import with_target

    config = with_target(SenCacheConfig(profile), target_nfe=7)
    cache = sencache.enable(pipe, config)
    pipe(prompt="a red circle moving left", generator=torch.Generator().manual_seed(3), num_inference_steps=12,
         guidance_scale=5.0, output_type="latent", **size)
    assert set(cache.summary()["experts"]) == {"transformer", "transformer_2"}
    # the replay on the stored two-expert trajectory counted both experts' steps
    assert cache.summary()["nfe"] == round(config.budget["simulated_nfe"])
    sencache.disable(pipe)


def test_calibration_follows_the_pipelines_two_expert_trajectory():
    from sencache.calibration.secants import measure_trajectory
    from sencache.calibration.targets import target_for
    from sencache.demo_model.build import TEXT_LEN, pipeline_size_kwargs

    pipe = two_experts()
    size = dict(max_sequence_length=TEXT_LEN, **pipeline_size_kwargs(5, 16, 16))
    for call in ({}, {"guidance_scale_2": 2.0}):
        target = target_for(pipe, dict(size, guidance_scale=5.0, **call))
        sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
        target.set_timesteps(sched, 10)
        denoise, sampler_output = target.denoisers("a red circle", guided=False)
        with torch.inference_mode():
            curves = measure_trajectory(denoise, sched, target.noise(11), sampler_output=sampler_output,
                                        segment_of=target.segment_of())
        want = pipe("a red circle", num_inference_steps=10, generator=torch.Generator().manual_seed(11),
                    output_type="latent", guidance_scale=5.0, **size, **call).frames
        assert torch.equal(curves.final, want), call
