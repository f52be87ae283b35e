"""Forecasting the cached residual (SenCacheConfig.forecast): the adapter's extrapolation, the rule's choice
between holding and forecasting by predicted error, the curvature calibration measures, and the replay."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import flat_profile, tiny_wan, wan_kwargs

import sencache
from sencache import SenCacheConfig, SenCacheError
from sencache.calibration.calibrate import calibrate
from sencache.calibration.secants import second_difference
from sencache.core.change import forecast_change
from sencache.core.profile import model_config_hash
from sencache.core.replay import simulate_sample
from sencache.core.trajectories import trajectories_of
from sencache.demo_model.build import pipeline_size_kwargs

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

STEPS = 8
SIZE = pipeline_size_kwargs(5, 16, 16)
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan()


@pytest.fixture(scope="module")
def profile(pipe):
    return calibrate(pipe, ["a red circle", "a blue square moving right"], num_inference_steps=STEPS, num_samples=2,
                     seed=0, progress=False, **SIZE)


def generate(pipe, seed: int = 0):
    return pipe(prompt=PROMPT, generator=torch.Generator().manual_seed(seed), **wan_kwargs(steps=STEPS)).frames


def test_second_difference_is_exact_for_a_quadratic_path():
    c = 0.37
    f = {t: torch.full((2, 3), 1.0 + 0.5 * t + c * t * t, dtype=torch.float64) for t in (900.0, 850.0, 700.0)}
    assert second_difference(900.0, f[900.0], 850.0, f[850.0], 700.0, f[700.0]) == pytest.approx(2 * c, rel=1e-9)
    # ...and the linear forecast's predicted error is then its exact error
    t_prev, t_ref, t = 900.0, 850.0, 700.0
    linear = f[t_ref] + (f[t_ref] - f[t_prev]) * (t - t_ref) / (t_ref - t_prev)
    assert float((linear - f[t]).abs().max()) == pytest.approx(forecast_change(2 * c, abs(t - t_ref), abs(t - t_prev)))


def test_calibration_stores_the_paths_curvature(profile):
    jtt = profile.curves["jtt"]
    assert len(jtt) == len(profile.timesteps) and all(v > 0 and math.isfinite(v) for v in jtt)
    assert {"jtt_p10", "jtt_p50", "jtt_p90"} <= set(profile.spread)


def test_default_forecasts_by_predicted_error_where_the_profile_allows_it(profile):
    assert SenCacheConfig(profile).forecast == "auto"
    assert SenCacheConfig(flat_profile("WanTransformer3DModel")).forecast == "hold"  # no curvature: the paper's
    with pytest.raises(SenCacheError, match="jtt"):
        SenCacheConfig(flat_profile("WanTransformer3DModel"), forecast="auto")
    with pytest.raises(SenCacheError, match="forecast must be one of"):
        SenCacheConfig(profile, forecast="quadratic")
    paper = SenCacheConfig.paper(profile, eps=0.3)
    assert (paper.forecast, paper.eps_schedule.name, paper.max_reuse, paper.eps_start) == ("hold", "constant", 3,
                                                                                          pytest.approx(0.03))


@pytest.mark.parametrize("forecast", ["hold", "linear", "auto"])
def test_eps_zero_is_bit_exact_with_every_forecast(pipe, profile, forecast):
    reference = generate(pipe)
    sencache.enable(pipe, SenCacheConfig(profile, eps=0.0, forecast=forecast))
    try:
        cached = generate(pipe)
    finally:
        sencache.disable(pipe)
    assert torch.equal(cached, reference)


def test_linear_forecast_extrapolates_the_residual_in_the_timestep(pipe):
    """At every reused call the block stack's stand-in equals r_last + (r_last − r_prev)·(t − t_last)/(t_last − t_prev)
    of that branch, with r and r̂ measured by plain torch hooks that no cache touches."""
    profile = flat_profile("WanTransformer3DModel", config_hash=model_config_hash(pipe.transformer))
    config = SenCacheConfig(profile, eps=1e9, eps_start=1e9, max_reuse=1, final_steps=1, forecast="linear")
    blocks = pipe.transformer.blocks
    seen = []  # per transformer call: timestep, input of the first block, output of the last block

    handles = [
        pipe.transformer.register_forward_pre_hook(
            lambda m, a, k: seen.append({"t": float(k["timestep"].reshape(-1)[0])}), with_kwargs=True),
        blocks[0].register_forward_pre_hook(
            lambda m, a, k: seen[-1].update(head=k.get("hidden_states", a[0] if a else None)), with_kwargs=True),
        blocks[-1].register_forward_hook(lambda m, a, out: seen[-1].update(tail=out[0] if isinstance(out, tuple)
                                                                           else out)),
    ]
    session = sencache.enable(pipe, config)
    try:
        generate(pipe)
        records = session.trace.records
    finally:
        sencache.disable(pipe)
        for h in handles:
            h.remove()
    assert len(seen) == len(records)
    history, checked = {}, 0  # branch -> [(t, residual), ...] of its refreshes
    for call, rec in zip(seen, records):
        residual = call["tail"] - call["head"]  # the real residual, or the stand-in handed on when skipped
        past = history.setdefault(rec.branch, [])
        if rec.computed:
            past.append((call["t"], residual))
            continue
        assert rec.forecast == (1 if len(past) >= 2 else 0)
        if len(past) < 2:  # one refresh so far: the residual is held
            assert torch.allclose(residual, past[-1][1], rtol=1e-5, atol=1e-5 * float(past[-1][1].abs().max()))
            continue
        (t_prev, r_prev), (t_last, r_last) = past[-2], past[-1]
        expected = r_last + (r_last - r_prev) * ((call["t"] - t_last) / (t_last - t_prev))
        assert torch.allclose(residual, expected, rtol=1e-5, atol=1e-5 * float(r_last.abs().max()))
        assert not torch.allclose(residual, r_last)  # really extrapolated, not held
        checked += 1
    assert checked >= 4  # refresh, reuse, refresh, reuse, ...: both branches forecast from the third step on


@pytest.mark.parametrize("guard", [None, 1.5])
def test_replay_equals_the_online_rule_with_forecast_auto(pipe, profile, guard):
    """Until the first reuse the latents are the calibration ones: decisions and scores (min of S and S₁) agree."""
    traj = trajectories_of(profile)
    for eps in (0.05, 0.3, 2.0):
        config = SenCacheConfig(profile, eps=eps, forecast="auto", forecast_guard=guard)
        prompt, seed = profile.metadata["prompts"][0], profile.metadata["seeds"][0]
        session = sencache.enable(pipe, config)
        try:
            pipe(prompt=prompt, generator=torch.Generator().manual_seed(seed), num_inference_steps=STEPS,
                 guidance_scale=5.0, output_type="latent", max_sequence_length=wan_kwargs()["max_sequence_length"],
                 **SIZE)
            real = [r for r in session.trace.records if r.branch == "cond"]
        finally:
            sencache.disable(pipe)
        computed, score = simulate_sample(config, traj.timesteps, traj.dist[0], [eps])
        for r in real:
            assert r.computed == bool(computed[r.step, 0]), (eps, r.step)
            if r.step > 0:
                assert r.score == pytest.approx(score[r.step, 0], rel=1e-12), (eps, r.step)
            if not r.computed:
                break


@pytest.mark.parametrize("guard", [None, 2.0])
def test_budget_mode_hits_the_target_with_forecast_auto(profile, guard):
    for target in (3, 5, 7):
        config = sencache.budget.with_target(SenCacheConfig(profile, forecast="auto", forecast_guard=guard),
                                             target_nfe=target)
        assert abs(config.budget["simulated_nfe"] - target) <= 0.5
        assert config.budget["forecast_guard"] == guard


def test_forecast_guard_gives_the_forecast_a_per_sample_bound():
    """Two samples with the same refresh times (so the same S₁) but different S: unguarded both forecast,
    guarded only the one whose own change S is under guard·ε."""
    from sencache.core.rules.base import StepInput

    profile = flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0)
    profile.curves["jtt"] = [0.0, 0.0]  # S₁ = 0: a forecast always looks exact
    decisions = {}
    for guard in (None, 2.0):
        rule = SenCacheConfig(profile, eps=0.1, eps_schedule="constant", warmup_fraction=0.0, max_reuse=9,
                              forecast_guard=guard).build_rule()
        state = rule.new_state(2)
        x = torch.zeros(2, 4)
        for step, t in enumerate((900.0, 800.0)):
            x = x + 1.0  # S = 1 > ε: both refresh
            rule.decide(state, StepInput(step, 10, torch.full((2,), t), x.clone()))
        x = x + torch.tensor([[0.05], [0.5]])  # S = 0.05 for sample 0, 0.5 for sample 1
        decisions[guard] = rule.decide(state, StepInput(2, 10, torch.full((2,), 700.0), x))
    free, guarded = decisions[None], decisions[2.0]
    assert free.reuse.tolist() == [True, True] and free.order.tolist() == [1, 1]
    assert guarded.reuse.tolist() == [True, False] and guarded.order.tolist() == [1, 0]
    assert guarded.score.tolist() == pytest.approx([0.025, 0.25])  # max(S₁ = 0, S / 2)


def test_a_tiny_forecast_guard_decides_like_holding(profile):
    traj = trajectories_of(profile)
    for eps in (0.05, 0.3, 2.0):
        guarded = simulate_sample(SenCacheConfig(profile, eps=eps, forecast_guard=1e-9), traj.timesteps,
                                  traj.dist[0], [eps])
        hold = simulate_sample(SenCacheConfig(profile, eps=eps, forecast="hold"), traj.timesteps, traj.dist[0], [eps])
        assert (guarded[0] == hold[0]).all()


@pytest.mark.parametrize("bad, message", [(0.0, "forecast_guard must be a number > 0"),
                                          (True, "forecast_guard must be a number > 0"),
                                          ("2", "forecast_guard must be a number > 0")])
def test_forecast_guard_refuses_bad_values(profile, bad, message):
    with pytest.raises(SenCacheError, match=message):
        SenCacheConfig(profile, forecast_guard=bad)
    with pytest.raises(SenCacheError, match="bounds forecast=\"auto\" only"):
        SenCacheConfig(profile, forecast="hold", forecast_guard=2.0)


def test_audit_reports_the_forecast_criterion_next_to_s():
    from sencache.harness.audit import correlations

    def rec(score, actual, forecast, step):
        return {"method": "sencache", "prompt": "p", "seed": 0, "step": step, "num_steps": 10, "timestep": 1.0,
                "branch": "cond", "sample": 0, "score": score, "eps": 1.0, "reuse_run": 1, "actual": actual,
                "real_rms": 1.0, "forecast": forecast}

    records = [rec(0.1 * k, 0.2 * k, 0, k) for k in range(1, 5)] + [rec(0.01 * k, 0.03 * (5 - k), 1, k + 4)
                                                                   for k in range(1, 5)]
    stats = correlations(records)
    assert set(stats) == {"sencache", "sencache [hold]", "sencache [forecast]"}
    assert stats["sencache [hold]"]["n"] == 4 and stats["sencache [hold]"]["spearman"] == pytest.approx(1.0)
    assert stats["sencache [forecast]"]["spearman"] == pytest.approx(-1.0)  # S₁ judged on forecast steps only
    assert stats["sencache"]["n"] == 8
    from sencache.harness.audit import stats_table

    table = stats_table({"num_inference_steps": 10, "prompts": ["p"], "seeds": [0], "stats": stats,
                         "runs": [{"method": "sencache", "nfe": 6}]})
    rows = {line.split(" | ")[0].lstrip("| "): line.split(" | ")[1] for line in table.splitlines()
            if line.startswith("| sencache")}
    assert rows == {"sencache": "6.00", "sencache [hold]": "6.00", "sencache [forecast]": "6.00"}  # the run's NFE
