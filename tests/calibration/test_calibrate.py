"""Calibration: closed-form secants, the tiny Wan model, profile compatibility, CLI errors, plot."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import sencache
from sencache.calibration.calibrate import calibrate
from sencache.calibration.secants import (
    TIMESTEP_UNIT,
    SampleCurves,
    aggregate,
    measure_noised,
    measure_trajectory,
    smooth_121,
)
from sencache.calibration.targets.wan import WanTarget
from sencache.calibration.videos import load_video
from sencache.cli import main
from sencache.core.profile import SensitivityProfile, model_config_hash
from sencache.demo_model.build import TEXT_LEN, build_pipeline, build_scheduler, pipeline_size_kwargs
from sencache.errors import ProfileError, SenCacheError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

WORDS = ["a", "red", "ball", "blue", "box", "moves", "left"]
PROMPTS = ["a red ball moves left", "a blue box"]
SIZE = pipeline_size_kwargs(5, 16, 16)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = build_pipeline(WORDS, seed=0, num_layers=1)
    p.set_progress_bar_config(disable=True)
    return p


@pytest.fixture(scope="module")
def profile(pipe):
    return calibrate(pipe, PROMPTS, num_inference_steps=4, num_samples=3, seed=5, progress=False, **SIZE)


# --- closed form -----------------------------------------------------------------------------
class LinearDenoiser:
    """f(x, t) = A·vec(x) + b·t with a fixed matrix A and a fixed field b, in float64."""

    def __init__(self, shape, seed=0):
        g = torch.Generator().manual_seed(seed)
        n = math.prod(shape)
        self.shape = shape
        self.A = torch.randn(n, n, generator=g, dtype=torch.float64) / math.sqrt(n)
        self.b = torch.randn(shape, generator=g, dtype=torch.float64) * 0.01

    def apply(self, d):
        return (self.A @ d.reshape(-1)).reshape(d.shape)

    def __call__(self, x, t):
        return self.apply(x) + self.b * float(t)


def _rms(x):
    return float(x.pow(2).mean().sqrt())


@pytest.mark.parametrize("with_sampler_output", [False, True])
def test_trajectory_secants_match_closed_form(with_sampler_output):
    shape = (1, 3, 2, 4, 4)
    f = LinearDenoiser(shape)
    # the sampler may step with another output than the measured one (CFG while measuring cond)
    sampler_output = (lambda x, t, out: 1.5 * out - 0.2 * x) if with_sampler_output else None
    sched = build_scheduler()
    sched.set_timesteps(6)
    x0 = torch.randn(shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)

    curves = measure_trajectory(f, sched, x0, sampler_output=sampler_output)

    ref = build_scheduler()  # independent replay of the sampler
    ref.set_timesteps(6)
    ref.set_begin_index(0)
    x, want_jx = x0, []
    for t in ref.timesteps:
        out = f(x, t)
        if sampler_output is not None:
            out = sampler_output(x, t, out)
        x_next = ref.step(out, t, x, return_dict=False)[0]
        d = x_next - x
        want_jx.append(_rms(f.apply(d)) / _rms(d))
        x = x_next
    assert curves.timesteps == [float(t) for t in ref.timesteps]
    np.testing.assert_allclose(curves.jx, want_jx, rtol=1e-5, atol=0)
    np.testing.assert_allclose(curves.jt, [_rms(f.b)] * 6, rtol=1e-5, atol=0)
    assert torch.equal(curves.final, x)  # the measurement did not disturb the sampler
    assert np.ptp(curves.jx) > 1e-3  # the direction matters: a wrong x' would give other values
    assert len(sched.model_outputs) and sched.step_index is None  # the caller's scheduler was not stepped


def test_noised_secants_closed_form():
    shape = (1, 3, 2, 4, 4)
    f = LinearDenoiser(shape, seed=3)
    sched = build_scheduler()
    sched.set_timesteps(5)
    g = torch.Generator().manual_seed(2)
    x0 = torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1
    noise = torch.randn(shape, generator=g, dtype=torch.float64)
    seen = []
    curves = measure_noised(lambda x, t: (seen.append((x, t)), f(x, t))[1], sched, x0, noise)
    np.testing.assert_allclose(curves.jt, [_rms(f.b)] * 5, rtol=1e-5, atol=0)
    sv = torch.linalg.svdvals(f.A)
    assert all(float(sv.min()) - 1e-9 <= v <= float(sv.max()) + 1e-9 for v in curves.jx)
    # x_{t_k} = (1 - sigma_k) x0 + sigma_k eps at the scheduler's sigmas
    firsts = [x for x, _ in seen[0::3]]  # each step: f(x_k, t_k), f(x', t_k), f(x_k, t')
    for k, x in enumerate(firsts):
        s = float(sched.sigmas[k])
        torch.testing.assert_close(x, (1 - s) * x0 + s * noise, rtol=0, atol=1e-12)


def test_smoothing_and_aggregate():
    zigzag = [1.0 + 0.3 * (-1) ** k for k in range(8)]
    smooth = smooth_121(zigzag)
    np.testing.assert_allclose(smooth[1:-1], 1.0, atol=1e-12)  # a step-to-step zig-zag cancels
    ts = [float(t) for t in range(8, 0, -1)]
    ramp = np.arange(1.0, 9.0)
    samples = [SampleCurves(ts, jx=list(ramp * (i + 1)), jt=[z * (i + 1) for z in zigzag]) for i in range(3)]
    raw = aggregate(ts, samples, jt_curve="raw")
    sm = aggregate(ts, samples, jt_curve="smooth")
    assert raw["timesteps"] == ts
    np.testing.assert_allclose(raw["jx"], 2.0 * ramp)
    np.testing.assert_allclose(raw["jt"], np.array(zigzag) * 2.0)
    assert sm["jt"] == sm["curves"]["jt_smooth"] and raw["jt"] == raw["curves"]["jt_raw"]
    np.testing.assert_allclose(raw["spread"]["jx_p50"], 2.0 * ramp)
    np.testing.assert_allclose(raw["spread"]["jx_p10"], 1.2 * ramp)
    np.testing.assert_allclose(raw["spread"]["jt_p90"], np.array(zigzag) * 2.8)
    assert raw["spread"]["count"] == [3.0] * 8
    bad = [SampleCurves(ts, jx=[float("nan")] * 8, jt=[1.0] * 8)]
    with pytest.raises(SenCacheError, match="NaN"):
        aggregate(ts, bad)


# --- the tiny Wan model ----------------------------------------------------------------------
def test_trajectory_is_the_pipelines_own(pipe):
    target = WanTarget(pipe, dict(SIZE))
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    sched.set_timesteps(4)
    denoise, sampler_output = target.denoisers(PROMPTS[0], guided=False)
    with torch.inference_mode():
        curves = measure_trajectory(denoise, sched, target.noise(11), sampler_output=sampler_output)
    want = pipe(PROMPTS[0], num_inference_steps=4, generator=torch.Generator().manual_seed(11), output_type="latent",
                max_sequence_length=TEXT_LEN, **SIZE).frames
    assert torch.equal(curves.final, want)


def test_calibrate_tiny_wan(pipe, profile):
    sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
    sched.set_timesteps(4)
    assert profile.timesteps == [float(t) for t in sched.timesteps]
    for values in (profile.jx, profile.jt, *profile.spread.values(), *profile.curves.values()):
        assert len(values) == 4 and all(math.isfinite(v) and v >= 0 for v in values)
    assert min(profile.jx) > 0 and min(profile.jt) > 0
    m = profile.metadata
    assert m["model_class"] == "WanTransformer3DModel" and m["config_hash"] == model_config_hash(pipe.transformer)
    assert m["branch"] == "cond" and m["guidance"] == 5.0 and m["source"] == "trajectory"
    assert m["seeds"] == [5, 6, 7] and m["prompts"] == [PROMPTS[0], PROMPTS[1], PROMPTS[0]]
    assert m["latent_shape"] == [1, 8, 3, 4, 4] and m["timestep_unit"] == TIMESTEP_UNIT
    assert m["scheduler_class"] == "UniPCMultistepScheduler" and m["shift"] == 2.0
    assert profile.jt == profile.curves["jt_raw"]
    for q in ("p10", "p50", "p90"):
        assert f"jx_{q}" in profile.spread and f"jt_{q}" in profile.spread
    assert all(lo <= mid <= hi for lo, mid, hi in zip(profile.spread["jx_p10"], profile.spread["jx_p50"],
                                                        profile.spread["jx_p90"]))
    # the profile round-trips through JSON
    again = SensitivityProfile.from_dict(json.loads(json.dumps(profile.to_dict())))
    assert again.jx == profile.jx and again.metadata == profile.metadata


def test_calibrate_guided_and_smooth(pipe, profile):
    guided = calibrate(pipe, PROMPTS, num_inference_steps=4, num_samples=3, seed=5, guided=True,
                           jt_curve="smooth", progress=False, **SIZE)
    assert guided.metadata["branch"] == "guided" and guided.metadata["forwards_per_step"] == 6
    assert guided.jt == guided.curves["jt_smooth"]
    assert max(abs(a - b) / b for a, b in zip(guided.jx, profile.jx)) > 1e-3  # another output is measured


def test_calibrate_without_cfg_uses_three_forwards(pipe):
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *a: calls.append(1))
    try:
        prof = calibrate(pipe, PROMPTS[:1], num_inference_steps=3, num_samples=1, guidance_scale=1.0,
                             progress=False, **SIZE)
    finally:
        handle.remove()
    assert len(calls) == 3 * 3 and prof.metadata["forwards_per_step"] == 3 and prof.metadata["guidance"] == 1.0


def test_calibrate_from_videos(pipe, tmp_path):
    import imageio.v2 as iio

    rng = np.random.default_rng(0)
    np.save(tmp_path / "a.npy", rng.integers(0, 256, (6, 20, 24, 3), dtype=np.uint8))
    (tmp_path / "a.txt").write_text("a blue box\n")
    iio.mimsave(tmp_path / "b.gif", list(rng.integers(0, 256, (3, 16, 16, 3), dtype=np.uint8)))
    prof = calibrate(pipe, ["a red ball"], num_inference_steps=3, num_samples=3, videos=tmp_path,
                         progress=False, **SIZE)
    m = prof.metadata
    assert m["source"] == "videos" and m["videos"] == ["a.npy", "b.gif"]
    assert m["prompts"] == ["a blue box", "a red ball", "a blue box"]
    assert len(prof.jx) == 3 and all(math.isfinite(v) and v > 0 for v in prof.jx + prof.jt)
    # a video is resized to the model's size (5 frames, 16x16) and encoded by its VAE: latent (8, 3, 4, 4)
    target = WanTarget(pipe, dict(SIZE))
    assert tuple(target.encode_video(load_video(tmp_path / "a.npy")).shape) == (1, 8, 3, 4, 4)


def test_load_video_errors(tmp_path):
    (tmp_path / "junk.mp4").write_bytes(b"not a video")
    with pytest.raises(SenCacheError, match="junk.mp4"):
        load_video(tmp_path / "junk.mp4")
    np.save(tmp_path / "f.npy", np.zeros((2, 4, 4, 3), dtype=np.float32))
    with pytest.raises(SenCacheError, match="f.npy.*uint8"):
        load_video(tmp_path / "f.npy")


def test_calibrate_argument_errors(pipe):
    with pytest.raises(SenCacheError, match="num_samples"):
        calibrate(pipe, PROMPTS, num_samples=0, progress=False)
    with pytest.raises(SenCacheError, match="num_inference_steps must be an integer >= 2"):
        calibrate(pipe, PROMPTS, num_inference_steps=1, progress=False)
    with pytest.raises(SenCacheError, match="prompt"):
        calibrate(pipe, [], progress=False)
    with pytest.raises(SenCacheError, match="output_type"):
        calibrate(pipe, PROMPTS, output_type="latent", progress=False)
    with pytest.raises(sencache.UnsupportedModelError):
        calibrate(object(), PROMPTS, progress=False)


# --- the profile serves the model at other sizes, and only that model ---------------------------
def test_profile_serves_other_resolution_and_steps(pipe, profile):
    cache = sencache.enable(pipe, sencache.SenCacheConfig(profile, eps=1e6, eps_start=1e6, max_reuse=2))
    try:
        out = pipe(PROMPTS[1], num_inference_steps=7, generator=torch.Generator().manual_seed(0), output_type="latent",
                   max_sequence_length=TEXT_LEN, **pipeline_size_kwargs(5, 16, 32)).frames
    finally:
        sencache.disable(pipe)
    assert out.shape == (1, 8, 3, 4, 8) and bool(torch.isfinite(out).all())
    assert any(not r.computed for r in cache.trace.records)  # the profile was used to reuse steps


def test_profile_of_another_model_is_refused(pipe, profile):
    from diffusers import WanPipeline, WanTransformer3DModel

    class OtherTransformer(WanTransformer3DModel):
        pass

    other = WanPipeline(tokenizer=pipe.tokenizer, text_encoder=pipe.text_encoder, vae=pipe.vae,
                        scheduler=pipe.scheduler.__class__.from_config(pipe.scheduler.config),
                        transformer=OtherTransformer(**{k: v for k, v in pipe.transformer.config.items()
                                                        if not k.startswith("_")}))
    foreign = calibrate(other, PROMPTS[:1], num_inference_steps=2, num_samples=1, progress=False, **SIZE)
    assert foreign.metadata["model_class"] == "OtherTransformer"
    with pytest.raises(ProfileError, match="OtherTransformer"):
        sencache.enable(pipe, sencache.SenCacheConfig(foreign, eps=0.1))
    bigger = build_pipeline(WORDS, seed=0, num_layers=2)  # same class, another config
    with pytest.raises(ProfileError, match="another config"):
        sencache.enable(bigger, sencache.SenCacheConfig(profile, eps=0.1))


def test_calibrate_refuses_an_enabled_cache(pipe, profile):
    sencache.enable(pipe, sencache.SenCacheConfig(profile, eps=0.1))
    try:
        with pytest.raises(SenCacheError, match="disable"):
            calibrate(pipe, PROMPTS, num_inference_steps=2, num_samples=1, progress=False, **SIZE)
    finally:
        sencache.disable(pipe)


# --- CLI -------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_dir(pipe, tmp_path_factory):
    path = tmp_path_factory.mktemp("tinywan") / "pipe"
    pipe.save_pretrained(path)
    return path


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.txt"
    path.write_text("a red ball moves left\n\na blue box\n")
    return path


def _cli_args(model_dir, prompts, out, *extra):
    return ["calibrate", "--model", str(model_dir), "--prompts", str(prompts), "--steps", "3", "--samples", "2",
            "--frames", "5", "--height", "16", "--width", "16", "--out", str(out), "--no-progress", *extra]


def test_cli_calibrate_and_plot(model_dir, prompt_file, tmp_path, capsys):
    out = tmp_path / "prof" / "profile.json"
    assert main(_cli_args(model_dir, prompt_file, out, "--guidance", "3")) == 0
    prof = SensitivityProfile.load(out)
    assert len(prof.timesteps) == 3 and prof.metadata["guidance"] == 3.0 and prof.metadata["num_samples"] == 2
    assert prof.metadata["latent_shape"] == [1, 8, 3, 4, 4]
    png = tmp_path / "p.png"
    assert main(["plot-profile", str(out), "--out", str(png)]) == 0
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000
    assert main(["plot-profile", str(out)]) == 0 and out.with_suffix(".png").is_file()
    assert not list(tmp_path.rglob("*.tmp*"))


def _bad_cases(tmp_path, model_dir, prompt_file):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    videos = tmp_path / "videos"
    videos.mkdir()
    (videos / "broken.mp4").write_bytes(b"junk")
    return {
        "empty prompt file": (_cli_args(model_dir, empty, "{out}"), "no prompts"),
        "samples 0": (_cli_args(model_dir, prompt_file, "{out}", "--samples", "0"), "--samples"),
        "unreadable video": (_cli_args(model_dir, prompt_file, "{out}", "--videos", str(videos)), "broken.mp4"),
        "missing model dir": (_cli_args(tmp_path / "nowhere", prompt_file, "{out}"), "nowhere"),
        "not a model dir": (_cli_args(videos, prompt_file, "{out}"), "model_index.json"),
        "missing prompt file": (_cli_args(model_dir, tmp_path / "nope.txt", "{out}"), "nope.txt"),
        "frames the VAE cannot take": (_cli_args(model_dir, prompt_file, "{out}") + ["--frames", "8"], "1 + 4k frames"),
    }


@pytest.mark.parametrize("case", ["empty prompt file", "samples 0", "unreadable video", "missing model dir",
                                  "not a model dir", "missing prompt file", "frames the VAE cannot take"])
def test_cli_bad_input(case, model_dir, prompt_file, tmp_path, capsys):
    argv, needle = _bad_cases(tmp_path, model_dir, prompt_file)[case]
    out = tmp_path / "out" / "profile.json"
    argv = [str(out) if a == "{out}" else a for a in argv]
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("error:") == 1 and "Traceback" not in err, err
    assert err.splitlines()[-1].startswith("sencache calibrate: error:") and needle in err.splitlines()[-1], err
    assert not out.exists() and not (tmp_path / "out").exists()


def test_cli_default_model(monkeypatch, prompt_file, tmp_path, capsys, model_dir):
    import sencache.demo_model as demo

    out = tmp_path / "profile.json"
    monkeypatch.delattr(demo, "DEFAULT_MODEL_DIR", raising=False)
    argv = _cli_args(model_dir, prompt_file, out)
    del argv[1:3]  # no --model
    assert main(argv) == 2
    assert "--model" in capsys.readouterr().err and not out.exists()
    monkeypatch.setattr(demo, "DEFAULT_MODEL_DIR", model_dir, raising=False)
    assert main(argv) == 0 and SensitivityProfile.load(out).metadata["model_dir"] == str(model_dir)


def test_plot_profile_bad_input(tmp_path, capsys):
    assert main(["plot-profile", str(tmp_path / "missing.json")]) == 2
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    assert main(["plot-profile", str(bad)]) == 2
    assert not list(tmp_path.glob("*.png"))
