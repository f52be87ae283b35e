"""Calibrating CogVideoX: the measured trajectory is the pipeline's own (batched CFG, DDIM and the DPM scheduler
of CogVideoX 1.5), and `sencache calibrate --model FOLDER` works on a complete tiny pipeline."""

from __future__ import annotations

import json

import pytest
import torch
from full_pipelines import save_tiny_pipeline

from sencache.calibration.calibrate import calibrate
from sencache.calibration.cogvideox_target import CogVideoXTarget
from sencache.calibration.secants import measure_trajectory
from sencache.cli import main
from sencache.core.profile import SensitivityProfile

SIZE = dict(height=32, width=32, num_frames=9)
TEXT = 16
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("cogvideox")
    save_tiny_pipeline("cogvideox", path)
    (path / "sencache_call_defaults.json").write_text(json.dumps({"max_sequence_length": TEXT}))
    return path


def load(folder, scheduler: str):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(folder)
    pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.mark.parametrize("scheduler", ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"])
@pytest.mark.parametrize("guidance", [6.0, 1.0])
def test_trajectory_is_the_pipelines_own(folder, scheduler, guidance):
    pipe = load(folder, scheduler)
    target = CogVideoXTarget(pipe, dict(SIZE, max_sequence_length=TEXT, guidance_scale=guidance))
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    sched.set_timesteps(4)
    denoise, sampler_output = target.denoisers(PROMPT, guided=False)
    with torch.inference_mode():
        start = target.noise(11)
        curves = measure_trajectory(denoise, sched, start, sampler_output=sampler_output, step=target.sampler_step())
    want = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(11), output_type="latent",
                max_sequence_length=TEXT, guidance_scale=guidance, **SIZE).frames
    assert curves.final.shape == want.shape
    assert torch.equal(curves.final, want)
    assert all(v > 0 for v in curves.jx + curves.jt)


def test_calibrate_a_cogvideox_folder(folder, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square moving right\n")
    out = tmp_path / "cog.json"
    code = main(["calibrate", "--model", str(folder), "--prompts", str(prompts), "--samples", "2", "--steps", "4",
                 "--height", "32", "--width", "32", "--frames", "9", "--target-nfe", "3", "--no-progress",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    profile = SensitivityProfile.load(out)
    assert profile.metadata["model_class"] == "CogVideoXTransformer3DModel" and len(profile.timesteps) == 4
    assert profile.metadata["latent_shape"] == [1, 3, 4, 4, 4]  # frames-first, as CogVideoX lays latents out
    assert profile.metadata["recommended_eps"] > 0  # budget mode replays its stored trajectories
    assert "jtt" in profile.curves


def test_calibrate_refuses_what_cogvideox_cannot_do_yet(folder):
    pipe = load(folder, "CogVideoXDDIMScheduler")
    with pytest.raises(Exception, match="unsupported CogVideoX argument"):
        calibrate(pipe, [PROMPT], num_inference_steps=4, num_samples=1, use_dynamic_cfg=True, **SIZE)
