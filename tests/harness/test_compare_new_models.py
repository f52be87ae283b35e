"""`sencache calibrate` then `sencache compare` on complete tiny Wan 2.2 (two experts) and FLUX (two block lists)
pipeline folders, with sencache, MagCache, TeaCache and diffusers' FirstBlockCache side by side."""

from __future__ import annotations

import json

import pytest
from full_pipelines import calibrate_saved

from sencache.cli import main

METHODS = ("sencache", "magcache", "teacache", "fbcache")
STEPS = 8


@pytest.mark.parametrize("kind", ["wan22", "flux"])
def test_calibrate_then_compare_four_methods(kind, tmp_path, capsys):
    folder, code = calibrate_saved(kind, tmp_path, STEPS)
    assert code == 0, capsys.readouterr().err
    prompts = tmp_path / "p.txt"
    prompts.write_text("a green triangle moving up\n")
    out = tmp_path / "cmp"
    code = main(["compare", "--model", str(folder), "--prompts", str(prompts), "--methods", *METHODS,
                 "--steps", str(STEPS), "--no-lpips", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    assert results["reference"]["nfe"] == STEPS  # the independent counter sees every step, both experts' too
    for method in METHODS:
        entry = results["methods"][method]
        assert entry["available"], (method, entry["skipped"])
        nfe = entry["settings"][0]["nfe"]
        assert 1 <= nfe <= STEPS and entry["settings"][0]["psnr"] is not None, method
    assert results["methods"]["magcache"]["settings"][0]["nfe"] < STEPS  # a cache that reused, on both shapes
    if kind == "wan22":
        assert json.loads((folder / "sencache_profile.json").read_text())["metadata"]["experts"].keys() == \
            {"transformer", "transformer_2"}


@pytest.mark.parametrize("kind", ["cogvideox", "ltx", "flux", "wan22"])
def test_compare_seacache_variants_tuned_to_a_budget_without_baselines(kind, tmp_path, capsys):
    """Both SeaCache variants run through the adapter on every architecture, and --nfe-targets tunes a method set
    that needs no baselines (it used to refuse), on a calibration prompt, never on the evaluation pairs."""
    from full_pipelines import save_tiny_pipeline

    folder = tmp_path / kind
    save_tiny_pipeline(kind, folder, call_defaults=True)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a green triangle moving up\n")
    out = tmp_path / "cmp"
    code = main(["compare", "--model", str(folder), "--prompts", str(prompts), "--methods", "seacache",
                 "seacache-paper", "--nfe-targets", "5", "--steps", str(STEPS), "--no-lpips", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    results = json.loads((out / "results.json").read_text())
    for method in ("seacache", "seacache-paper"):
        setting = results["methods"][method]["settings"][0]
        assert 3 <= setting["nfe"] <= 6, (method, setting["nfe"])
        assert setting["psnr"] is not None and setting["schedules"] == 1 and setting["pairs"] == 1
        assert setting["psnr_min"] == setting["psnr_p10"] == setting["psnr"]  # one pair: its own tail
        assert results["tuning"][method][0]["prompts"] != ["a green triangle moving up"]
    table = (out / "equal_nfe.md").read_text()
    assert "10th-percentile" in table and "broken" in table
