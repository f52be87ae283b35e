"""Tiny diffusers pipelines built from configs (no network), shared by the tests."""

from __future__ import annotations

import os

import pytest
import torch

torch.set_num_threads(int(os.environ.get("SENCACHE_TEST_THREADS", "1")))

WORDS = "a red blue circle square moving left right".split()


def tiny_wan(num_layers: int = 2, seed: int = 0):
    from sencache.demo_model.build import build_pipeline

    pipe = build_pipeline(WORDS, seed=seed, num_layers=num_layers, num_attention_heads=2, attention_head_dim=16,
                          ffn_dim=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def wan_kwargs(steps: int = 10, guidance: float = 5.0) -> dict:
    from sencache.demo_model.build import TEXT_LEN, pipeline_size_kwargs

    return dict(num_inference_steps=steps, guidance_scale=guidance, output_type="latent",
                max_sequence_length=TEXT_LEN, **pipeline_size_kwargs(5, 16, 16))


def tiny_cogvideox(seed: int = 0):
    from diffusers import CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel

    torch.manual_seed(seed)
    transformer = CogVideoXTransformer3DModel(
        num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
        text_embed_dim=16, num_layers=2, sample_width=8, sample_height=8, sample_frames=9, patch_size=2,
        temporal_compression_ratio=4, max_text_seq_length=8,
    )
    pipe = CogVideoXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                             scheduler=CogVideoXDDIMScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def cog_kwargs(batch: int = 1, steps: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(100 + seed)
    return dict(prompt_embeds=torch.randn(batch, 8, 16, generator=g),
                negative_prompt_embeds=torch.randn(batch, 8, 16, generator=g),
                height=64, width=64, num_frames=9, num_inference_steps=steps, guidance_scale=6.0,
                output_type="latent", max_sequence_length=8)


def tiny_ltx(seed: int = 0):
    from diffusers import FlowMatchEulerDiscreteScheduler, LTXPipeline, LTXVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = LTXVideoTransformer3DModel(
        in_channels=8, out_channels=8, patch_size=1, patch_size_t=1, num_attention_heads=2, attention_head_dim=8,
        cross_attention_dim=16, num_layers=2, caption_channels=16,
    )
    pipe = LTXPipeline(tokenizer=None, text_encoder=None, vae=None, transformer=transformer,
                       scheduler=FlowMatchEulerDiscreteScheduler())
    pipe.set_progress_bar_config(disable=True)
    return pipe


def ltx_kwargs(batch: int = 1, steps: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(200 + seed)
    mask = torch.ones(batch, 8)
    return dict(prompt_embeds=torch.randn(batch, 8, 16, generator=g), prompt_attention_mask=mask,
                negative_prompt_embeds=torch.randn(batch, 8, 16, generator=g), negative_prompt_attention_mask=mask,
                height=128, width=128, num_frames=9, num_inference_steps=steps, guidance_scale=3.0,
                output_type="latent")


def tiny_flux(seed: int = 0):
    """FLUX: two block lists (dual-stream transformer_blocks, then single_transformer_blocks), embeddings passed in."""
    from diffusers import FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=16, num_layers=2, num_single_layers=2, attention_head_dim=8, num_attention_heads=2,
        joint_attention_dim=16, pooled_projection_dim=8, guidance_embeds=False, axes_dims_rope=(2, 2, 4))
    pipe = FluxPipeline(scheduler=FlowMatchEulerDiscreteScheduler(), vae=None, text_encoder=None, tokenizer=None,
                        text_encoder_2=None, tokenizer_2=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flux_kwargs(batch: int = 1, steps: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(300 + seed)
    return dict(prompt_embeds=torch.randn(batch, 8, 16, generator=g),
                pooled_prompt_embeds=torch.randn(batch, 8, generator=g),
                height=32, width=32, num_inference_steps=steps, output_type="latent")


def tiny_hunyuan(seed: int = 0):
    """HunyuanVideo: dual-stream then single-stream blocks (and a token refiner inside its text embedder)."""
    from diffusers import FlowMatchEulerDiscreteScheduler, HunyuanVideoPipeline, HunyuanVideoTransformer3DModel

    torch.manual_seed(seed)
    transformer = HunyuanVideoTransformer3DModel(
        in_channels=4, out_channels=4, num_attention_heads=2, attention_head_dim=8, num_layers=2, num_single_layers=2,
        num_refiner_layers=1, mlp_ratio=2.0, patch_size=1, patch_size_t=1, text_embed_dim=16,
        pooled_projection_dim=8, rope_axes_dim=(2, 2, 4), guidance_embeds=True)
    pipe = HunyuanVideoPipeline(text_encoder=None, tokenizer=None, transformer=transformer, vae=None,
                                scheduler=FlowMatchEulerDiscreteScheduler(), text_encoder_2=None, tokenizer_2=None)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def hunyuan_kwargs(batch: int = 1, steps: int = 8, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(400 + seed)
    mask = torch.ones(batch, 8, dtype=torch.long)
    mask[:, 6:] = 0  # padded text tokens: the attention mask is a batch-first argument of every block
    return dict(prompt_embeds=torch.randn(batch, 8, 16, generator=g),
                pooled_prompt_embeds=torch.randn(batch, 8, generator=g),
                prompt_attention_mask=mask, height=32, width=32, num_frames=5, num_inference_steps=steps,
                output_type="latent")


def flat_profile(model_class: str, jx: float = 1.0, jt: float = 0.001, **meta):
    from sencache import SensitivityProfile

    return SensitivityProfile([0.0, 1000.0], [jx, jx], [jt, jt], model_class=model_class, **meta)


class RowRule:
    """A test rule: the rows in ``rows`` reuse on odd steps, every other row computes (subset mode)."""

    name = "rows"

    def __init__(self, rows):
        self.rows = rows

    def build_rule(self):
        return self

    def new_state(self, batch):
        return batch

    def decide(self, batch, inp):
        reuse = torch.zeros(batch, dtype=torch.bool)
        if inp.step % 2 == 1:
            reuse[list(self.rows)] = True
        from sencache.core.rules.base import Decision

        return Decision(reuse=reuse, score=None, eps=0.0)

    def observe_refresh(self, state, inp, rows, residual):
        pass


class BlockCounter:
    """Independent count of block-stack executions: a plain torch pre-hook on the first block's
    self-attention, which runs only when the block's real forward runs (not when a hook skips it)."""

    def __init__(self, transformer, attr: str):
        self.calls = 0
        self.handle = getattr(transformer, attr)[0].attn1.register_forward_pre_hook(self._count)

    def _count(self, module, args):
        self.calls += 1

    def remove(self):
        self.handle.remove()


# every device this machine has: the CPU always, CUDA as well on a GPU box (CI stays CPU-only)
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def to_device(kwargs: dict, device) -> dict:
    """Pipeline keyword arguments with every tensor (prompt embeddings, masks) moved to ``device``."""
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}


@pytest.fixture(params=DEVICES)
def device(request) -> torch.device:
    """Run the test once per device of this machine."""
    return torch.device(request.param)


@pytest.fixture
def wan_pipe():
    return tiny_wan()


WALL_CLOCK_KEYS = {"wall_s", "speedup", "seconds"}  # the only fields two runs of the same work may differ in


def without_wall_clock(value, extra: frozenset = frozenset()):
    """``value`` (nested dicts/lists) without wall-clock fields (and ``extra`` keys)."""
    drop = WALL_CLOCK_KEYS | set(extra)
    if isinstance(value, dict):
        return {k: without_wall_clock(v, extra) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [without_wall_clock(v, extra) for v in value]
    return value


class Interrupt(Exception):
    """A run killed midway (raised by :func:`counting_calls`)."""


def counting_calls(monkeypatch, module, name: str, fail_at: int | None = None) -> list:
    """Count the calls of ``module.name`` (and raise Interrupt at the ``fail_at``-th, as a killed run stops)."""
    calls, real = [], getattr(module, name)

    def counted(*args, **kwargs):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(module, name, counted)
    return calls


def expected_max_reuse_pattern(num_steps: int, max_reuse: int, final_steps: int) -> list[bool]:
    """Which steps compute under "reuse whenever allowed": the first, the final ones, and after max_reuse reuses."""
    computed, run_len = [], 0
    for step in range(num_steps):
        if step == 0 or step >= num_steps - final_steps or run_len >= max_reuse:
            computed.append(True)
            run_len = 0
        else:
            computed.append(False)
            run_len += 1
    return computed


@pytest.fixture(scope="module")
def loop_calibrated():
    """The tiny pipeline and its grid profile, calibrated for the closed loop (once per test module)."""
    from loop_fixtures import PROMPTS, STEPS, call_kwargs, grid_profile

    from sencache.calibration.loop import calibrate_loop

    pipe = tiny_wan()
    profile = grid_profile()
    calibrate_loop(pipe, profile, PROMPTS, num_inference_steps=STEPS, gain_every=2, progress=False,
                   call_kwargs=call_kwargs())
    return pipe, profile
