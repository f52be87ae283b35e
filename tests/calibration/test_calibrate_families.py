"""Calibrating CogVideoX and LTX-Video: the measured trajectory is the pipeline's own (batched CFG; CogVideoX's
DDIM and CogVideoX 1.5's stochastic DPM scheduler; LTX's size-shifted grid and guidance rescale), and
`sencache calibrate --model FOLDER` works on complete tiny pipelines."""

from __future__ import annotations

import json

import pytest
import torch
from full_pipelines import save_tiny_pipeline

from sencache.calibration.calibrate import calibrate
from sencache.calibration.secants import measure_trajectory
from sencache.calibration.targets import target_for
from sencache.cli import main
from sencache.core.profile import SensitivityProfile

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

SIZE = dict(height=32, width=32, num_frames=9)
TEXT = 16
PROMPT = "a red circle moving left"
CLASSES = {"cogvideox": "CogVideoXTransformer3DModel", "ltx": "LTXVideoTransformer3DModel"}
LATENTS = {"cogvideox": [1, 3, 4, 4, 4], "ltx": [1, 3 * 8 * 8, 8]}  # CogVideoX frames-first; LTX packed tokens


@pytest.fixture(scope="module", params=sorted(CLASSES))
def folder(request, tmp_path_factory):
    path = tmp_path_factory.mktemp(request.param)
    save_tiny_pipeline(request.param, path)
    (path / "sencache_call_defaults.json").write_text(json.dumps({"max_sequence_length": TEXT}))
    return request.param, path


def load(path, scheduler: str | None = None):
    import diffusers

    pipe = diffusers.DiffusionPipeline.from_pretrained(path)
    if scheduler:
        pipe.scheduler = getattr(diffusers, scheduler).from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def trajectory_end(pipe, **call):
    target = target_for(pipe, dict(SIZE, max_sequence_length=TEXT, **call))
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    target.set_timesteps(sched, 4)
    denoise, sampler_output = target.denoisers(PROMPT, guided=False)
    with torch.inference_mode():
        start = target.noise(11)
        curves = measure_trajectory(denoise, sched, start, sampler_output=sampler_output, step=target.sampler_step())
    want = pipe(PROMPT, num_inference_steps=4, generator=torch.Generator().manual_seed(11), output_type="latent",
                max_sequence_length=TEXT, **SIZE, **call).frames
    return curves, want


@pytest.mark.parametrize("guidance", [6.0, 1.0])
def test_trajectory_is_the_pipelines_own(folder, guidance):
    kind, path = folder
    schedulers = ["CogVideoXDDIMScheduler", "CogVideoXDPMScheduler"] if kind == "cogvideox" else [None]
    extra = [{}] if kind == "cogvideox" else [{}, {"guidance_rescale": 0.7, "frame_rate": 12}]
    for scheduler in schedulers:
        for call in extra:
            pipe = load(path, scheduler)
            curves, want = trajectory_end(pipe, guidance_scale=guidance, **call)
            assert curves.final.shape == want.shape, (scheduler, call)
            assert torch.equal(curves.final, want), (scheduler, call)
            assert all(v > 0 for v in curves.jx + curves.jt)


def test_calibrate_a_folder(folder, tmp_path, capsys):
    kind, path = folder
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square moving right\n")
    out = tmp_path / "profile.json"
    code = main(["calibrate", "--model", str(path), "--prompts", str(prompts), "--samples", "2", "--steps", "4",
                 "--height", "32", "--width", "32", "--frames", "9", "--target-nfe", "3", "--no-progress",
                 "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    profile = SensitivityProfile.load(out)
    assert profile.metadata["model_class"] == CLASSES[kind] and len(profile.timesteps) == 4
    assert profile.metadata["latent_shape"] == LATENTS[kind]
    assert profile.metadata["recommended_eps"] > 0  # budget mode replays its stored trajectories
    assert "jtt" in profile.curves and "gain" in profile.curves


def test_calibrate_refuses_arguments_it_cannot_reproduce(folder):
    kind, path = folder
    pipe = load(path)
    with pytest.raises(Exception, match="unsupported (CogVideoX|LTX-Video) argument"):
        calibrate(pipe, [PROMPT], num_inference_steps=4, num_samples=1, use_dynamic_cfg=True, **SIZE)


def test_calibrate_refuses_other_pipelines_by_name():
    from sencache.errors import UnsupportedModelError

    class MochiPipeline:  # any pipeline calibration has no target for
        transformer = None

    with pytest.raises(UnsupportedModelError, match="supports WanPipeline, CogVideoXPipeline, LTXPipeline, "
                                                    "HunyuanVideoPipeline and FluxPipeline for now, got MochiPipeline"):
        target_for(MochiPipeline(), {})
