"""Audit: predicted vs actual caching error, correlation helpers, ablations, the `sencache audit` command."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import tiny_wan

import sencache
from sencache import SenCacheConfig, SensitivityProfile
from sencache.calibration.calibrate import calibrate
from sencache.core.budget import with_target
from sencache.demo_model.build import pipeline_size_kwargs
from sencache.harness import audit as aud
from sencache.harness.ablations import ablations
from sencache.runtime.generation import generate
from sencache.statistics import ranks

SIZE = pipeline_size_kwargs(5, 16, 16)
STEPS = 10
CALIBRATION = ["a red circle moving left", "a blue square moving right"]
HELD_OUT = ["a blue circle moving left", "a red square moving right"]


@pytest.fixture(scope="module")
def pipe():
    return tiny_wan()


@pytest.fixture(scope="module")
def profile(pipe):
    return calibrate(pipe, CALIBRATION, num_inference_steps=STEPS, num_samples=2, seed=0, progress=False, **SIZE)


@pytest.fixture(scope="module")
def baselines(pipe):
    from sencache.calibration.baselines import calibrate_baselines

    return calibrate_baselines(pipe, CALIBRATION[:1], [0], STEPS, 5.0, diffusers_magcache=False, progress=False)


# --- statistics -------------------------------------------------------------------------------
def test_rank_and_correlation_helpers_by_hand():
    assert ranks.rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert ranks.pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert ranks.pearson([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    # x = 1..4, y = 1, 3, 2, 4: cov = 4/4·... r = 0.8 exactly
    assert ranks.pearson([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert ranks.spearman([1, 10, 100, 1000], [1, 2, 3, 4]) == pytest.approx(1.0)  # monotone, not linear
    assert ranks.spearman([1, 2, 3, 4], [1, 3, 2, 4]) == pytest.approx(0.8)
    assert math.isnan(ranks.pearson([1, 1, 1], [1, 2, 3])) and math.isnan(ranks.spearman([1], [2]))


def test_correlation_helpers_match_scipy():
    stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(3)
    x = rng.random(50)
    y = x ** 2 + 0.3 * rng.random(50)
    y[::7] = y[0]  # ties
    assert ranks.pearson(x, y) == pytest.approx(stats.pearsonr(x, y)[0], rel=1e-12)
    assert ranks.spearman(x, y) == pytest.approx(stats.spearmanr(x, y)[0], rel=1e-12)
    assert np.array_equal(ranks.rankdata(y), stats.rankdata(y))


def test_correlations_pool_the_decider_branch_and_rank_within_steps():
    recs = []
    for step in (3, 4):
        for sample, (score, actual) in enumerate([(1.0, 0.5), (2.0, 0.7), (3.0, 0.6), (4.0, 0.9)]):
            for branch in ("cond", "uncond"):
                recs.append(dict(method="m", prompt=str(sample), seed=0, step=step, num_steps=10, timestep=0.0,
                                 branch=branch, sample=0, score=score * step, eps=1.0, reuse_run=1,
                                 actual=actual * step if branch == "cond" else 1.0, real_rms=1.0))
    s = aud.correlations(recs)["m"]
    assert s["branch"] == "cond" and s["n"] == 8
    assert s["within_step_spearman"] == pytest.approx(0.8) and s["within_step_steps"] == 2
    x = [r["score"] for r in recs if r["branch"] == "cond"]
    y = [r["actual"] for r in recs if r["branch"] == "cond"]
    assert s["spearman"] == pytest.approx(ranks.spearman(x, y)) and s["pearson"] == pytest.approx(ranks.pearson(x, y))


# --- the measurement --------------------------------------------------------------------------
def test_audit_leaves_the_cached_output_alone_and_measures_the_real_error(pipe, profile):
    config = SenCacheConfig(profile, eps=1e3, max_reuse=2)  # reuses whenever max_reuse allows
    # an independent witness: the inputs and the (cached) output of every transformer call
    calls = []

    def witness(module, args, kwargs, output):
        clone = {k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in kwargs.items()}
        calls.append((clone, output[0].detach().clone()))

    handle = pipe.transformer.register_forward_hook(witness, with_kwargs=True)
    try:
        result = aud.audit_run(pipe, config, HELD_OUT[0], 0, STEPS, 5.0, return_frames=True, call_kwargs=SIZE)
    finally:
        handle.remove()
    # the audited run's video is the plain cached run's video, bit for bit
    session = sencache.enable(pipe, config)
    plain = generate(pipe, HELD_OUT[0], 0, num_inference_steps=STEPS, guidance_scale=5.0, **SIZE).frames
    nfe = session.summary()["nfe"]
    sencache.disable(pipe)
    assert np.array_equal(result["frames"], plain)
    assert result["nfe"] == nfe < STEPS
    records = result["records"]
    assert len(records) == 2 * (STEPS - nfe) == result["real_forwards"]  # cond + uncond at every reused step
    assert {r.branch for r in records} == {"cond", "uncond"}
    # recompute each reused call's real output independently, with no cache on the model
    with torch.no_grad():
        for rec in records:
            call_index = 2 * rec.step + (0 if rec.branch == "cond" else 1)
            kwargs, cached = calls[call_index]
            real = pipe.transformer(**kwargs)[0]
            want = float((cached.double() - real.double()).pow(2).mean().sqrt())
            assert rec.actual == pytest.approx(want, rel=1e-9, abs=1e-12), (rec.step, rec.branch)
            assert rec.actual > 0
    # the CFG-combined error, from the two branches' differences
    for rec in records:
        assert rec.actual_guided is not None and rec.actual_guided > 0
    cond = [r for r in records if r.branch == "cond"]
    assert all(r.score is not None and r.score > 0 for r in cond)


def test_audit_all_methods_writes_table_and_scatter(pipe, profile, baselines, tmp_path):
    config = with_target(SenCacheConfig(profile), target_nfe=6)
    result = aud.audit(pipe, HELD_OUT, [0], config, baselines=baselines, num_inference_steps=STEPS, out_dir=tmp_path,
                       progress=False, values={"magcache": 0.5, "teacache": 0.5}, call_kwargs=SIZE)
    assert set(result["stats"]) == {"sencache", "magcache", "teacache"}
    for method, s in result["stats"].items():
        runs = [r for r in result["runs"] if r["method"] == method]
        reused = sum(STEPS - r["nfe"] for r in runs)
        assert s["n"] == reused  # one cond-branch point per reused step
    assert (tmp_path / "scatter.png").stat().st_size > 10_000
    saved = json.loads((tmp_path / "audit.json").read_text())
    assert saved["stats"].keys() == result["stats"].keys()
    table = (tmp_path / "audit.md").read_text()
    assert "| sencache |" in table and "Spearman" in table


def test_ablations_table_and_plot(pipe, profile, tmp_path):
    result = ablations(pipe, profile, HELD_OUT[:1], [0], num_inference_steps=STEPS, eps=1e3, n_values=(1, 3),
                           eps_values=(0.0, 1e3), use_lpips=False, out_dir=tmp_path, progress=False, call_kwargs=SIZE)
    rows = {(r["ablation"], r["value"]): r for r in result["rows"]}
    # with eps huge, n alone sets the pattern: n=1 computes every other step, n=3 one step in four
    assert rows[("max_reuse", 1)]["nfe"] == 6 and rows[("max_reuse", 3)]["nfe"] == 4
    assert rows[("eps", 0.0)]["nfe"] == STEPS and rows[("eps", 0.0)]["psnr"] == 100.0  # no reuse: identical
    assert rows[("eps", 1e3)]["psnr"] < 100.0
    md = (tmp_path / "ablations.md").read_text()
    assert "(a) n = max_reuse" in md and "(b) ε" in md
    assert (tmp_path / "ablations.png").stat().st_size > 10_000


# --- CLI --------------------------------------------------------------------------------------
def test_cli_audit(pipe, profile, baselines, tmp_path, capsys):
    from sencache.cli import main

    model = tmp_path / "model"
    pipe.save_pretrained(model)
    prof = SensitivityProfile.from_dict(profile.to_dict())
    prof.save(model / "sencache_profile.json")
    baselines.save(model / "baselines.json")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(HELD_OUT[0] + "\n")
    out = tmp_path / "out"
    code = main(["audit", "--model", str(model), "--prompts", str(prompts), "--steps", str(STEPS), "--out", str(out),
                 "--target-nfe", "6", "--ablations", "--n-values", "1", "2", "--eps-values", "0.5", "--no-lpips",
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    for name in ("audit.json", "audit.md", "scatter.png", "ablations.json", "ablations.md", "ablations.png"):
        assert (out / name).is_file(), name
    assert "| sencache |" in printed and "wrote" in printed
    # the equal-NFE comparisons: eps schedules, and the per-sample correction (normaliser measured on the fly)
    code = main(["audit", "--model", str(model), "--prompts", str(prompts), "--steps", str(STEPS), "--out", str(out),
                 "--skip-audit", "--schedules", "--compare-correction", "--target-nfe", "6", "--no-lpips",
                 "--no-progress"])
    printed = capsys.readouterr().out
    assert code == 0, printed
    schedules = json.loads((out / "schedules.json").read_text())
    assert "constant" in schedules["variants"] and schedules["winner"] in schedules["variants"]
    correction = json.loads((out / "correction.json").read_text())
    assert set(correction["variants"]) == {"fixed", "correction"}
    assert "correction" in SensitivityProfile.load(out / "profile_with_correction.json").metadata
    assert "winner: **" in printed
    # a held-out check: calibration prompts are refused as evaluation prompts
    prompts.write_text(CALIBRATION[0] + "\n")
    assert main(["audit", "--model", str(model), "--prompts", str(prompts), "--steps", str(STEPS), "--out", str(out),
                 "--no-progress"]) == 2
    assert main(["audit", "--model", str(model), "--eps", "0.1", "--target-nfe", "5"]) == 2
