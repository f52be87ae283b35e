"""The demo family's CogVideoX and LTX members (and Wan, through the same interface): each trains on the target
its own pipeline's sampler follows, stores its latent statistics where its pipeline reads them, and exports a
folder its diffusers pipeline loads and generates from."""

import csv
import json

import pytest
import torch

from sencache.demo_model import data, train, train_vae
from sencache.demo_model.systems import SYSTEMS, system, weights_dir
from sencache.errors import SenCacheError
from sencache.runtime.generation import generate
from sencache.runtime.loading import load_pipeline

TINY = {"num_layers": 1}


@pytest.fixture(autouse=True)
def keep_torch_threads():
    """The training scripts set torch's thread count (--threads 1): give later tests back what they had."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)
LATENT = (8, 5, 8, 8)  # every member's latent of a 9x32x32 clip


def tiny_pipe(name):
    return system(name).build_pipeline(data.vocabulary(), seed=0, **TINY)


def oracle_prediction(name, pipe, xt, t, x0):
    """What a perfect model predicts at (xt, t) when the clean latent is x0, by each architecture's convention."""
    if name == "cogvideox":  # v = sqrt(abar) eps - sqrt(1 - abar) x0, from x_t = sqrt(abar) x0 + sqrt(1 - abar) eps
        abar = pipe.scheduler.alphas_cumprod[t.long().cpu()].view(-1, 1, 1, 1, 1).to(xt)
        eps = (xt - abar.sqrt() * x0) / (1 - abar).sqrt().clamp_min(1e-12)
        return abar.sqrt() * eps - (1 - abar).sqrt() * x0
    sigma = (t / 1000.0).view(-1, *([1] * (xt.dim() - 1))).to(xt)  # flow: x_t = (1 - s) x0 + s noise, v = noise - x0
    return (xt - x0) / sigma


def pipeline_layout(name, pipe, x0):
    """x0 (B, C, F, H, W) in the layout the member's pipeline hands its transformer."""
    if name == "cogvideox":
        return x0.permute(0, 2, 1, 3, 4)
    if name == "ltx":
        return pipe._pack_latents(x0, 1, 1)
    return x0


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_training_target_is_what_the_pipelines_sampler_follows(name):
    """The target of training is a perfect model's prediction, and a pipeline run on those predictions lands on
    the clean latent: so training teaches what the member's own scheduler needs."""
    pipe = tiny_pipe(name)
    x0 = torch.randn(2, *LATENT, generator=torch.Generator().manual_seed(1))
    inputs, target = system(name).training_example(pipe, x0, ["a red circle moving left", ""],
                                                   torch.Generator().manual_seed(2))
    laid_out = pipeline_layout(name, pipe, x0)
    assert inputs["hidden_states"].shape == laid_out.shape
    expected = oracle_prediction(name, pipe, inputs["hidden_states"], inputs["timestep"], laid_out)
    torch.testing.assert_close(target, expected, rtol=1e-4, atol=1e-4)

    one = laid_out[:1]
    pipe.transformer.forward = lambda hidden_states, timestep, **_: (
        oracle_prediction(name, pipe, hidden_states, timestep.expand(hidden_states.shape[0]), one),)
    pipe.set_progress_bar_config(disable=True)
    out = pipe("a red circle", num_inference_steps=12, guidance_scale=1.0, output_type="latent",
               generator=torch.Generator().manual_seed(3), **system(name).call_kwargs())
    latents = out.frames
    torch.testing.assert_close(latents, one, rtol=0, atol=1e-2)  # a wrong convention is off by O(1)


@pytest.mark.parametrize("name", list(SYSTEMS))
def test_training_feeds_the_transformer_what_the_pipeline_feeds_it(name):
    """Same keywords, shapes and text encoding as the pipeline's own transformer call (captured in a real run)."""
    pipe = tiny_pipe(name)
    seen = {}
    original = pipe.transformer.forward

    def spy(*args, **kwargs):
        seen.setdefault("kwargs", kwargs)
        return original(*args, **kwargs)

    pipe.transformer.forward = spy
    pipe.set_progress_bar_config(disable=True)
    caption = "a blue square moving up"
    pipe(caption, num_inference_steps=1, guidance_scale=1.0, output_type="latent", **system(name).call_kwargs())
    inputs, _ = system(name).training_example(pipe, torch.zeros(1, *LATENT), [caption],
                                              torch.Generator().manual_seed(0))
    ran = seen["kwargs"]
    for key, value in inputs.items():
        assert key in ran
        if key == "timestep":
            continue
        if torch.is_tensor(value):
            assert value.shape == ran[key].shape, key
            if key != "hidden_states":
                torch.testing.assert_close(value, ran[key].to(value.dtype))  # text and masks: exactly the pipeline's
        else:
            assert value == pytest.approx(ran[key]), key


def losses(folder, name):
    with open(folder / name) as f:
        return [float(r["loss"]) for r in csv.DictReader(f)]


@pytest.mark.parametrize("name", ["cogvideox", "ltx"])
def test_vae_then_transformer_train_deterministically_and_export_a_loadable_pipeline(tmp_path, name):
    vae_run = tmp_path / "vae"
    train_vae.train(train_vae.parse_args(["--system", name, "--out", str(vae_run), "--steps", "2", "--batch-size", "1",
                                          "--threads", "1"]))
    vae = system(name).load_vae(vae_run / "vae")
    if name == "ltx":  # LTXPipeline reads the statistics from the VAE's buffers
        assert not torch.equal(vae.latents_std, torch.ones(8)) and bool((vae.latents_std > 0).all())
    else:  # CogVideoXPipeline divides by one scaling factor
        assert vae.config.scaling_factor != 1.0 and vae.config.scaling_factor > 0
    z = system(name).encode_clips(vae, data.make_sample(__import__("numpy").random.default_rng(5)).frames[None])
    assert z.shape == (1, *LATENT)

    def run(folder, *extra):
        train.train(train.parse_args(["--system", name, "--vae", str(vae_run / "vae"), "--out", str(folder),
                                      "--steps", "2", "--batch-size", "2", "--threads", "1", "--warmup", "1",
                                      "--transformer-overrides", json.dumps(TINY), *extra]))
        return losses(folder, "loss.csv")

    first = run(tmp_path / "a")
    assert first == run(tmp_path / "b")
    assert first != run(tmp_path / "c", "--seed", "1")
    with pytest.raises(SenCacheError, match="architecture"):  # a different size is refused by name
        run(tmp_path / "d", "--init-from", str(tmp_path / "a" / "pipeline"), "--transformer-overrides",
            json.dumps({"num_layers": 2}))

    pipe = load_pipeline(tmp_path / "a" / "pipeline")
    assert type(pipe).__name__ == {"cogvideox": "CogVideoXPipeline", "ltx": "LTXPipeline"}[name]
    frames = generate(pipe, "a red circle moving left", 0, num_inference_steps=2, guidance_scale=5.0).frames
    assert frames.shape == (data.FRAMES, data.SIZE, data.SIZE, 3)


def test_unknown_system_is_refused_with_the_choices():
    with pytest.raises(SenCacheError, match="wan, cogvideox, ltx"):
        weights_dir("sora")


def test_grow_is_refused_for_members_it_does_not_know(tmp_path):
    with pytest.raises(SenCacheError, match="wan member only"):
        train.train(train.parse_args(["--system", "ltx", "--vae", str(tmp_path), "--out", str(tmp_path / "o"),
                                      "--init-from", str(tmp_path), "--grow", "--threads", "1"]))
