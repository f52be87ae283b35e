"""The demo model's assembly: size arguments the VAE can honour, recognising a demo pipeline, and the latent
normalisation that WanPipeline undoes before decoding."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sencache.demo_model import data
from sencache.demo_model.build import VAE_CONFIG, build_vae, encode_clips, is_demo_pipeline, pipeline_size_kwargs

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)


def test_size_arguments_follow_the_vae():
    assert pipeline_size_kwargs(9, 32, 32) == {"num_frames": 9, "height": 32, "width": 32}
    for frames in (8, 7):  # the VAE encodes the first frame alone, then chunks of 4: 7 frames would lose 2
        with pytest.raises(ValueError, match="1 \\+ 4k frames"):
            pipeline_size_kwargs(frames, 32, 32)
    with pytest.raises(ValueError, match="multiples of 16"):
        pipeline_size_kwargs(9, 24, 32)


def test_demo_pipeline_is_recognised_by_its_vae(tmp_path):
    from conftest import tiny_cogvideox, tiny_wan

    pipe = tiny_wan()
    assert is_demo_pipeline(pipe)
    pipe.vae.save_pretrained(tmp_path)  # the JSON round trip turns tuples/lists alike: still recognised
    from diffusers import AutoencoderKLWan

    pipe.vae = AutoencoderKLWan.from_pretrained(tmp_path)
    assert is_demo_pipeline(pipe)
    pipe.vae = AutoencoderKLWan(**{**VAE_CONFIG, "z_dim": 4, "latents_mean": [0.0] * 4, "latents_std": [1.0] * 4})
    assert not is_demo_pipeline(pipe)  # another VAE: another model, WanPipeline's own defaults apply
    assert not is_demo_pipeline(tiny_cogvideox())


def test_demo_family_with_an_experimental_vae_still_gets_demo_sized_clips():
    """A pipeline over the demo captions' words with a space /2 VAE (as `train_vae --vae-overrides` makes) is still
    a demo pipeline, so generate() makes 9x32x32 clips instead of Wan's 81x480x832."""
    from sencache.demo_model.build import build_pipeline
    from sencache.runtime.generation import generate

    vae = build_vae(dim_mult=[1, 2], temperal_downsample=[True], scale_factor_spatial=2)
    pipe = build_pipeline(data.vocabulary(), vae=vae, num_layers=1)
    assert is_demo_pipeline(pipe)
    frames = generate(pipe, "a small red circle moving left on a plain background", seed=0,
                      num_inference_steps=2).frames
    assert frames.shape == (9, 32, 32, 3)
    other_words = build_pipeline(data.vocabulary()[:-1], vae=vae, num_layers=1)
    assert not is_demo_pipeline(other_words)  # neither the demo VAE nor the demo words: Wan's own defaults apply


def test_encoded_clips_are_normalised_the_way_wanpipeline_undoes_it():
    vae = build_vae(seed=0).eval()
    mean, std = [0.1 * i for i in range(8)], [0.5 + 0.1 * i for i in range(8)]
    vae.register_to_config(latents_mean=mean, latents_std=std)
    frames = np.stack([data.make_sample(np.random.default_rng(s)).frames for s in range(2)])
    z = encode_clips(vae, frames)
    assert z.shape == (2, 8, 5, 8, 8)
    # WanPipeline before decoding: latents / (1 / latents_std) + latents_mean must give back the VAE's own latent
    raw = vae.encode(torch.as_tensor(frames).float().div(127.5).sub(1).permute(0, 4, 1, 2, 3)).latent_dist.mean
    undone = z / (1.0 / torch.tensor(std).view(1, -1, 1, 1, 1)) + torch.tensor(mean).view(1, -1, 1, 1, 1)
    torch.testing.assert_close(undone, raw, atol=1e-5, rtol=1e-5)
