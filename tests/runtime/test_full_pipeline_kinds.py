"""The tiny Wan 2.2 (two experts), Flux and HunyuanVideo pipelines of full_pipelines.py: each saves, loads with
``DiffusionPipeline.from_pretrained`` and generates from a text prompt through ``generate()`` (Flux, an image
model, as a one-frame clip); Wan 2.2's experts split the steps at the boundary; `sencache generate --cache none`
runs on the folders."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from full_pipelines import (
    CALL_DEFAULTS_FILE,
    WAN22_BOUNDARY_RATIO,
    build_pipeline,
    hunyuan_template,
    save_tiny_pipeline,
)

from sencache.cli import main
from sencache.runtime.call_defaults import read_call_defaults, set_call_defaults
from sencache.runtime.generation import generate

PIPELINES = {"wan22": "WanPipeline", "flux": "FluxPipeline", "hunyuanvideo": "HunyuanVideoPipeline"}
SHAPES = {"wan22": (9, 32, 32, 3), "flux": (1, 64, 64, 3), "hunyuanvideo": (9, 32, 32, 3)}  # the call defaults'
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("kinds")
    for kind in PIPELINES:
        save_tiny_pipeline(kind, root / kind)
    return root


def load(path):
    """The saved pipeline through plain ``DiffusionPipeline.from_pretrained``, with its folder's call defaults
    attached (what sencache's loader does)."""
    from diffusers import DiffusionPipeline

    pipe = DiffusionPipeline.from_pretrained(path)
    pipe.set_progress_bar_config(disable=True)
    set_call_defaults(pipe, read_call_defaults(path))
    return pipe


def twice(timesteps):
    """Each step's timestep twice: the conditional and the unconditional pass (guidance 5)."""
    return [t for t in timesteps for _ in range(2)]


def run(pipe, seed=0, prompt=PROMPT, steps=4, **kwargs):
    return generate(pipe, prompt, seed, num_inference_steps=steps, **kwargs).frames


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_saves_loads_and_generates_deterministically(folders, kind):
    path = folders / kind
    assert (path / CALL_DEFAULTS_FILE).is_file()
    pipe = load(path)
    assert type(pipe).__name__ == PIPELINES[kind]
    clip = run(pipe)
    assert clip.shape == SHAPES[kind] and clip.dtype == np.float32
    assert np.isfinite(clip).all() and clip.min() >= 0.0 and clip.max() <= 1.0 and clip.std() > 0
    assert np.array_equal(run(pipe), clip)  # the same seed, the same clip
    assert not np.array_equal(run(pipe, seed=1), clip)
    assert not np.array_equal(run(pipe, prompt="a blue square standing still"), clip)  # the text gets through
    fresh, call = build_pipeline(kind)  # seeded components: the folder holds what a new build makes
    for name, component in fresh.components.items():
        if isinstance(component, torch.nn.Module):
            loaded = getattr(pipe, name).state_dict()
            assert all(torch.equal(v, loaded[k]) for k, v in component.state_dict().items()), name
    set_call_defaults(fresh, call)
    # the same weights, but not the same memory (safetensors vs fresh tensors): on some CPUs the kernels then
    # round the last bit differently
    np.testing.assert_allclose(run(fresh), clip, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kind", ["flux", "hunyuanvideo"])
def test_both_block_stacks_are_there(kind):
    transformer = build_pipeline(kind)[0].transformer
    assert len(transformer.transformer_blocks) >= 2 and len(transformer.single_transformer_blocks) >= 2


@pytest.mark.parametrize("steps", [4, 6])
def test_wan22_experts_split_the_steps_at_the_boundary(folders, steps):
    pipe = load(folders / "wan22")
    assert pipe.config.boundary_ratio == WAN22_BOUNDARY_RATIO
    high, low = pipe.transformer, pipe.transformer_2
    assert any(not torch.equal(a, b) for a, b in zip(high.parameters(), low.parameters()))  # two sets of weights
    served = {"transformer": [], "transformer_2": []}
    hooks = [module.register_forward_pre_hook(
        lambda _, args, kwargs, name=name: served[name].append(float(kwargs["timestep"][0])), with_kwargs=True)
        for name, module in (("transformer", high), ("transformer_2", low))]
    try:
        run(pipe, steps=steps, guidance_scale=5.0)
    finally:
        for hook in hooks:
            hook.remove()
    grid = [float(t) for t in pipe.scheduler.timesteps]
    assert len(grid) == steps
    boundary = WAN22_BOUNDARY_RATIO * pipe.scheduler.config.num_train_timesteps
    below = [t for t in grid if t < boundary]
    assert below and len(below) < steps  # both experts serve
    assert served["transformer_2"] == twice(below)
    assert served["transformer"] == twice([t for t in grid if t >= boundary])


def test_flux_is_a_one_frame_clip_whatever_the_frame_defaults(folders):
    pipe = load(folders / "flux")
    clip = run(pipe)
    set_call_defaults(pipe, {**read_call_defaults(folders / "flux"), "num_frames": 9})  # as `--frames 9` attaches
    assert np.array_equal(run(pipe), clip)  # FluxPipeline takes no num_frames: the default is left out
    assert run(pipe, height=32, width=48).shape == (1, 32, 48, 3)
    guided = run(pipe, negative_prompt="a blue square", true_cfg_scale=2.0)
    assert np.isfinite(guided).all() and not np.array_equal(guided, clip)


def test_hunyuanvideo_template_is_cropped_at_the_prompt(folders):
    """The pipeline's default crop_start (95) counts the real Llama 3 tokenizer's template head; the tiny
    tokenizer splits that head into fewer tokens, so the default would crop the prompt's first words away. The
    folder's call defaults carry the same template with its own crop_start."""
    pipe = load(folders / "hunyuanvideo")
    template = read_call_defaults(folders / "hunyuanvideo")["prompt_template"]
    assert template["template"] == hunyuan_template()
    ids = pipe.tokenizer(template["template"].format(PROMPT))["input_ids"][template["crop_start"]:]
    assert pipe.tokenizer.convert_ids_to_tokens(ids) == PROMPT.split() + ["<|eot_id|>"]
    _, _, mask = pipe.encode_prompt(PROMPT, prompt_template=template, max_sequence_length=16, device="cpu")
    assert int(mask.sum()) == len(PROMPT.split()) + 1
    _, _, cropped = pipe.encode_prompt(PROMPT, max_sequence_length=16, device="cpu")  # the default template
    assert int(cropped.sum()) < len(PROMPT.split())


@pytest.mark.parametrize("kind", sorted(PIPELINES))
def test_cli_generate_without_a_cache_or_profile(folders, kind, tmp_path, capsys):
    out = tmp_path / "clip.mp4"
    code = main(["generate", "--model", str(folders / kind), "--cache", "none", "--prompt", PROMPT, "--steps", "4",
                 "--out", str(out), "--save-npy"])
    assert code == 0, capsys.readouterr().err
    clip = np.load(out.with_suffix(".npy"))
    assert clip.shape == SHAPES[kind] and np.isfinite(clip).all()
