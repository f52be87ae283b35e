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
