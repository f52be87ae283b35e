"""Wan 2.2's second expert (transformer_2) is not cached yet: every trace and the log say so, never silently."""

from __future__ import annotations

import copy
import logging

import torch
from conftest import flat_profile, tiny_wan, wan_kwargs

import sencache


def two_experts():
    from diffusers import WanPipeline

    p = tiny_wan()
    pipe = WanPipeline(tokenizer=p.tokenizer, text_encoder=p.text_encoder, vae=p.vae, scheduler=p.scheduler,
                       transformer=p.transformer, transformer_2=copy.deepcopy(p.transformer), boundary_ratio=0.5)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_the_uncached_expert_is_named_in_every_trace_and_the_log(caplog):
    pipe = two_experts()
    with caplog.at_level(logging.WARNING, logger="sencache"):
        session = sencache.enable(pipe, sencache.SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.0))
    assert "transformer_2" in caplog.text and "run uncached" in caplog.text
    try:
        for seed in (0, 1):  # a new generation clears the trace; the note comes back
            pipe(prompt="a red circle", generator=torch.Generator().manual_seed(seed), **wan_kwargs(steps=6))
            notes = session.summary()["notes"]
            assert sum("transformer_2" in n and "run uncached" in n for n in notes) == 1
            assert session.summary()["steps"] < 6  # the trace holds only the steps pipe.transformer served
    finally:
        sencache.disable(pipe)


def test_a_one_transformer_pipeline_has_no_such_note():
    pipe = tiny_wan()
    session = sencache.enable(pipe, sencache.SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.0))
    try:
        pipe(prompt="a red circle", generator=torch.Generator().manual_seed(0), **wan_kwargs(steps=4))
        assert not any("transformer_2" in n for n in session.summary()["notes"])
    finally:
        sencache.disable(pipe)
