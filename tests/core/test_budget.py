"""Budget mode (target NFE), ε schedules and the per-sample correction of the SenCache rule."""

from __future__ import annotations

import json
import logging
import math

import numpy as np
import pytest
import torch
from conftest import flat_profile, tiny_wan

import sencache
from sencache import SenCacheConfig, SenCacheError, SensitivityProfile
from sencache.calibration.calibrate import calibrate
from sencache.calibration.correction import calibrate_correction
from sencache.core.budget import recommend, recommended_eps, with_target
from sencache.core.replay import simulate, simulate_sample
from sencache.core.rules.base import StepInput
from sencache.core.schedule import SCHEDULE_PRESETS, EpsSchedule
from sencache.core.trajectories import pack_distances, trajectories_of, trajectory_metadata, unpack_distances
from sencache.demo_model.build import pipeline_size_kwargs
from sencache.harness.runner import cached_nfe as measure_nfe
from sencache.harness.variants import compare_schedules, measure_transfer, schedules_table
from sencache.runtime.generation import generate

SIZE = pipeline_size_kwargs(5, 16, 16)
STEPS = 16
CALIBRATION = ["a red circle moving left", "a blue square moving right", "a red square", "a blue circle"]
HELD_OUT = ["a blue circle moving left", "a red square moving right", "a red circle moving right"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan()


@pytest.fixture(scope="module")
def profile(pipe):
    return calibrate(pipe, CALIBRATION, num_inference_steps=STEPS, num_samples=4, seed=0, progress=False, **SIZE)


def run_cached(pipe, config, prompt, seed):
    session = sencache.enable(pipe, config)
    try:
        logging.getLogger("sencache").setLevel(logging.ERROR)
        generate(pipe, prompt, seed, num_inference_steps=STEPS, guidance_scale=5.0, **SIZE)
        return session.trace
    finally:
        logging.getLogger("sencache").setLevel(logging.NOTSET)
        sencache.disable(pipe)


# --- stored trajectories ---------------------------------------------------------------------
def test_packed_distances_reload_bit_exactly():
    rng = np.random.default_rng(0)
    d = rng.random((7, 7)).astype(np.float32).astype(np.float64)
    d = np.triu(d, 1) + np.triu(d, 1).T
    rows = pack_distances(d)
    text = json.dumps(rows)
    back = unpack_distances(json.loads(text), 7)
    assert np.array_equal(back, d)
    assert all(len(r) == 6 - j for j, r in enumerate(rows))


def test_calibration_stores_trajectories_that_survive_save_and_load(profile, tmp_path):
    traj = trajectories_of(profile)
    assert traj.num_steps == STEPS and len(traj.dist) == 4
    assert traj.timesteps.tolist() == profile.timesteps
    d = traj.dist[0]
    assert np.array_equal(d, d.T) and np.all(np.diag(d) == 0) and np.all(d[np.triu_indices(STEPS, 1)] > 0)
    loaded = SensitivityProfile.load(profile.save(tmp_path / "p.json"))
    back = trajectories_of(loaded)
    assert all(np.array_equal(a, b) for a, b in zip(traj.dist, back.dist))


def test_profile_without_trajectories_is_refused_with_a_clear_error():
    profile = flat_profile("WanTransformer3DModel")
    with pytest.raises(SenCacheError, match="stores no calibration trajectories.*sencache calibrate"):
        with_target(SenCacheConfig(profile), target_nfe=10)
    with pytest.raises(SenCacheError, match="not both"):
        with_target(SenCacheConfig(profile), target_nfe=10, target_speedup=2)


# --- the offline rule equals the online rule ----------------------------------------------------
def test_simulated_scores_equal_the_adapters_exactly_on_a_calibration_trajectory(pipe, profile):
    """max_reuse=0: every step refreshes, the trajectory is the uncached one, and every S is comparable."""
    traj = trajectories_of(profile)
    prompt, seed = profile.metadata["prompts"][0], profile.metadata["seeds"][0]
    config = SenCacheConfig(profile, eps=math.inf, max_reuse=0, final_steps=0)
    trace = run_cached(pipe, config, prompt, seed)
    real = {r.step: r.score for r in trace.records if r.branch == "cond"}
    computed, score = simulate_sample(config, traj.timesteps, traj.dist[0], [math.inf])
    assert computed[:, 0].all()
    assert real[0] is None
    for k in range(1, STEPS):
        assert real[k] == score[k, 0], k  # bit-exact: same D, same lookup, same float64 arithmetic


@pytest.mark.parametrize("eps", [0.05, 0.15, 0.3, 0.6, 1.5, 5.0])
def test_simulation_reproduces_the_adapter_until_the_first_reuse(pipe, profile, eps):
    """Until the first reuse the real latents are the calibration ones, so decisions and S must be identical."""
    traj = trajectories_of(profile)
    config = SenCacheConfig(profile, eps=eps)
    for i in range(2):
        prompt, seed = profile.metadata["prompts"][i], profile.metadata["seeds"][i]
        trace = run_cached(pipe, config, prompt, seed)
        real = [r for r in trace.records if r.branch == "cond"]
        computed, score = simulate_sample(config, traj.timesteps, traj.dist[i], [eps])
        for r in real:
            assert r.computed == bool(computed[r.step, 0]), (eps, i, r.step)
            if r.step > 0:
                assert r.score == score[r.step, 0]
            if not r.computed:
                break  # after a reuse the real trajectory departs from the stored one


def test_simulate_and_config_agree_on_the_warmup_tie(profile):
    tied = SenCacheConfig(profile, eps=0.4)
    fixed = SenCacheConfig(profile, eps=0.4, eps_start=0.0)
    assert tied.eps_start_tied and not fixed.eps_start_tied
    assert simulate(tied).nfe <= simulate(fixed).nfe  # eps_start 0 forbids every warm-up reuse
    assert simulate(tied, eps=0.0).nfe == STEPS


# --- the solver -------------------------------------------------------------------------------
def synthetic_profile(T=12, gap_cost=0.1, jt=0.0):
    """J_x = 1 and D[j][k] = gap_cost·|k − j|: S after a refresh is gap_cost × the gap (plus J_t·|Δt|)."""
    ts = np.linspace(1000, 50, T)
    d = gap_cost * np.abs(np.subtract.outer(np.arange(T), np.arange(T))).astype(np.float32).astype(np.float64)
    meta = {"trajectories": trajectory_metadata(ts, [d, 1.3 * d])}
    return SensitivityProfile([0.0, 1000.0], [1.0, 1.0], [jt, jt], model_class="WanTransformer3DModel", **meta)


def brute_force_nfe(config, profile, eps):
    """An independent scalar replay of the rule (plain Python, no vectorisation), mean over trajectories."""
    traj = trajectories_of(profile)
    T = traj.num_steps
    jx = [float(profile.lookup(t)[0]) for t in traj.timesteps]
    jt = [float(profile.lookup(t)[1]) for t in traj.timesteps]
    warm = round(config.warmup_fraction * T)
    nfes = []
    for d in traj.dist:
        ref, run, nfe = 0, 0, 1
        for k in range(1, T):
            s = jx[ref] * d[ref, k] + jt[ref] * abs(traj.timesteps[k] - traj.timesteps[ref])
            if k < warm:
                thr = eps / 10
            elif config.eps_schedule is not None:
                thr = eps * config.eps_schedule(k / (T - 1))
            else:
                thr = eps
            if s <= thr and run < config.max_reuse and k < T - config.final_steps:
                run += 1
            else:
                ref, run, nfe = k, 0, nfe + 1
        nfes.append(nfe)
    return float(np.mean(nfes))


GRID = np.geomspace(1e-3, 10, 1500)
_REACHABLE: dict = {}


def reachable(config, profile, key):
    if key not in _REACHABLE:
        _REACHABLE[key] = np.array([brute_force_nfe(config, profile, e) for e in GRID])
    return _REACHABLE[key]


@pytest.mark.parametrize("schedule", [None, "rising", "hump", "power2"])
@pytest.mark.parametrize("target", [4, 6.5, 7, 9])
def test_solver_picks_the_closest_reachable_nfe(target, schedule):
    profile = synthetic_profile(jt=1e-4)
    config = with_target(SenCacheConfig(profile, eps_schedule=schedule), target_nfe=target)
    got = config.budget["simulated_nfe"]
    assert got == brute_force_nfe(config, profile, config.eps)
    nfe = reachable(config, profile, schedule)
    best = np.min(np.abs(nfe - target))
    assert abs(got - target) <= best + 1e-12  # at least as close as a dense scan of eps
    if abs(got - target) == best:
        ties = nfe[np.abs(nfe - target) == best]
        assert got == ties.max()  # ties -> the smaller eps, i.e. the larger NFE
    lo, hi = config.budget["plateau"]
    assert lo < config.eps < (hi if hi is not None else math.inf)
    assert config.eps_start == config.eps / 10


def test_target_speedup_means_steps_over_speedup():
    profile = synthetic_profile()
    a = with_target(SenCacheConfig(profile), target_speedup=2.0)
    b = with_target(SenCacheConfig(profile), target_nfe=6)
    assert a.budget["target_nfe"] == 6 and a.eps == b.eps
    with pytest.raises(SenCacheError, match="between 1 and"):
        with_target(SenCacheConfig(profile), target_nfe=40)


def test_budget_mode_is_an_explicit_step_that_leaves_the_config_alone():
    profile = synthetic_profile()
    base = SenCacheConfig(profile, eps=0.5, max_reuse=2)
    chosen = with_target(base, target_nfe=6)
    assert base.eps == 0.5 and base.budget is None  # building or solving never changes the given config
    assert chosen.budget["target_nfe"] == 6 and chosen.max_reuse == 2 and chosen.eps != 0.5
    assert chosen.eps_start == pytest.approx(chosen.eps / 10)  # still tied: eps_start follows the new eps
    fixed = with_target(SenCacheConfig(profile, eps_start=0.001), target_nfe=6)
    assert fixed.eps_start == 0.001 and fixed.budget["eps_start_given"]
    with pytest.raises(SenCacheError, match="with_target"):  # the old spelling says where budget mode went
        SenCacheConfig(profile, target_nfe=6)


def test_recommend_stores_eps_in_the_profile():
    profile = synthetic_profile()
    budget = recommend(profile, 7)
    assert profile.metadata["recommended_eps"] == budget["eps"]
    assert profile.metadata["target_nfe"] == 7
    assert brute_force_nfe(SenCacheConfig(profile), profile, budget["eps"]) == budget["simulated_nfe"]


@pytest.mark.parametrize("target", [10, 7])
def test_budget_hits_the_target_within_one_on_held_out_prompts(pipe, profile, target):
    config = with_target(SenCacheConfig(profile), target_nfe=target)
    assert config.budget["simulated_nfe"] == target
    nfes = measure_nfe(pipe, config, HELD_OUT, seeds=[0, 1], num_inference_steps=STEPS, call_kwargs=SIZE)
    assert len(nfes) == 6
    assert all(abs(n - target) <= 1 for n in nfes), nfes


def test_measure_transfer_refuses_calibration_prompts(pipe, profile):
    with pytest.raises(SenCacheError, match="also used for the sensitivity profile"):
        measure_transfer(pipe, profile, [8], CALIBRATION[:1])


# --- ε schedules ------------------------------------------------------------------------------
def test_schedule_shapes_and_the_rule_threshold(profile):
    lin = EpsSchedule.linear(0.5, 1.0)
    assert lin(0) == 0.5 and lin(1) == 1.5 and lin(0.25) == pytest.approx(0.75)
    hump = SCHEDULE_PRESETS["hump"]
    assert hump(0.5) == 1.5 and hump(0.0) == hump(1.0) == 0.5
    assert EpsSchedule.power(2)(0.5) == 1.0
    config = SenCacheConfig(profile, eps=0.2, eps_schedule="rising", warmup_fraction=0.25)
    T = 9
    assert config.eps_at(1, T) == config.eps_start == 0.02  # warm-up keeps eps_start
    assert config.eps_at(8, T) == pytest.approx(0.2 * 1.5)
    assert config.eps_at(4, T) == pytest.approx(0.2 * 1.0)
    # the default is power2: stricter than eps early, looser late; None and "constant" are the paper's fixed eps
    default = SenCacheConfig(profile, warmup_fraction=0.25)
    assert default.eps_schedule.name == "power2"
    assert default.eps_at(3, T) < 0.1 < default.eps_at(8, T) == pytest.approx(0.1 * (2 / 1.5) ** 2)
    for paper in (None, "constant"):
        assert [SenCacheConfig(profile, eps_schedule=paper, warmup_fraction=0.25).eps_at(k, T)
                for k in (3, 8)] == [0.1, 0.1]
    with pytest.raises(SenCacheError, match="unknown eps schedule"):
        SenCacheConfig(profile, eps_schedule="wobbly")
    with pytest.raises(SenCacheError, match="non-decreasing"):
        EpsSchedule.from_knots(((0.5, 1.0), (0.2, 1.0)))


def test_recommended_eps_is_solved_again_for_a_profile_of_another_schedule(caplog):
    profile = synthetic_profile(jt=1e-4)
    target = 7
    recommend(profile, target, eps_schedule="constant")  # as profiles were written before power2
    stored = profile.metadata["recommended_eps"]
    with caplog.at_level(logging.INFO, logger="sencache"):
        eps = recommended_eps(profile)
    assert eps != stored and eps == with_target(SenCacheConfig(profile), target_nfe=target).eps
    assert "solved again for power2" in caplog.text
    recommend(profile, target)  # the default schedule: the stored value is used as it is
    assert recommended_eps(profile) == profile.metadata["recommended_eps"] == eps
    assert recommended_eps(SensitivityProfile([0.0, 1000.0], [1.0, 1.0], [0.0, 0.0]), default=0.1) == 0.1


def test_compare_schedules_runs_at_equal_simulated_nfe(pipe, profile):
    result = compare_schedules(pipe, profile, HELD_OUT[:1], 9, seeds=[0], progress=False,
                                   schedules={"falling": "falling"}, num_inference_steps=STEPS, call_kwargs=SIZE)
    rows = result["variants"]
    assert set(rows) == {"constant", "falling"} and result["baseline"] == "constant"
    assert all(r["simulated_nfe"] == 9 for r in rows.values())
    assert rows["falling"]["eps_schedule"]["name"] == "falling" and rows["constant"]["eps"] != rows["falling"]["eps"]
    assert result["winner"] in rows
    assert result["margin_db"] == rows[result["winner"]]["psnr"] - rows["constant"]["psnr"]
    assert "winner: **" in schedules_table(result)
    with pytest.raises(SenCacheError, match="trajectories have 16 steps"):
        compare_schedules(pipe, profile, HELD_OUT[:1], 9, num_inference_steps=20, progress=False)


# --- per-sample correction --------------------------------------------------------------------
def correction_profile(ratio=0.5, window=3):
    meta = {"correction": {"timesteps": [0.0, 1000.0], "ratio": [[ratio] * window, [ratio] * window],
                           "window": window}}
    return SensitivityProfile([0.0, 1000.0], [1.0, 1.0], [0.0, 0.0], model_class="WanTransformer3DModel", **meta)


def test_correction_needs_the_normaliser():
    with pytest.raises(SenCacheError, match="calibrate_correction"):
        SenCacheConfig(flat_profile("WanTransformer3DModel"), correction=True)
    with pytest.raises(SenCacheError, match="correction_bounds"):
        SenCacheConfig(correction_profile(), correction=True, correction_bounds=(1.5, 2.0))


def test_correction_factor_tracks_the_observed_ratio_within_bounds():
    """Two samples, every step refreshing (eps = 0): S = 0.1 per step; sample i's residual moves by
    q_i · S · ρ̄ per step, so each observation is exactly q_i. The factor follows c ← clamp(m·c + (1−m)·q)."""
    norm, m, bounds = 0.5, 0.5, (0.5, 2.0)
    rule = SenCacheConfig(correction_profile(norm), eps=0.0, eps_start=0.0, correction=True,
                          correction_bounds=bounds, correction_momentum=m, final_steps=0).build_rule()
    state = rule.new_state(2)
    T = 10
    qs = [torch.tensor([3.0, 1.5]), torch.tensor([3.0, 1.5]), torch.tensor([0.1, 1.5])] + [torch.tensor([0.8, 1.2])] * 7
    residual = torch.zeros(2, 4, 8)
    expected = torch.ones(2, dtype=torch.float64)
    for k in range(T):
        latent = torch.full((2, 3, 2, 2, 2), 0.1 * k)
        inp = StepInput(step=k, num_steps=T, timestep=torch.full((2,), 1000.0 - 10 * k), latent=latent)
        decision = rule.decide(state, inp)
        assert not decision.reuse.any()
        if k > 0:  # the score the rule compares with eps is the corrected one
            assert torch.allclose(decision.score, expected * 0.1, rtol=1e-6)
            residual = residual + (qs[k] * 0.1 * norm).view(2, 1, 1)
            expected = (m * expected + (1 - m) * qs[k].double()).clamp(*bounds)
        rule.observe_refresh(state, inp, torch.ones(2, dtype=torch.bool), residual.clone())
        assert torch.allclose(state.factor, expected, rtol=1e-6), k
        assert bool((state.factor >= bounds[0]).all() and (state.factor <= bounds[1]).all())
    assert state.factor[0] == pytest.approx(0.8, abs=0.02) and state.factor[1] == pytest.approx(1.2, abs=0.02)
    # a capped observation moves the factor toward the bound, never past it
    assert torch.allclose(state.last_ratio, torch.tensor([0.8, 1.2], dtype=torch.float64), rtol=1e-6)


def test_correction_off_leaves_the_rule_unchanged(pipe, profile):
    a = run_cached(pipe, SenCacheConfig(profile, eps=0.3), HELD_OUT[0], 0)
    b = run_cached(pipe, SenCacheConfig(profile, eps=0.3, correction=False, correction_bounds=(0.9, 1.1)),
                   HELD_OUT[0], 0)
    assert [r.score for r in a.records] == [r.score for r in b.records]


def test_correction_normaliser_is_measured_per_gap(pipe, profile):
    p = SensitivityProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    info = calibrate_correction(pipe, p, CALIBRATION[:1], [0], STEPS, window=3, progress=False, call_kwargs=SIZE)
    table = np.asarray(info["ratio"])
    assert table.shape == (STEPS - 1, 3) and np.all(table > 0)
    config = SenCacheConfig(p, eps=0.3, correction=True)
    trace = run_cached(pipe, config, CALIBRATION[0], 0)
    assert trace.summary()["nfe"] <= STEPS  # runs end to end with the normaliser


# --- CLI --------------------------------------------------------------------------------------
def test_cli_calibrate_target_nfe(pipe, tmp_path, capsys):
    from sencache.cli import main

    model = tmp_path / "model"
    pipe.save_pretrained(model)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(CALIBRATION[:2]) + "\n")
    out = tmp_path / "profile.json"
    code = main(["calibrate", "--model", str(model), "--prompts", str(prompts), "--steps", "8", "--samples", "2",
                 "--frames", "5", "--height", "16", "--width", "16", "--out", str(out), "--target-nfe", "5",
                 "--no-progress"])
    assert code == 0
    assert "budget: eps=" in capsys.readouterr().out
    saved = SensitivityProfile.load(out)
    assert saved.metadata["target_nfe"] == 5
    assert with_target(SenCacheConfig(saved), target_nfe=5).eps == saved.metadata["recommended_eps"]
    loop = saved.metadata["loop"]  # the closed loop's calibration ran too, with its own tolerance for T / 2
    assert "gain" in saved.curves and loop["target_nfe"] == 4
    assert with_target(SenCacheConfig(saved, loop=True), target_nfe=4).eps == loop["recommended_eps"]
    assert main(["calibrate", "--model", str(model), "--prompts", str(prompts), "--steps", "8",
                 "--out", str(out), "--target-nfe", "9"]) == 2
