"""compare(): jobs, merging, results.json; the report; the compare and demo command lines."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest

from sencache.calibration.baselines import calibrate_baselines
from sencache.demo_model.data import FRAMES
from sencache.demo_model.prompts import default_calibration_prompts, default_evaluation_prompts
from sencache.errors import SenCacheError
from sencache.harness.compare import compare, make_jobs, merge_records, plan_variants, shard_jobs
from sencache.harness.metrics import PSNR_CAP_DB as PSNR_CAP
from sencache.methods import MethodContext

STEPS = 6
SETTING_KEYS = {"key", "value", "primary", "setting", "nfe", "nfe_fraction", "wall_s", "speedup", "psnr",
                "psnr_capped", "ssim", "lpips", "schedule", "per_prompt"}
PER_PROMPT_KEYS = {"job", "prompt", "seed", "nfe", "wall_s", "speedup", "psnr", "ssim", "lpips", "skipped_steps"}


def tiny_demo_pipe():
    from sencache.demo_model.build import build_pipeline
    from sencache.demo_model.data import vocabulary

    pipe = build_pipeline(vocabulary(), num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flat_profile(**meta):
    from sencache import SensitivityProfile

    return SensitivityProfile([0.0, 1000.0], [1.0, 1.0], [0.001, 0.001], model_class="WanTransformer3DModel", **meta)


@pytest.fixture(scope="module")
def pipe():
    return tiny_demo_pipe()


@pytest.fixture(scope="module")
def baselines(pipe):
    return calibrate_baselines(pipe, default_calibration_prompts(2), num_inference_steps=STEPS, progress=False)


@pytest.fixture(scope="module")
def run(pipe, baselines, tmp_path_factory):
    """One small comparison: 1 prompt x 2 seeds, the reference re-run, a fixed schedule and MagCache."""
    out = tmp_path_factory.mktemp("cmp")
    prompts = default_evaluation_prompts(1, exclude=baselines.calibration_prompts)
    results = compare(pipe, prompts, [0, 1], ["none", "fixed", "magcache"], num_inference_steps=STEPS,
                      out_dir=out, baselines=baselines, progress=False)
    return results, out


# --------------------------------------------------------------------------------------------------
# Pure parts: jobs, shards, merge, plan
# --------------------------------------------------------------------------------------------------


def test_jobs_are_a_pure_prompt_major_grid_and_shards_partition_them():
    jobs = make_jobs(["a", "b", "c"], [0, 7])
    assert jobs == make_jobs(["a", "b", "c"], [0, 7])
    assert [(j.index, j.prompt, j.seed) for j in jobs][:3] == [(0, "a", 0), (1, "a", 7), (2, "b", 0)]
    shards = [shard_jobs(jobs, r, 4) for r in range(4)]
    assert sorted(j.index for s in shards for j in s) == list(range(6))
    with pytest.raises(SenCacheError):
        make_jobs([], [0])
    with pytest.raises(SenCacheError):
        shard_jobs(jobs, 4, 4)


def test_merge_is_order_independent_and_refuses_mismatched_shards():
    records = [{"job": j.index, "prompt": j.prompt, "seed": j.seed, "runs": {"x": j.index}}
               for j in make_jobs(["a", "b", "c"], [0, 1])]
    shards = [records[r::3] for r in range(3)]
    expected = merge_records(records)
    assert [r["job"] for r in expected] == list(range(6))
    rng = random.Random(0)
    for _ in range(5):
        shuffled = [rng.sample(s, len(s)) for s in shards]
        rng.shuffle(shuffled)
        assert merge_records(*shuffled) == expected
    assert merge_records(records, records[:2]) == expected  # a job seen twice is kept once
    clash = dict(records[0], prompt="something else")
    with pytest.raises(SenCacheError, match="job 0"):
        merge_records(records, [clash])


def test_plan_variants_defaults_sweeps_and_pins():
    ctx = MethodContext(num_inference_steps=10)
    variants, skipped = plan_variants(["fixed"], ctx=ctx)
    assert [(v.key, v.primary) for v in variants] == [("fixed@interval=2", True)]
    variants, _ = plan_variants(["fixed"], sweep=True, ctx=ctx)
    assert [v.value for v in variants] == [2, 3, 4, 5] and sum(v.primary for v in variants) == 1
    variants, _ = plan_variants(["fixed"], values={"fixed": 4}, ctx=ctx)
    assert [v.key for v in variants] == ["fixed@interval=4"]
    _, skipped = plan_variants(["sencache"], ctx=ctx)
    assert "profile" in skipped["sencache"]


# --------------------------------------------------------------------------------------------------
# compare() on the tiny pipeline
# --------------------------------------------------------------------------------------------------


def test_results_json_has_the_documented_keys(run):
    results, out = run
    on_disk = json.loads((out / "results.json").read_text())
    assert on_disk["format"] == results["format"] == "sencache-compare/1"
    for key in ("num_inference_steps", "guidance_scale", "prompts", "seeds", "evaluation", "calibration",
                "reference", "methods", "jobs", "environment"):
        assert key in on_disk
    assert on_disk["num_inference_steps"] == STEPS and on_disk["seeds"] == [0, 1]
    assert on_disk["reference"]["nfe"] == STEPS and on_disk["reference"]["wall_s"] > 0
    for name in ("none", "fixed", "magcache"):
        entry = on_disk["methods"][name]
        assert entry["available"] and entry["settings"]
        for s in entry["settings"]:
            assert SETTING_KEYS <= set(s)
            assert len(s["per_prompt"]) == 2 and all(PER_PROMPT_KEYS <= set(p) for p in s["per_prompt"])
            assert s["speedup"] > 0 and all(p["speedup"] > 0 for p in s["per_prompt"])
            assert len(s["schedule"]) == STEPS
    for f in ("results.json", "results.md", "pareto.png", "frames.npz"):
        assert (out / f).stat().st_size > 0


def test_identical_runs_give_capped_psnr_and_cached_runs_do_not(run):
    results, _ = run
    none = results["methods"]["none"]["settings"][0]
    assert none["psnr"] == PSNR_CAP and none["psnr_capped"] and none["ssim"] == pytest.approx(1.0)
    assert none["nfe"] == STEPS
    fixed = results["methods"]["fixed"]["settings"][0]
    assert fixed["nfe"] == STEPS / 2  # interval 2: steps 0, 2, 4
    assert fixed["schedule"] == [True, False] * (STEPS // 2)
    assert not fixed["psnr_capped"] and fixed["psnr"] < PSNR_CAP
    # the per-prompt numbers are the ones the mean is made of
    assert fixed["psnr"] == pytest.approx(np.mean([p["psnr"] for p in fixed["per_prompt"]]))


def test_calibration_and_evaluation_prompts_are_recorded(run, baselines):
    results, out = run
    assert results["calibration"]["baselines"]["prompts"] == baselines.calibration_prompts
    assert results["evaluation"]["prompts"] == results["prompts"]
    assert not set(results["prompts"]) & set(baselines.calibration_prompts)
    md = (out / "results.md").read_text()
    assert "| **fixed** | interval=2 |" in md and baselines.calibration_prompts[0] in md


def test_compare_refuses_calibration_prompts(pipe, baselines):
    with pytest.raises(SenCacheError, match="also used for baseline calibration"):
        compare(pipe, [baselines.calibration_prompts[1]], [0], ["magcache"], num_inference_steps=STEPS,
                baselines=baselines, progress=False)
    profile = flat_profile(prompts=["a small red square moving up on a plain background"])
    with pytest.raises(SenCacheError, match="sensitivity profile"):
        compare(pipe, ["a small red square moving up on a plain background"], [0], ["sencache"],
                num_inference_steps=STEPS, profile=profile, progress=False)


def test_compare_records_a_skipped_dbcache(pipe, monkeypatch):
    import sencache.methods.base as methods_base

    monkeypatch.setattr(methods_base, "cache_dit_available", lambda: False)
    results = compare(pipe, ["a blue circle standing still on a plain background"], [0], ["fixed", "dbcache"],
                      num_inference_steps=4, progress=False, use_lpips=False, warmup=False)
    assert results["methods"]["dbcache"] == {**results["methods"]["dbcache"], "available": False,
                                             "skipped": "skipped: cache-dit not installed", "settings": []}


def test_compare_records_seacache_as_skipped_where_it_has_no_adapter(pipe, monkeypatch):
    import sencache.methods.diffusers_caches as diffusers_caches

    monkeypatch.setattr(diffusers_caches, "seacache_has_adapter", lambda pipe: False)
    results = compare(pipe, ["a blue circle standing still on a plain background"], [0],
                      ["fixed", "diffusers-seacache"],
                      num_inference_steps=4, progress=False, use_lpips=False, warmup=False)
    assert results["methods"]["diffusers-seacache"]["available"] is False
    assert "Wan text-to-video and Cosmos 3 only" in results["methods"]["diffusers-seacache"]["skipped"]
    from sencache.harness.tuning import tune_values

    # `compare --nfe-targets` tunes before it compares: a method that cannot run is left to compare to record
    values, records = tune_values(pipe, ["fixed", "diffusers-seacache"], [2], ["a red square moving up"], [0],
                                  MethodContext(num_inference_steps=4), progress=False)
    assert set(values) == set(records) == {"fixed"}


def test_pareto_curves_leave_out_the_reference_unavailable_methods_and_capped_runs(tmp_path):
    from sencache.report.plots import pareto_curves, plot_pareto_systems

    def setting(nfe, psnr, capped=False):
        return {"nfe": nfe, "psnr": psnr, "psnr_capped": capped, "lpips": None}

    results = {"num_inference_steps": 50, "jobs": [{}] * 3, "method_order": ["none", "a", "b", "c"], "methods": {
        "none": {"available": True, "settings": [setting(50, 100.0, True)]},
        "a": {"available": True, "settings": [setting(30, 40.0), setting(20, 30.0), setting(50, 100.0, True)]},
        "b": {"available": False, "settings": []},
        "c": {"available": True, "settings": [setting(25, None)]}}}
    assert pareto_curves(results, "psnr") == {"a": ((20, 30), (30.0, 40.0))}
    assert pareto_curves(results, "lpips") == {}
    with pytest.raises(SenCacheError, match="at least one"):
        plot_pareto_systems([], "unused.png")
    from PIL import Image

    one, two = (Image.open(plot_pareto_systems([("A", results)] * n, tmp_path / f"{n}.png")) for n in (1, 2))
    assert two.width == 2 * one.width  # one panel per system


def test_tune_threshold_finds_the_setting_for_a_target_nfe(pipe, baselines):
    from sencache.harness.tuning import tune_threshold, tune_values

    ctx = MethodContext(num_inference_steps=STEPS, baselines=baselines)
    calib = baselines.calibration_prompts[:1]
    found = tune_threshold(pipe, "fixed", 2, calib, [0], ctx)  # T=6: interval 3 computes steps 0 and 3
    assert (found["value"], found["nfe"]) == (3, 2.0) and found["prompts"] == calib
    cache: dict = {}
    low = tune_threshold(pipe, "magcache", 3, calib, [0], ctx, cache=cache)
    high = tune_threshold(pipe, "magcache", 5, calib, [0], ctx, cache=cache)
    assert low["value"] > high["value"] and low["nfe"] <= high["nfe"]  # a higher threshold skips more
    values, records = tune_values(pipe, ["none", "fixed"], [2, 3], calib, [0], ctx, progress=False)
    assert values == {"fixed": [3, 2]} and [r["nfe"] for r in records["fixed"]] == [2.0, 3.0]


# --------------------------------------------------------------------------------------------------
# Report
# --------------------------------------------------------------------------------------------------


def test_report_writes_video_gif_plots_and_page(run, baselines):
    import imageio.v2 as imageio

    from sencache.report.page import write_report

    results, out = run
    files = write_report(out)  # reads results.json and frames.npz back
    for name in ("side_by_side.mp4", "side_by_side.gif", "schedule.png", "pareto.png", "report.html"):
        assert files[name].stat().st_size > 0
    gif = imageio.mimread(files["side_by_side.gif"])
    assert len(gif) == FRAMES  # one GIF frame per video frame of the demo model
    height, width = gif[0].shape[:2]
    # 3 columns (reference, fixed, magcache; not the re-run), 2 rows, x4
    assert width >= 3 * 4 * 32 and width < 4 * 4 * 32 and height >= 2 * 4 * 32
    assert height % 16 == 0 and width % 16 == 0
    page = files["report.html"].read_text()
    for text in ("side_by_side.mp4", "side_by_side.gif", "schedule.png", "magcache", "fixed", "Speed-up".lower(),
                 results["prompts"][0], baselines.calibration_prompts[0]):
        assert text in page.lower() or text in page


# --------------------------------------------------------------------------------------------------
# Command lines
# --------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(pipe, tmp_path_factory):
    from sencache.core.profile import model_config_hash

    d = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(d)
    flat_profile(config_hash=model_config_hash(pipe.transformer)).save(d / "sencache_profile.json")
    return d


def test_compare_cli(model_dir, tmp_path, capsys):
    from sencache.cli import main

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("# held out\na blue circle standing still on a plain background\n\n")
    out = tmp_path / "out"
    code = main(["compare", "--model", str(model_dir), "--prompts", str(prompts), "--seeds", "0", "--methods",
                 "fixed", "sencache", "--steps", "4", "--out", str(out), "--profile",
                 str(model_dir / "sencache_profile.json"), "--no-lpips", "--report", "--set", "fixed=3"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results["methods"]) == {"fixed", "sencache"}
    assert [s["value"] for s in results["methods"]["fixed"]["settings"]] == [3]
    assert (out / "report.html").is_file() and (out / "side_by_side.gif").is_file()
    assert "fixed" in capsys.readouterr().out
    assert main(["compare", "--model", str(model_dir), "--prompts", str(prompts), "--methods", "nope"]) == 2


def test_demo_cli(model_dir, tmp_path, capsys):
    from sencache.cli import main

    out = tmp_path / "demo"
    code = main(["demo", "--model", str(model_dir), "--profile", str(model_dir / "sencache_profile.json"),
                 "--out", str(out), "--prompts", "2", "--steps", "6", "--no-lpips"])
    assert code == 0
    printed = capsys.readouterr().out
    assert "calibrating MagCache/TeaCache" in printed and "side_by_side.mp4" in printed
    for name in ("side_by_side.mp4", "side_by_side.gif", "report.html"):
        assert (out / name).stat().st_size > 0
    system = out / model_dir.name  # --model runs that folder as the one system of the page
    results = json.loads((system / "results.json").read_text())
    stored = json.loads((system / "baselines.json").read_text())  # in the output, never beside the model
    assert not (model_dir / "baselines.json").exists()
    calib = stored["calibration_prompts"]
    assert len(results["prompts"]) == 2 and not set(results["prompts"]) & set(calib)
    assert set(results["methods"]) == {"magcache-fast", "sencache"}  # the project page's columns
    for method, tuned in results["demo"]["tuning"].items():
        assert tuned["prompts"] == calib[:1]  # thresholds searched on a calibration prompt only
        assert results["methods"][method]["settings"][0]["value"] == tuned["value"]
    assert len(stored["settings"]) == 2  # kept for the next run
    assert [k for k in stored["settings"] if k.startswith("sencache|")][0].endswith("|schedule=power2")
    page = (out / "report.html").read_text()
    assert page.count("Difference:") == 2 and "speed-up" in page  # one caption per row, and the table
    assert "<td>MagCache</td>" in page and "<td>SenCache</td>" in page  # the project page's names
    from PIL import Image

    gif = Image.open(out / "side_by_side.gif")
    assert gif.n_frames == 9 and gif.size[1] > 4 * 4 * 32  # two rows of clips and two of heat maps, ×4
