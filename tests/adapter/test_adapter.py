"""The diffusers adapter on real (tiny) Wan, CogVideoX and LTX pipelines built from configs."""

from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import (
    BlockCounter,
    cog_kwargs,
    expected_max_reuse_pattern,
    flat_profile,
    ltx_kwargs,
    tiny_cogvideox,
    tiny_ltx,
    tiny_wan,
    to_device,
    wan_kwargs,
)

import sencache
from sencache import ProfileError, SenCacheConfig, SenCacheError, SensitivityProfile, UnsupportedModelError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

INF = float("inf")

CASES = {
    "wan": (tiny_wan, lambda **kw: {"prompt": "a red circle moving left", **wan_kwargs(**kw)}, "blocks",
            "WanTransformer3DModel"),
    "cogvideox": (tiny_cogvideox, lambda steps=8: cog_kwargs(steps=steps), "transformer_blocks",
                  "CogVideoXTransformer3DModel"),
    "ltx": (tiny_ltx, lambda steps=8: ltx_kwargs(steps=steps), "transformer_blocks", "LTXVideoTransformer3DModel"),
}


def run(pipe, kwargs, seed=0):
    return pipe(generator=torch.Generator().manual_seed(seed), **kwargs).frames


@pytest.mark.parametrize("name", list(CASES))
def test_eps_zero_and_disable_are_bit_exact(name, device):
    build, kwargs_for, _, cls = CASES[name]
    pipe = build().to(device)
    kwargs = to_device(kwargs_for(steps=6), device)
    reference = run(pipe, kwargs)
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(cls), eps=0.0, max_reuse=3))
    assert torch.equal(run(pipe, kwargs), reference)
    assert cache.summary()["reused"] == 0
    assert "reused no step" in cache.summary()["notes"][0]
    sencache.enable(pipe, SenCacheConfig(flat_profile(cls), eps=INF, max_reuse=3))
    assert not torch.equal(run(pipe, kwargs), reference)  # caching really changes the output
    sencache.disable(pipe)
    assert sencache.active_session(pipe) is None
    assert torch.equal(run(pipe, kwargs), reference)


@pytest.mark.parametrize("name", list(CASES))
@pytest.mark.parametrize("max_reuse,final_steps", [(1, 0), (2, 1), (3, 2)])
def test_infinite_eps_gives_exact_max_reuse_pattern(name, max_reuse, final_steps, device):
    build, kwargs_for, blocks_attr, cls = CASES[name]
    pipe = build().to(device)
    steps = 10
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(cls), eps=INF, max_reuse=max_reuse,
                                                 final_steps=final_steps))
    counter = BlockCounter(pipe.transformer, blocks_attr)
    run(pipe, to_device(kwargs_for(steps=steps), device))
    counter.remove()
    summary = cache.summary()
    pattern = expected_max_reuse_pattern(steps, max_reuse, final_steps)
    computed_steps = cache.trace.computed_steps(sample=0)
    assert computed_steps == [s for s, c in enumerate(pattern) if c]
    assert summary["nfe"] == sum(pattern)
    assert summary["computed"] == counter.calls  # independent count of block-stack executions
    assert summary["steps"] == steps


def test_wan_branches_share_the_decision_but_not_the_residual():
    pipe = tiny_wan()
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=INF, max_reuse=2))
    seen = {}

    def snapshot(pipeline, step, timestep, callback_kwargs):
        if step == 3:  # the pipeline resets hook state when it returns, so look inside mid-call
            seen.update({k: v.clone() for k, v in cache.residuals().items()})
        return {}

    run(pipe, {"prompt": "a red circle", "callback_on_step_end": snapshot, **wan_kwargs(steps=8)})
    by_step = {}
    for r in cache.trace.records:
        by_step.setdefault(r.step, {})[r.branch] = r.computed
    assert all(set(v) == {"cond", "uncond"} for v in by_step.values())
    assert all(v["cond"] == v["uncond"] for v in by_step.values())
    assert set(seen) == {"cond", "uncond"}
    assert not torch.equal(seen["cond"], seen["uncond"])


def simulate_sencache(timesteps, jt, eps):
    """Pure-python SenCache on a timestep grid with J_x = 0: the computed steps."""
    computed, t_ref = [], None
    for step, t in enumerate(timesteps):
        if t_ref is None or jt * abs(t - t_ref) > eps:
            computed.append(step)
            t_ref = t
    return computed


def test_score_crossing_eps_decides_at_the_known_step():
    pipe = tiny_wan()
    steps = 12
    pipe.scheduler.set_timesteps(steps)
    grid = [float(t) for t in pipe.scheduler.timesteps]
    jt = 0.002
    # S after a refresh at step 0 is jt*|t_k - t_0|; put eps between steps 3 and 4.
    eps = jt * (abs(grid[3] - grid[0]) + abs(grid[4] - grid[0])) / 2
    profile = SensitivityProfile([0.0, 1000.0], [0.0, 0.0], [jt, jt], model_class="WanTransformer3DModel")
    cache = sencache.enable(pipe, SenCacheConfig(profile, eps=eps, eps_start=eps, max_reuse=100, final_steps=0,
                                                     eps_schedule="constant"))  # the paper's fixed eps
    run(pipe, {"prompt": "a red circle", **wan_kwargs(steps=steps)})
    computed = cache.trace.computed_steps()
    assert computed[:2] == [0, 4]
    assert computed == simulate_sencache(grid, jt, eps)
    step4 = [r for r in cache.trace.records if r.step == 4 and r.branch == "cond"][0]
    assert step4.score == pytest.approx(jt * abs(grid[4] - grid[0]), rel=1e-6)
    assert step4.score > eps and step4.reason == "above_eps"


def _initial_latents(pipe_kind, seed):
    g = torch.Generator().manual_seed(seed)
    if pipe_kind == "cogvideox":
        return torch.randn(1, 3, 4, 8, 8, generator=g)  # (B, F, C, H, W) for 9 frames at 64x64, patch 2
    return torch.randn(1, 32, 8, generator=g)  # LTX packed tokens (B, S, C): 2 frames x 4 x 4 at 128x128


@pytest.mark.parametrize("name", ["cogvideox", "ltx"])
def test_fused_cfg_batch_decides_per_sample_like_solo_runs(name):
    build, _, _, cls = CASES[name]
    kwargs_for = cog_kwargs if name == "cogvideox" else ltx_kwargs
    pipe = build()
    steps = 10
    latents = [_initial_latents(name, 1), _initial_latents(name, 2) * 0.2]
    batch_kwargs = kwargs_for(batch=2, steps=steps)
    solo_kwargs = []
    for i in range(2):
        kw = {k: (v[i:i + 1] if isinstance(v, torch.Tensor) else v) for k, v in batch_kwargs.items()}
        solo_kwargs.append(kw)
    profile = flat_profile(cls, jx=1.0, jt=0.0)

    def schedules(eps):
        out = []
        for i in range(2):
            cache = sencache.enable(pipe, SenCacheConfig(profile, eps=eps, eps_start=eps, max_reuse=3, final_steps=0))
            frames = pipe(latents=latents[i].clone(), **solo_kwargs[i]).frames
            out.append((cache.trace.computed_steps(0), cache.trace.computed_steps(1), frames))
        return out

    # find a tolerance at which the two samples, run alone, take different schedules
    for eps in [0.02, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6]:
        solo = schedules(eps)
        if solo[0][0] != solo[1][0]:
            break
    else:
        pytest.fail("no tolerance separated the two samples; the test cannot show per-sample decisions")
    assert solo[0][0] == solo[0][1]  # uncond and cond rows of one sample follow one decision
    cache = sencache.enable(pipe, SenCacheConfig(profile, eps=eps, eps_start=eps, max_reuse=3, final_steps=0))
    counter = BlockCounter(pipe.transformer, "transformer_blocks")
    batch_frames = pipe(latents=torch.cat([latents[0], latents[1]]).clone(), **batch_kwargs).frames
    counter.remove()
    # rows: [uncond s0, uncond s1, cond s0, cond s1]
    assert cache.trace.computed_steps(0) == solo[0][0]
    assert cache.trace.computed_steps(1) == solo[1][0]
    assert cache.trace.computed_steps(2) == solo[0][1]
    assert cache.trace.computed_steps(3) == solo[1][1]
    assert cache.summary()["computed"] == counter.calls
    assert torch.allclose(batch_frames[0], solo[0][2][0], atol=1e-4)
    assert torch.allclose(batch_frames[1], solo[1][2][0], atol=1e-4)


def test_two_pipelines_in_one_process_stay_independent():
    a, b = tiny_wan(seed=0), tiny_wan(seed=0)
    kwargs = {"prompt": "a red circle", **wan_kwargs(steps=8)}
    reference = run(b, kwargs)
    cache_a = sencache.enable(a, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=INF, max_reuse=1))
    cache_b = sencache.enable(b, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.0))
    out_a1 = run(a, kwargs)
    out_b = run(b, kwargs)
    out_a2 = run(a, kwargs)
    assert torch.equal(out_b, reference)
    assert torch.equal(out_a1, out_a2)
    assert cache_a.summary()["nfe"] == sum(expected_max_reuse_pattern(8, 1, 1))
    assert cache_b.summary()["reused"] == 0
    assert cache_a is not cache_b and cache_a.trace is not cache_b.trace


def test_state_resets_between_calls_and_after_an_exception_inside_a_block():
    pipe = tiny_wan()
    kwargs = {"prompt": "a red circle", **wan_kwargs(steps=8)}
    config = SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=INF, max_reuse=2)
    cache = sencache.enable(pipe, config)
    first = run(pipe, kwargs)
    second = run(pipe, kwargs)
    assert torch.equal(first, second)  # nothing leaks from one call into the next

    calls = {"n": 0}

    def explode(module, args):
        calls["n"] += 1
        if calls["n"] == 5:
            raise RuntimeError("boom inside a block")

    handle = pipe.transformer.blocks[1].attn1.register_forward_pre_hook(explode)
    with pytest.raises(RuntimeError, match="boom"):
        run(pipe, kwargs)
    handle.remove()
    assert torch.equal(run(pipe, kwargs), first)
    assert cache.summary()["steps"] == 8


def test_bad_inputs_get_clear_errors_and_leave_the_pipeline_usable(tmp_path):
    pipe = tiny_wan()
    kwargs = {"prompt": "a red circle", **wan_kwargs(steps=5)}
    reference = run(pipe, kwargs)
    with pytest.raises(ProfileError, match="CogVideoXTransformer3DModel.*calibrate"):
        sencache.enable(pipe, SenCacheConfig(flat_profile("CogVideoXTransformer3DModel"), eps=0.1))
    with pytest.raises(ProfileError, match="another config"):
        sencache.enable(pipe, SenCacheConfig(flat_profile("WanTransformer3DModel", config_hash="0123"), eps=0.1))
    with pytest.raises(ProfileError, match="NaN or inf"):
        SensitivityProfile([0, 1000], [1.0, float("nan")], [0.1, 0.1])
    bad = tmp_path / "bad.json"
    bad.write_text('{"format": "sencache-profile/1", "timesteps": [0, 1], "jx": [1, Infinity], "jt": [0, 0]}')
    with pytest.raises(ProfileError):
        SensitivityProfile.load(bad)
    with pytest.raises(ProfileError, match="cannot read"):
        SensitivityProfile.load(tmp_path / "missing.json")
    with pytest.raises(SenCacheError, match="eps must be"):
        SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=-0.1)
    with pytest.raises(SenCacheError, match="max_reuse"):
        SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.1, max_reuse=-1)
    with pytest.raises(SenCacheError, match="SensitivityProfile"):
        SenCacheConfig("profile.json", eps=0.1)
    assert sencache.active_session(pipe) is None
    assert torch.equal(run(pipe, kwargs), reference)


def test_non_finite_latent_is_refused_with_a_clear_error():
    pipe = tiny_wan()
    sencache.enable(pipe, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.1))
    latents = torch.randn(1, 8, 3, 4, 4)
    latents[0, 0, 0, 0, 0] = float("nan")
    with pytest.raises(SenCacheError, match="NaN or inf"):
        pipe(prompt="a red circle", latents=latents, **wan_kwargs(steps=4))


def test_unsupported_model_is_refused():
    class NoBlocks(torch.nn.Module):
        def forward(self, hidden_states, timestep):
            return hidden_states

    with pytest.raises(UnsupportedModelError, match="not supported"):
        sencache.enable(NoBlocks(), SenCacheConfig(flat_profile("NoBlocks"), eps=0.1))


def test_trace_records_and_saves(tmp_path):
    pipe = tiny_wan()
    config = SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.5, max_reuse=2, warmup_fraction=0.3)
    cache = sencache.enable(pipe, config)
    run(pipe, {"prompt": "a red circle", **wan_kwargs(steps=6)})
    records = cache.trace.records
    assert len(records) == 12  # 6 steps x (cond, uncond), batch 1
    first = records[0]
    assert (first.step, first.branch, first.computed, first.score, first.reason) == (0, "cond", True, None, "first")
    later = [r for r in records if r.step > 0]
    assert all(r.score is not None and math.isfinite(r.score) or r.step < 2 for r in later)
    # each record carries the step's threshold: eps_start in the warm-up, then eps under the power2 schedule
    assert all(r.eps == pytest.approx(config.eps_at(r.step, 6)) for r in records)
    assert ({round(r.eps, 6) for r in later if r.step >= 2}
            == {round(0.5 * ((1 + k / 5) / 1.5) ** 2, 6) for k in range(2, 6)})
    assert all(r.reuse_run == 0 for r in records if r.computed)
    path = cache.trace.save(tmp_path / "trace.json")
    saved = json.loads(path.read_text())
    assert saved["summary"]["calls"] == 12
    assert len(saved["records"]) == 12
    assert set(saved["records"][0]) >= {"step", "timestep", "branch", "computed", "score", "eps", "reuse_run"}


def test_bare_transformer_needs_step_count_or_a_pipeline():
    pipe = tiny_wan()
    transformer = pipe.transformer
    cache = sencache.enable(transformer, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=INF, max_reuse=1,
                                                        final_steps=0), num_inference_steps=4)
    x = torch.randn(1, 8, 4, 4, 4)
    text = torch.zeros(1, 32, 64)
    for t in [900.0, 700.0, 500.0, 300.0]:
        transformer(x, torch.tensor([t]), text)
    assert cache.trace.computed_steps() == [0, 2]
    sencache.enable(transformer, SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.1))
    with pytest.raises(SenCacheError, match="num_inference_steps"):
        transformer(x, torch.tensor([900.0]), text)


def test_recorder_reports_every_call_with_the_real_residual_and_removes_its_hooks():
    from sencache.adapter.recorder import record_uncached

    pipe = tiny_wan()
    blocks = pipe.transformer.blocks
    head, real = [], []  # block-stack input and residual per call, taken by plain torch hooks
    handles = [blocks[0].register_forward_pre_hook(
                   lambda m, a, k: head.append(k.get("hidden_states", a[0] if a else None)), with_kwargs=True),
               blocks[-1].register_forward_hook(
                   lambda m, a, out: real.append((out[0] if isinstance(out, tuple) else out) - head[-1]))]
    events = []
    try:
        record_uncached(pipe, lambda: pipe(prompt="a red circle", **wan_kwargs(steps=4)),
                        lambda e: events.append((e.step, e.branch, e.decider, e.residual.clone(),
                                                 bool(e.computed.all()), e.modulation is not None, len(e.records))))
    finally:
        for h in handles:
            h.remove()
    assert [(e[0], e[1]) for e in events] == [(k, b) for k in range(4) for b in ("cond", "uncond")]
    assert [e[2] for e in events] == [True, False] * 4  # the step's first call decides
    assert all(e[4] and e[5] and e[6] == 1 for e in events)  # everything computed, temb seen, one trace row each
    assert len(real) == len(events) and all(torch.equal(e[3], r) for e, r in zip(events, real))
    assert sencache.active_session(pipe) is None  # hooks gone afterwards
