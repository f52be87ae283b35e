"""Calibration on the two-list transformers: the measured trajectory is FluxPipeline's own (timestep / 1000, shifted
sigma grid, true CFG) and HunyuanVideoPipeline's (embedded guidance, prompt template, true CFG); the profile is in
scheduler timesteps like the adapter's rule sees them, and the CLI calibrates a folder and caches with the profile."""

from __future__ import annotations

import pytest
import torch
from full_pipelines import build_pipeline, calibrate_saved

from sencache.calibration.secants import measure_trajectory
from sencache.calibration.targets import target_for
from sencache.cli import main
from sencache.core.profile import SensitivityProfile

PROMPT = "a red circle moving left"


@pytest.mark.parametrize("kind", ["flux", "hunyuanvideo"])
@pytest.mark.parametrize("call", [{}, {"true_cfg_scale": 3.0, "negative_prompt": "a blue square"}])
def test_trajectory_is_the_pipelines_own(kind, call):
    pipe, size = build_pipeline(kind)
    target = target_for(pipe, dict(size, **call))
    assert target.cfg == bool(call)
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    target.set_timesteps(sched, 5)
    denoise, sampler_output = target.denoisers(PROMPT, guided=False)
    with torch.inference_mode():
        curves = measure_trajectory(denoise, sched, target.noise(7), sampler_output=sampler_output)
    out = pipe(PROMPT, num_inference_steps=5, generator=torch.Generator().manual_seed(7), output_type="latent",
               **size, **call)
    want = out.images if kind == "flux" else out.frames
    assert torch.equal(curves.final, want)
    assert curves.timesteps == pipe.scheduler.timesteps.tolist()  # scheduler units (0-1000), not t / 1000
    assert all(v > 0 for v in curves.jx + curves.jt)


@pytest.mark.parametrize("kind", ["flux", "hunyuanvideo"])
def test_calibrate_a_folder_and_cache_with_it(kind, tmp_path, capsys):
    folder, code = calibrate_saved(kind, tmp_path, 6, "--target-nfe", "4")
    assert code == 0, capsys.readouterr().err
    out = folder / "sencache_profile.json"
    profile = SensitivityProfile.load(out)
    want = {"flux": "FluxTransformer2DModel", "hunyuanvideo": "HunyuanVideoTransformer3DModel"}[kind]
    assert profile.metadata["model_class"] == want and len(profile.timesteps) == 6
    assert max(profile.timesteps) > 500  # the grid in scheduler units
    assert profile.metadata["recommended_eps"] > 0 and "jtt" in profile.curves and "gain" in profile.curves
    code = main(["generate", "--model", str(folder), "--profile", str(out), "--prompt", "a red circle",
                 "--steps", "6", "--out", str(tmp_path / "gen")])
    err = capsys.readouterr()
    assert code == 0, err.err
    assert "NFE 4/6" in err.out + err.err  # budget mode's eps for 4 of 6 steps, counted over both block lists
