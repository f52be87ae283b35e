"""The default rule per model family and budget (sencache.core.default_rule): the table, how it was chosen, and every
path that reads it (budget mode, `sencache generate --target-nfe`, the comparison's tuning, equal NFE, the demo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from loop_fixtures import PROMPTS, STEPS, grid_profile

import sencache
from sencache import SenCacheConfig
from sencache.budget import with_target
from sencache.cli import main as cli_main
from sencache.core.default_rule import (
    DEFAULT_RULES,
    LOOP_AUTO,
    LOOP_HOLD,
    SCHEDULE,
    choose_rules,
    family_of,
    rule_for,
    rule_for_profile,
)
from sencache.core.trajectories import trajectory_metadata
from sencache.harness.compare import plan_variants
from sencache.harness.demo import setting_key
from sencache.harness.equal_nfe import equal_nfe, equal_nfe_table
from sencache.harness.tuning import rules_needed, tune_values
from sencache.methods import MethodContext, ours_config

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def calibrated(loop_calibrated):
    """test_loop's tiny Wan pipeline and closed-loop profile (its own instance here), with stored trajectories: the
    ε-schedule rule's budget mode replays latent distances, a synthetic pair on the same grid."""
    pipe, profile = loop_calibrated
    d = 0.1 * np.abs(np.subtract.outer(np.arange(STEPS), np.arange(STEPS))).astype(np.float64)
    profile.metadata["trajectories"] = trajectory_metadata(profile.timesteps, [d, 1.3 * d])
    return pipe, profile


# ------------------------------------------------------------------------------------------------ the table


def test_the_table_picks_per_family_and_nearest_design_budget():
    assert family_of("WanTransformer3DModel") == "wan" and family_of("FluxTransformer2DModel") is None
    assert rule_for("wan", 15, 50) == LOOP_HOLD and rule_for("wan", 25, 50) == LOOP_HOLD
    assert rule_for("wan", 30, 50) == SCHEDULE and rule_for("wan", 45, 50) == SCHEDULE  # beyond 35: the last entry
    assert rule_for("ltx", 20, 50) == LOOP_AUTO and rule_for("ltx", 25, 50) == SCHEDULE
    assert rule_for("wan", 6, 20) == LOOP_HOLD  # fractions, not step counts: 6 of 20 is the 15-of-50 budget
    assert {rule_for("cogvideox", n, 50) for n in range(1, 51)} == {SCHEDULE}
    assert rule_for(None, 15, 50) == SCHEDULE and rule_for("flux", 15, 50) == SCHEDULE


def test_the_choice_keeps_the_rule_unless_another_wins_by_the_margin():
    rows = {SCHEDULE: {"psnr": [30.0, 40.0, 50.0], "psnr_p10": [20.0, 30.0, 46.0]},
            LOOP_HOLD: {"psnr": [35.0, 40.6, 49.0], "psnr_p10": [31.0, 31.0, 45.0]}}
    # 15: hold scores 33 vs 25 -> hold; 20: schedule 35 vs hold 35.8 (< 1 dB better) -> stays hold;
    # 25: schedule 48 vs hold 47 -> stays hold (schedule is not more than 1 dB better)
    assert choose_rules(rows) == [LOOP_HOLD, LOOP_HOLD, LOOP_HOLD]
    rows[SCHEDULE]["psnr"][2] = 52.0
    assert choose_rules(rows) == [LOOP_HOLD, LOOP_HOLD, SCHEDULE]
    rows[LOOP_HOLD]["psnr"][0] = None  # a rule that did not reach a budget is no candidate there
    assert choose_rules(rows)[0] == SCHEDULE


def test_the_shipped_table_is_what_the_design_scores_choose():
    scores = json.loads((ROOT / "docs" / "design_families" / "scores.json").read_text())
    assert set(scores) == set(DEFAULT_RULES)
    for family, entry in scores.items():
        assert tuple(choose_rules(entry["rows"])) == DEFAULT_RULES[family], family


def test_a_profile_without_the_loop_calibration_keeps_the_schedule_rule():
    assert rule_for_profile(grid_profile(), 15, 50) == SCHEDULE
    ltx = grid_profile()
    ltx.metadata["model_class"] = "LTXVideoTransformer3DModel"
    assert rule_for_profile(ltx, 15, 50) == SCHEDULE


# ------------------------------------------------------------------------------------------------ budget mode


def test_budget_mode_picks_the_rule_for_the_budget(calibrated):
    _, profile = calibrated
    low = with_target(SenCacheConfig(profile), target_nfe=4)  # 4 of 12: the 0.3 budget -> Wan holds
    assert low.loop and low.forecast == "hold" and low.budget["rule_name"] == LOOP_HOLD
    assert "default" in low.budget["rule_picked_by"]
    high = with_target(SenCacheConfig(profile), target_nfe=8)  # 8 of 12 = 0.67 -> the ε-schedule rule
    assert not high.loop and high.budget["rule_name"] == SCHEDULE
    assert high.eps_start == pytest.approx(high.eps / 10)  # a tied warm-up ε stays tied
    # a rule the user chose is kept, whatever the budget
    given = with_target(SenCacheConfig(profile, loop=False), target_nfe=4)
    assert not given.loop and given.budget["rule_picked_by"] == "the config"
    constant = with_target(SenCacheConfig(profile, eps_schedule="constant"), target_nfe=4)
    assert not constant.loop


def test_generate_target_nfe_runs_the_default_rule_and_refuses_contradictions(tmp_path, capsys):
    def refused(*argv) -> str:
        assert cli_main(["generate", "--prompt", "x", *argv, "--out", str(tmp_path / "r.mp4")]) == 2
        assert not (tmp_path / "r.mp4").exists()
        return capsys.readouterr().err

    assert "--target-nfe is SenCache's budget mode" in refused("--target-nfe", "15", "--eps", "0.1")
    assert "--target-nfe must be between 1 and --steps 50" in refused("--target-nfe", "80")
    assert "counts steps of the profile's calibration (50 steps)" in refused("--steps", "20", "--target-nfe", "6")
    rc = cli_main(["generate", "--prompt", "a red ball", "--steps", "50", "--target-nfe", "15",
                   "--out", str(tmp_path / "c.mp4")])
    out = capsys.readouterr().out
    assert rc == 0 and "budget mode: the loop-hold rule" in out and (tmp_path / "c.mp4").exists()  # shipped Wan demo


# ------------------------------------------------------------------------------------------------ the harness


def test_the_comparison_runs_each_targets_rule(calibrated):
    pipe, profile = calibrated
    ctx = MethodContext(num_inference_steps=STEPS, profile=profile)
    assert rules_needed(ctx, [4, 8]) == [SCHEDULE, LOOP_HOLD]
    assert ours_config("sencache", 0.001, MethodContext(STEPS, profile, rule=LOOP_HOLD)).loop
    assert not ours_config("sencache", 0.1, ctx).loop  # an ε alone: the ε-schedule rule
    values, records = tune_values(pipe, ["sencache"], [4, 8], PROMPTS[:1], [0], ctx, progress=False)
    rules = [(r["rule"], r["target_nfe"], r["default_for_target"]) for r in records["sencache"]]
    # every rule some target picks is tuned at every target, so each has a curve of its own
    assert rules == [(SCHEDULE, 4.0, False), (SCHEDULE, 8.0, True), (LOOP_HOLD, 4.0, True), (LOOP_HOLD, 8.0, False)]
    assert all(isinstance(v, dict) and v["rule"] in (SCHEDULE, LOOP_HOLD) for v in values["sencache"])
    variants, _ = plan_variants(["sencache"], values=values, ctx=ctx)
    keys = {v.key: v.rule for v in variants}
    assert any(k.startswith("sencache@loop-hold:eps=") and r == LOOP_HOLD for k, r in keys.items())
    assert any(k.startswith("sencache@eps=") and r is None for k, r in keys.items())  # keys as before


def test_equal_nfe_reads_each_target_off_its_own_rules_curve():
    def setting(nfe, psnr, rule=None):
        return {"nfe": nfe, "psnr": psnr, "ssim": 0.9, "lpips": 0.01, **({"rule": rule} if rule else {})}
    results = {"num_inference_steps": 50, "methods": {"sencache": {"available": True, "param": "eps", "settings": [
        setting(14.0, 20.0), setting(26.0, 50.0), setting(36.0, 60.0),  # the ε-schedule rule
        setting(14.0, 36.0, LOOP_HOLD), setting(26.0, 48.0, LOOP_HOLD)]}},
        "tuning": {"sencache": [
            {"target_nfe": 15.0, "rule": LOOP_HOLD, "default_for_target": True},
            {"target_nfe": 15.0, "rule": SCHEDULE, "default_for_target": False},
            {"target_nfe": 30.0, "rule": SCHEDULE, "default_for_target": True},
            {"target_nfe": 30.0, "rule": LOOP_HOLD, "default_for_target": False}]}}
    rows = equal_nfe(results, [15, 30])
    assert rows["sencache"]["psnr"] == [pytest.approx(37.0), pytest.approx(54.0)]  # hold at 15, schedule at 30
    assert rows["sencache"]["rule"] == [LOOP_HOLD, SCHEDULE]
    assert rows["sencache · loop-hold"]["psnr"][1] is None  # the holding curve never reached 30
    assert rows["sencache · schedule"]["psnr"][0] == pytest.approx(22.5)
    assert "sencache: the rule at each target (read off that rule's own curve): NFE 15 loop-hold, NFE 30 schedule" \
        in equal_nfe_table(results, [15, 30])


def test_the_demo_stores_one_threshold_per_rule(calibrated):
    _, profile = calibrated
    low, high = (setting_key("sencache", STEPS, n, 5.0, profile) for n in (4, 8))
    assert (low.endswith("|loop-hold") and "schedule=" in high
            and low.split("|profile=")[1] != high.split("|profile=")[1])


def test_the_shipped_demo_needs_no_tuning_for_its_default_settings():
    """The installed demo reads every threshold of its default run (50 steps, 15 NFE, guidance 5) from the package,
    the rule each system's sencache runs included: a missing one would be tuned at run time, slower and not the
    README's numbers."""
    from sencache.calibration.baselines import Baselines
    from sencache.demo_model.systems import SYSTEMS, weights_dir
    from sencache.harness.demo import SEED_PAGE_METHODS

    for name in SYSTEMS:
        folder = weights_dir(name)
        profile = sencache.SensitivityProfile.load(folder / "sencache_profile.json")
        stored = Baselines.load(folder / "baselines.json").settings
        for method in SEED_PAGE_METHODS:
            assert setting_key(method, 50, 15, 5.0, profile) in stored, (name, method)
