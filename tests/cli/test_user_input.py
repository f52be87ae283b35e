"""What a user types or hands in: every finding of issue #38's probes of bad input, each one failing on the code
before the fix. Wrong input gets one clear line (exit 2 from the CLI) before any model loads, and loses nothing."""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import flat_profile, tiny_wan, wan_kwargs

import sencache
from sencache import SenCacheConfig, SensitivityProfile
from sencache.cli import generate as generate_cli
from sencache.cli import main
from sencache.core.budget import recommended_eps, with_target
from sencache.core.trajectories import trajectories_of
from sencache.demo_model.systems import weights_dir
from sencache.errors import ProfileError, SenCacheError
from sencache.runtime.prompts import read_prompts

SHIPPED_PROFILE = weights_dir("wan") / "sencache_profile.json"
WAN = "WanTransformer3DModel"


def shipped() -> dict:
    return json.loads(SHIPPED_PROFILE.read_text())


def no_model_load(monkeypatch):
    """Make every model load fail loudly: the error under test must come first."""
    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the input was checked")
    monkeypatch.setattr(generate_cli, "load_model", refuse)


# --- profiles ---------------------------------------------------------------------------------------------------
def test_negative_extra_curve_is_refused():
    data = shipped()
    data["curves"]["jtt"] = [-abs(v) for v in data["curves"]["jtt"]]
    with pytest.raises(ProfileError, match="'jtt' holds negative"):
        SensitivityProfile.from_dict(data)


def test_all_zero_sensitivities_are_refused():
    with pytest.raises(ProfileError, match="all 0"):
        SensitivityProfile([0.0, 500.0, 1000.0], [0.0] * 3, [0.0] * 3, model_class=WAN)


def test_eps_zero_never_reuses_even_where_the_profile_predicts_no_change():
    pipe = tiny_wan()
    profile = SensitivityProfile([0.0, 900.0, 1000.0], [0.0] * 3, [0.0, 0.0, 1.0], model_class=WAN)  # S = 0 below 900
    reference = pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=8)).frames
    cache = sencache.enable(pipe, SenCacheConfig(profile, eps=0.0))
    frames = pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=8)).frames
    assert cache.summary()["nfe"] == 8 and torch.equal(frames, reference)
    sencache.disable(pipe)


def test_spread_that_is_not_a_mapping_is_a_profile_error():
    data = shipped()
    data["spread"] = [1.0, 2.0]
    with pytest.raises(ProfileError, match="'spread' must be a mapping"):
        SensitivityProfile.from_dict(data)


@pytest.mark.parametrize("bad", [-0.5, "0.1", float("nan"), True])
def test_invalid_recommended_eps_is_refused_not_replaced(bad):
    data = shipped()
    data["metadata"]["recommended_eps"] = bad
    with pytest.raises(ProfileError, match="recommended_eps"):
        SensitivityProfile.from_dict(data)


def test_negative_stored_distances_are_refused():
    data = shipped()
    data["metadata"]["trajectories"]["dist"][0][0][0] = -0.25
    with pytest.raises(SenCacheError, match="negative distances"):
        trajectories_of(SensitivityProfile.from_dict(data))


def test_profile_in_other_timestep_units_is_refused_at_the_first_call():
    pipe = tiny_wan()
    profile = SensitivityProfile([0.001, 0.5, 0.999], [1.0] * 3, [0.001] * 3, model_class=WAN)
    sencache.enable(pipe, SenCacheConfig(profile, eps=0.5))
    with pytest.raises(ProfileError, match="outside the profile's grid"):
        pipe(prompt="a red circle", **wan_kwargs(steps=6))
    sencache.disable(pipe)


def test_profile_covering_part_of_the_run_is_said_in_the_trace(caplog):
    pipe = tiny_wan()
    grid = [600.0, 800.0, 1000.0]  # a 6-step run goes down to ~170: two of its steps lie below
    cache = sencache.enable(pipe, SenCacheConfig(SensitivityProfile(grid, [1.0] * 3, [0.001] * 3, model_class=WAN),
                                                 eps=0.5))
    with caplog.at_level(logging.WARNING, logger="sencache"):
        pipe(prompt="a red circle", **wan_kwargs(steps=6))
    notes = [n for n in cache.summary()["notes"] if "outside the profile's grid" in n]
    assert len(notes) == 1 and "of 6 timesteps" in notes[0]
    assert any("outside the profile's grid" in r.message for r in caplog.records)


def test_budget_refuses_trajectories_outside_the_grid():
    data = shipped()
    data["timesteps"] = [t / 1000.0 for t in data["timesteps"]]  # the grid in 0-1 units, trajectories in 0-1000
    profile = SensitivityProfile.from_dict(data)
    with pytest.raises(ProfileError, match="stored calibration trajectories"):  # the ε-schedule rule's replay
        with_target(SenCacheConfig(profile, loop=False), target_nfe=20)


def test_import_profile_refuses_a_table_in_sigma_units(tmp_path):
    table = tmp_path / "table.npz"
    np.savez(table, timesteps=np.linspace(0.999, 0.001, 20), J_x_norm=np.full(20, 1.2), J_t_norm=np.full(20, 30.0))
    code = main(["import-profile", str(table), "--latent-shape", "16", "21", "60", "104",
                 "--model-class", WAN, "--out", str(tmp_path / "p.json")])
    assert code == 2
    assert not (tmp_path / "p.json").exists()


def test_recommended_eps_is_refused_at_another_step_count():
    profile = SensitivityProfile.load(SHIPPED_PROFILE)
    assert recommended_eps(profile, num_inference_steps=50) == recommended_eps(profile)
    with pytest.raises(SenCacheError, match="solved for 50 steps"):
        recommended_eps(profile, num_inference_steps=10)


def test_generate_at_another_step_count_needs_an_eps(tmp_path, capsys):
    code = main(["generate", "--prompt", "a red circle", "--steps", "10", "--out", str(tmp_path / "c.mp4")])
    assert code == 2
    assert "solved for 50 steps" in capsys.readouterr().err
    assert not (tmp_path / "c.mp4").exists()


# --- sessions ---------------------------------------------------------------------------------------------------
def test_disable_of_a_replaced_session_keeps_the_newer_cache(caplog):
    pipe = tiny_wan()
    old = sencache.enable(pipe, SenCacheConfig(flat_profile(WAN), eps=0.5))
    new = sencache.enable(pipe, SenCacheConfig(flat_profile(WAN), eps=0.5))
    with caplog.at_level(logging.WARNING, logger="sencache"):
        old.disable()
    assert sencache.active_session(pipe) is new
    assert any("replaced by a later" in r.message for r in caplog.records)
    new.disable()
    assert sencache.active_session(pipe) is None


def test_deepcopy_of_a_cached_pipeline_is_refused_and_leaves_it_intact():
    pipe = tiny_wan()
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(WAN), eps=0.5))
    def run():
        return pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=6)).frames

    first = run()
    trace = cache.summary()
    with pytest.raises(SenCacheError, match="cannot be deep-copied"):
        copy.deepcopy(pipe)
    assert cache.summary() == trace
    assert torch.equal(run(), first)
    sencache.disable(pipe)
    copy.deepcopy(pipe)  # without the cache it copies as diffusers does


def test_no_gain_note_judges_the_tolerance_in_force_not_the_configs():
    pipe = tiny_wan()
    probe = sencache.enable(pipe, SenCacheConfig(flat_profile(WAN), eps=0.0))
    pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=6))
    smallest = min(r.score for r in probe.trace.records if r.reason == "above_eps")
    # the config's ε is above the smallest S, but the warm-up's ε (in force at every step) is below all of them
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(WAN), eps=2 * smallest, eps_start=smallest / 2,
                                                 warmup_fraction=1.0))
    pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=6))
    note = next(n for n in cache.summary()["notes"] if "reused no step" in n)
    assert f"eps={smallest / 2:g}" in note and f"eps={2 * smallest:g}" not in note


def test_no_gain_note_names_the_tolerance_in_force():
    pipe = tiny_wan()
    cache = sencache.enable(pipe, SenCacheConfig(flat_profile(WAN), eps=1e-9))
    pipe(prompt="a red circle", **wan_kwargs(steps=6))
    note = next(n for n in cache.summary()["notes"] if "reused no step" in n)
    in_force = sorted({r.eps for r in cache.trace.records if r.reason == "above_eps"})
    assert in_force and f"{in_force[0]:g}" in note and "below the predicted change" in note


# --- prompt files -----------------------------------------------------------------------------------------------
def test_prompt_file_with_a_byte_order_mark(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red circle\na blue square\n", encoding="utf-8-sig")
    assert read_prompts(path) == ["a red circle", "a blue square"]


# --- command line -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv, message", [
    (["--prompt", ""], "--prompt is empty"),
    (["--prompt", "   "], "--prompt is empty"),
])
def test_empty_prompt_is_one_line(argv, message, tmp_path, capsys, monkeypatch):
    no_model_load(monkeypatch)
    assert main(["generate", *argv, "--out", str(tmp_path / "c.mp4")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("argv", [["--steps", "0"], ["--steps", "-3"], ["--seeds", str(2 ** 64)],
                                  ["--seeds", "-1"], ["--seeds", "x"]])
@pytest.mark.parametrize("command", ["generate", "compare"])
def test_bad_steps_and_seeds_are_refused_by_the_parser(command, argv, tmp_path, capsys):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\n")
    args = ["--prompt", "a red circle"] if command == "generate" else ["--prompts", str(prompts)]
    with pytest.raises(SystemExit) as stop:
        main([command, *args, *argv, "--out", str(tmp_path / "o")])
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {argv[0]}" in err and "Traceback" not in err


@pytest.mark.parametrize("argv", [["--seed", "-1"], ["--seed", str(2 ** 64)], ["--steps", "0"]])
def test_calibrate_refuses_the_same_seeds_and_steps(argv, tmp_path):
    with pytest.raises(SystemExit) as stop:
        main(["calibrate", *argv, "--out", str(tmp_path / "p.json")])
    assert stop.value.code == 2


def test_cuda_device_without_cuda_is_one_line(tmp_path, capsys, monkeypatch):
    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    no_model_load(monkeypatch)
    assert main(["generate", "--prompt", "a red circle", "--device", "cuda", "--out", str(tmp_path / "c.mp4")]) == 2
    assert "--device cpu" in capsys.readouterr().err


def test_out_that_is_a_folder_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "X.mp4").mkdir()
    assert main(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "X.mp4")]) == 2
    assert "is a folder" in capsys.readouterr().err


def test_out_under_a_file_is_refused_before_loading(tmp_path, capsys, monkeypatch):
    no_model_load(monkeypatch)
    (tmp_path / "notes").write_text("mine")
    assert main(["generate", "--prompt", "a red circle", "--out", str(tmp_path / "notes" / "c.mp4")]) == 2
    assert "is a file" in capsys.readouterr().err
    assert (tmp_path / "notes").read_text() == "mine"


def test_debug_shows_the_traceback(tmp_path, monkeypatch):
    no_model_load(monkeypatch)
    with pytest.raises(SenCacheError):
        main(["--debug", "generate", "--prompt", "", "--out", str(tmp_path / "c.mp4")])


@pytest.mark.parametrize("out, stem", [("take.v1", "take.v1"), ("wan2.1-fast", "wan2.1-fast"),
                                       ("clip.mp4", "clip"), ("clip.GIF", "clip"), ("a.b.mp4", "a.b")])
def test_clip_stem_keeps_the_users_name(out, stem):
    assert generate_cli.clip_stem(Path(out)) == Path(stem)


def test_second_take_neither_collides_nor_overwrites(tmp_path, capsys):
    common = ["generate", "--prompt", "a red circle", "--steps", "4", "--cache", "none"]
    assert main([*common, "--out", str(tmp_path / "take.v1")]) == 0
    assert main([*common, "--out", str(tmp_path / "take.v2"), "--seeds", "1"]) == 0
    v1, v2 = (tmp_path / "take.v1.mp4").read_bytes(), (tmp_path / "take.v2.mp4").read_bytes()
    assert v1 != v2 and not (tmp_path / "take.mp4").exists()
    capsys.readouterr()
    assert main([*common, "--out", str(tmp_path / "take.v1"), "--seeds", "1"]) == 2  # would replace take.v1
    assert "--overwrite" in capsys.readouterr().err
    assert (tmp_path / "take.v1.mp4").read_bytes() == v1
    assert main([*common, "--out", str(tmp_path / "take.v1"), "--seeds", "1", "--overwrite"]) == 0
    assert (tmp_path / "take.v1.mp4").read_bytes() == v2


def test_audit_with_nothing_reused_says_so_and_writes_no_empty_table(tmp_path, capsys):
    code = main(["audit", "--eps", "0", "--num-prompts", "1", "--steps", "6", "--methods", "sencache",
                 "--no-lpips", "--no-progress", "--out", str(tmp_path)])
    assert code == 2
    assert "no method reused a step" in capsys.readouterr().err
    assert not (tmp_path / "audit.md").exists() and not (tmp_path / "scatter.png").exists()


# --- the installed package stays as shipped ---------------------------------------------------------------------
def tree_digest(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and "__pycache__" not in p.parts}


def test_demo_with_new_thresholds_writes_nothing_into_the_package(tmp_path):
    package = Path(sencache.__file__).parent
    before = tree_digest(package)
    out = tmp_path / "demo"
    assert main(["demo", "--systems", "wan", "--steps", "8", "--quick", "--out", str(out)]) == 0
    assert tree_digest(package) == before
    stored = json.loads((out / "wan" / "baselines.json").read_text())["settings"]
    assert any("|T=8|" in key for key in stored)  # the thresholds tuned for 8 steps are kept in the output
    assert math.isfinite(json.loads((out / "wan" / "results.json").read_text())["demo"]["target_nfe"])
