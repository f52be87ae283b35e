"""The image-to-video pipelines, cached and calibrated like their text-to-video siblings, on complete tiny
pipelines built from configs: WanImageToVideoPipeline as Wan 2.1 I2V (CLIP image encoder, image latent on the
channels), Wan 2.2 I2V A14B (two experts, no image encoder) and Wan 2.2 TI2V (``expand_timesteps``: the image
latent is the first frame, whose tokens get t = 0); LTXImageToVideoPipeline (per-token timestep, the first frame
at t = 0 and never stepped); CogVideoXImageToVideoPipeline (image latents on the channels, CogVideoX 1.5's ofs).

For each: the calibration target's trajectory is the pipeline's own, bit for bit; ε = 0 is bit-exact and
``disable()`` restores the pipeline; ε = ∞ gives the exact max_reuse pattern, with the rule reading the noisy
latent and the noisy tokens' timestep; calibrate() gives a valid profile that serves the comparison harness
(sencache against a fixed schedule and diffusers' FirstBlockCache).
"""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch
from conftest import BlockCounter, expected_max_reuse_pattern, flat_profile
from full_pipelines import TEXT_LEN, _cogvideox, _ltx, _wan_vae, build_text_encoder, build_tokenizer, seeded

import sencache
from sencache import SenCacheConfig, SensitivityProfile
from sencache.calibration.calibrate import calibrate
from sencache.calibration.secants import measure_trajectory
from sencache.calibration.targets import target_for
from sencache.harness.compare import compare
from sencache.runtime.call_defaults import set_call_defaults

SIZE = dict(height=32, width=32, num_frames=9)
PROMPT = "a red circle moving left"
STEPS = 6  # Wan 2.2's experts (boundary 0.5, no shift) serve 999, 833, 667, 500 | 333, 167
BOUNDARY = 500.0
CALIBRATION_PROMPTS = ["a red circle", "a blue square moving right"]


@pytest.fixture(scope="module", autouse=True)
def wan_i2v_without_ftfy():
    """diffusers' Wan I2V pipeline calls ``ftfy`` even where it is not installed (its T2V sibling checks first);
    stand in for it the way the T2V pipeline does without it: the text unchanged."""
    import diffusers.pipelines.wan.pipeline_wan_i2v as wan_i2v

    with pytest.MonkeyPatch.context() as patch:
        if not hasattr(wan_i2v, "ftfy"):
            patch.setattr(wan_i2v, "ftfy", types.SimpleNamespace(fix_text=lambda text: text), raising=False)
        yield


# --------------------------------------------------------------------------------------------------
# the tiny pipelines
# --------------------------------------------------------------------------------------------------
def _wan_transformer(seed=0, in_channels=36, image_dim=None):
    from diffusers import WanTransformer3DModel

    # I2V: 16 noisy + 4 mask + 16 image-latent channels in, 16 out; Wan 2.1's image cross-attention needs the
    # added K/V projections (inner dim 2 x 12)
    image = dict(image_dim=image_dim, added_kv_proj_dim=24) if image_dim else {}
    return seeded(WanTransformer3DModel, seed=seed, patch_size=(1, 2, 2), num_attention_heads=2,
                  attention_head_dim=12, in_channels=in_channels, out_channels=16, text_dim=32, freq_dim=32,
                  ffn_dim=32, num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
                  rope_max_seq_len=32, **image)


def _wan(**parts):
    from diffusers import UniPCMultistepScheduler, WanImageToVideoPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    shift = parts.pop("flow_shift", 3.0)
    tokenizer = build_tokenizer()
    return WanImageToVideoPipeline(
        tokenizer=tokenizer, text_encoder=build_text_encoder(UMT5Config, UMT5EncoderModel, len(tokenizer), 32),
        vae=_wan_vae(), scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True,
                                                          flow_shift=shift), **parts)


def wan21():
    from transformers import CLIPImageProcessor, CLIPVisionConfig, CLIPVisionModel

    torch.manual_seed(0)
    encoder = CLIPVisionModel(CLIPVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=2,
                                               num_attention_heads=2, image_size=32, patch_size=8))
    processor = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    return _wan(transformer=_wan_transformer(image_dim=16), image_encoder=encoder, image_processor=processor)


def wan22():
    return _wan(transformer=_wan_transformer(seed=0), transformer_2=_wan_transformer(seed=1),
                boundary_ratio=BOUNDARY / 1000, flow_shift=1.0)


def wan22_ti2v():
    return _wan(transformer=_wan_transformer(in_channels=16), expand_timesteps=True)


def ltx():
    from diffusers import LTXImageToVideoPipeline

    return _ltx(build_tokenizer(), LTXImageToVideoPipeline)[0]


def cogvideox():
    from diffusers import CogVideoXImageToVideoPipeline

    # 4 noisy + 4 image-latent channels in; ofs_embed_dim (CogVideoX 1.5 I2V) must equal time_embed_dim
    return _cogvideox(build_tokenizer(), CogVideoXImageToVideoPipeline, in_channels=8, ofs_embed_dim=8)[0]


BUILDERS = {"wan21": wan21, "wan22": wan22, "wan22_ti2v": wan22_ti2v, "ltx": ltx, "cogvideox": cogvideox}
BLOCKS = {"wan21": "blocks", "wan22": "blocks", "wan22_ti2v": "blocks", "ltx": "transformer_blocks",
          "cogvideox": "transformer_blocks"}
# the latent the rule reads: the scheduler's (Wan (B, C, F, H, W), CogVideoX (B, F, C, H, W), LTX packed tokens)
NOISY = {"wan21": (1, 16, 3, 4, 4), "wan22": (1, 16, 3, 4, 4), "wan22_ti2v": (1, 16, 3, 4, 4), "ltx": (2, 3 * 8 * 8, 8),
         "cogvideox": (2, 3, 4, 4, 4)}  # LTX and CogVideoX batch CFG


def image(seed=0):
    import PIL.Image

    rng = np.random.default_rng(seed)
    return PIL.Image.fromarray((rng.random((32, 32, 3)) * 255).astype(np.uint8))


def build(kind):
    pipe = BUILDERS[kind]()
    pipe.set_progress_bar_config(disable=True)
    return pipe


def call(**extra) -> dict:
    return dict(SIZE, image=image(), max_sequence_length=TEXT_LEN, **extra)


def run(pipe, steps=STEPS, seed=0, **extra):
    kwargs = {**call(), "output_type": "latent", "guidance_scale": 5.0, **extra}
    return pipe(prompt=PROMPT, num_inference_steps=steps, generator=torch.Generator().manual_seed(seed),
                **kwargs).frames


def profile_for(pipe):
    """A flat profile (J_x = 1, J_t = 0.001); Wan 2.2's two experts joined."""
    cls = type(pipe.transformer).__name__
    if getattr(pipe, "transformer_2", None) is None:
        return flat_profile(cls)
    return SensitivityProfile.join_experts({"transformer": flat_profile(cls), "transformer_2": flat_profile(cls)},
                                           boundary_timestep=BOUNDARY)


class Seen:
    """An observer: the latent shape and timesteps the session read on every call."""

    def __init__(self):
        self.shapes, self.timesteps = set(), []

    def on_call(self, event):
        self.shapes.add(tuple(event.latent.shape))
        self.timesteps.append(float(event.timestep[0]))


@pytest.fixture(scope="module", params=sorted(BUILDERS))
def pipe(request):
    return request.param, build(request.param)


# --------------------------------------------------------------------------------------------------
# calibration: the target's trajectory is the pipeline's own
# --------------------------------------------------------------------------------------------------
def variants(kind):
    """(scheduler class or None, extra call arguments) to check the trajectory under."""
    if kind == "cogvideox":  # CogVideoX 1.5's stochastic DPM scheduler carries its clean-sample estimate
        return [(None, {}), ("CogVideoXDPMScheduler", {})]
    if kind == "ltx":
        return [(None, {}), (None, {"guidance_rescale": 0.7, "frame_rate": 12})]
    if kind == "wan22":  # first and last frame given (the condition holds both)
        return [(None, {}), (None, {"last_image": image(2)})]
    return [(None, {})]


@pytest.mark.parametrize("guidance", [5.0, 1.0])
def test_trajectory_is_the_pipelines_own(pipe, guidance):
    import diffusers

    kind, pipe = pipe
    original = pipe.scheduler
    for scheduler, extra in variants(kind):
        if scheduler:
            pipe.scheduler = getattr(diffusers, scheduler).from_config(original.config)
        try:
            target = target_for(pipe, call(guidance_scale=guidance, **extra))
            sched = pipe.scheduler.__class__.from_config(pipe.scheduler.config)
            target.set_timesteps(sched, STEPS)
            denoise, sampler_output = target.denoisers(PROMPT, guided=False)
            with torch.inference_mode():
                start = target.noise(11)
                curves = measure_trajectory(denoise, sched, start, sampler_output=sampler_output,
                                            step=target.sampler_step(), segment_of=target.segment_of())
            want = run(pipe, seed=11, guidance_scale=guidance, **extra)
        finally:
            pipe.scheduler = original
        assert curves.final.shape == want.shape, (scheduler, extra)
        assert torch.equal(curves.final, want), (scheduler, extra)
        assert all(v > 0 for v in curves.jx + curves.jt)


def test_the_image_conditions_the_video(pipe):
    kind, pipe = pipe
    assert not torch.equal(run(pipe, image=image(1), steps=2), run(pipe, steps=2))
    with pytest.raises(sencache.SenCacheError, match="needs the conditioning image"):
        target_for(pipe, dict(SIZE, max_sequence_length=TEXT_LEN))


# --------------------------------------------------------------------------------------------------
# the cache
# --------------------------------------------------------------------------------------------------
def test_eps_zero_is_bit_exact_and_disable_restores(pipe):
    kind, pipe = pipe
    reference = run(pipe)
    cache = sencache.enable(pipe, SenCacheConfig(profile_for(pipe), eps=0.0, max_reuse=3))
    assert torch.equal(run(pipe), reference)
    assert cache.summary()["reused"] == 0 and cache.summary()["steps"] == STEPS
    cache = sencache.enable(pipe, SenCacheConfig(profile_for(pipe), eps=math.inf, max_reuse=3))
    assert not torch.equal(run(pipe), reference)  # caching really changes the output
    cache.disable()
    assert sencache.active_session(pipe) is None
    assert torch.equal(run(pipe), reference)


@pytest.mark.parametrize("max_reuse,final_steps", [(1, 0), (2, 1)])
def test_infinite_eps_gives_the_exact_max_reuse_pattern(pipe, max_reuse, final_steps):
    kind, pipe = pipe
    seen = Seen()
    cache = sencache.enable(pipe, SenCacheConfig(profile_for(pipe), eps=math.inf, max_reuse=max_reuse,
                                                 final_steps=final_steps), observers=[seen])
    experts = {name: getattr(pipe, name) for name in ("transformer", "transformer_2")
               if getattr(pipe, name, None) is not None}
    counters = {name: BlockCounter(module, BLOCKS[kind]) for name, module in experts.items()}
    try:
        run(pipe)
    finally:
        for counter in counters.values():
            counter.remove()
        cache.disable()
    grid = [float(t) for t in pipe.scheduler.timesteps]
    if kind == "wan22":  # each expert from its first step; the low-noise one computes when it takes over
        switch = sum(t >= BOUNDARY for t in grid)
        assert 0 < switch < STEPS - 1
        pattern = expected_max_reuse_pattern(switch, max_reuse, 0) + \
            expected_max_reuse_pattern(STEPS - switch, max_reuse, final_steps)
    else:
        pattern = expected_max_reuse_pattern(STEPS, max_reuse, final_steps)
    expected = [s for s, c in enumerate(pattern) if c]
    assert cache.trace.computed_steps(sample=0) == expected
    summary = cache.summary()
    assert summary["steps"] == STEPS and summary["nfe"] == len(expected)
    for name, counter in counters.items():  # independent counts of real block-stack runs
        assert counter.calls == len({r.call for r in cache.trace.records if r.expert == name and r.computed})
    # the rule read the noisy latent (no conditioning channels) and the noisy tokens' timestep (not the
    # conditioning frame's 0): one per step, per call
    assert seen.shapes == {NOISY[kind]}
    calls_per_step = len(seen.timesteps) // STEPS
    assert seen.timesteps == [t for t in grid for _ in range(calls_per_step)]


# --------------------------------------------------------------------------------------------------
# calibrate, then compare
# --------------------------------------------------------------------------------------------------
def test_calibrate_then_compare(pipe, tmp_path):
    kind, pipe = pipe
    profile = calibrate(pipe, CALIBRATION_PROMPTS, num_inference_steps=STEPS, num_samples=2, progress=False,
                        **call())
    profile = SensitivityProfile.load(profile.save(tmp_path / "profile.json"))
    meta = profile.metadata
    assert meta["pipeline_class"] == type(pipe).__name__ and len(profile.timesteps) == STEPS
    assert meta["latent_shape"][:2] == [1, NOISY[kind][1]]  # the noisy latent, not the conditioning channels
    assert all(np.isfinite(v) and v > 0 for v in profile.jx + profile.jt)
    assert "jtt" in profile.curves and "trajectories" in meta  # what budget mode replays
    for name in ("transformer", "transformer_2"):
        if getattr(pipe, name, None) is not None:
            profile.check_model(getattr(pipe, name), expert=name)
    assert ("experts" in meta) == (kind == "wan22")

    set_call_defaults(pipe, call())  # how generate() (and so the harness) passes the image
    try:
        results = compare(pipe, ["a green triangle moving up"], [0], ["sencache", "fixed", "fbcache"],
                          num_inference_steps=STEPS, profile=profile, use_lpips=False, progress=False,
                          warmup=False, values={"sencache": 1e9})  # a tolerance that reuses wherever allowed
    finally:
        set_call_defaults(pipe, {})
    assert results["reference"]["nfe"] == STEPS  # the independent counter sees every step
    for method in ("sencache", "fixed", "fbcache"):
        entry = results["methods"][method]
        assert entry["available"], (method, entry["skipped"])
        setting = entry["settings"][0]
        assert 1 <= setting["nfe"] <= STEPS and setting["psnr"] is not None, method
    assert results["methods"]["sencache"]["settings"][0]["nfe"] < STEPS
    assert results["methods"]["fixed"]["settings"][0]["nfe"] < STEPS


# --------------------------------------------------------------------------------------------------
# the command line: --image reaches calibration and the comparison
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["wan21", "wan22", "ltx", "cogvideox"])
def test_cli_calibrate_and_compare_with_an_image(kind, tmp_path, capsys):
    import json

    from sencache.cli import main

    folder = tmp_path / "model"
    build(kind).save_pretrained(folder)
    (folder / "sencache_call_defaults.json").write_text(json.dumps({**SIZE, "max_sequence_length": TEXT_LEN}))
    image().save(tmp_path / "first.png")
    (tmp_path / "prompts.txt").write_text("a red circle\na blue square moving right\n")
    (tmp_path / "eval.txt").write_text("a green triangle moving up\n")
    common = ["--model", str(folder), "--steps", str(STEPS)]
    assert main(["calibrate", *common, "--prompts", str(tmp_path / "prompts.txt"), "--samples", "1",
                 "--loop-prompts", "0", "--no-progress", "--out", str(tmp_path / "p.json")]) == 2  # no --image
    assert "pass --image FILE" in capsys.readouterr().err
    assert main(["calibrate", *common, "--image", str(tmp_path / "first.png"), "--prompts",
                 str(tmp_path / "prompts.txt"), "--samples", "1", "--loop-prompts", "0", "--no-progress",
                 "--out", str(tmp_path / "p.json")]) == 0
    profile = SensitivityProfile.load(tmp_path / "p.json")
    assert profile.metadata["pipeline_class"] == type(build(kind)).__name__
    assert main(["compare", *common, "--image", str(tmp_path / "first.png"), "--profile", str(tmp_path / "p.json"),
                 "--prompts", str(tmp_path / "eval.txt"), "--methods", "sencache", "fixed", "--set", "sencache=1e9",
                 "--no-lpips", "--out", str(tmp_path / "cmp")]) == 0
    results = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert results["reference"]["nfe"] == STEPS
    assert results["methods"]["sencache"]["settings"][0]["nfe"] < STEPS


def test_cli_refuses_an_image_for_a_text_to_video_pipeline(tmp_path, capsys):
    from sencache.cli import main

    image().save(tmp_path / "first.png")
    assert main(["generate", "--prompt", "a red circle", "--steps", "4", "--image", str(tmp_path / "first.png"),
                 "--out", str(tmp_path / "c.mp4")]) == 2
    assert "takes no image" in capsys.readouterr().err
    assert main(["generate", "--prompt", "a red circle", "--image", str(tmp_path / "none.png"),
                 "--out", str(tmp_path / "c.mp4")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_profile_records_the_image_and_resume_refuses_another(tmp_path):
    pipe = build("ltx")
    kwargs = dict(num_inference_steps=4, num_samples=2, progress=False, checkpoint=tmp_path / "ck")
    first = calibrate(pipe, CALIBRATION_PROMPTS, **kwargs, **call())
    assert len(first.metadata["conditioning"]["image"]) == 16
    again = calibrate(pipe, CALIBRATION_PROMPTS, resume=True, **kwargs, **call())  # same image: continues
    assert again.metadata["conditioning"] == first.metadata["conditioning"] and again.jx == first.jx
    other = {**call(), "image": image(seed=1)}
    with pytest.raises(sencache.SenCacheError, match="cannot resume"):
        calibrate(pipe, CALIBRATION_PROMPTS, resume=True, **kwargs, **other)
