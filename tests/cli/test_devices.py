"""Device choices that must hold on any machine: where ranks run, and that every command takes the same options."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from conftest import flat_profile, tiny_wan, wan_kwargs

import sencache
from sencache import SenCacheConfig
from sencache.adapter.observers import CallbackObserver
from sencache.calibration.baselines import calibrate_baselines
from sencache.cli import build_parser, main
from sencache.core.rules import FixedConfig, MagCacheConfig, TeaCacheConfig
from sencache.methods import METHODS
from sencache.runtime import distributed as dist


@pytest.mark.parametrize("gpus, ranks, expected", [(0, 1, "gloo"), (1, 1, "nccl"), (1, 2, "gloo"), (2, 2, "nccl")])
def test_fewer_gpus_than_ranks_fall_back_to_gloo_on_the_cpu(monkeypatch, gpus, ranks, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(ranks))
    monkeypatch.setenv("LOCAL_RANK", str(ranks - 1))
    assert dist.backend() == expected
    assert dist.default_device() == (torch.device("cuda", ranks - 1) if expected == "nccl" else torch.device("cpu"))


@pytest.mark.parametrize("command", ["demo", "generate", "calibrate", "compare", "judge", "audit"])
def test_every_model_command_takes_device_and_dtype(command):
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    options = {o for action in sub.choices[command]._actions for o in action.option_strings}
    assert {"--model", "--device", "--dtype"} <= options


# ------------------------------------------------------------------------------------------------------------
# every rule and every command on every device of this machine (CPU in CI; CUDA too on a GPU box)
# ------------------------------------------------------------------------------------------------------------

RULES = {
    "sencache": lambda: SenCacheConfig(flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0005), eps=0.3),
    "sencache-forecast": lambda: SenCacheConfig(flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0005), eps=0.3,
                                                forecast="linear"),
    "magcache": lambda: MagCacheConfig(ratios=[1.0] * STEPS, threshold=10.0, max_skip=2),
    "teacache": lambda: TeaCacheConfig(threshold=10.0),
    "fixed": lambda: FixedConfig(interval=2),
}
STEPS = 8


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("rule", list(RULES))
def test_every_rule_reuses_on_the_device_in_each_dtype(rule, dtype, device):
    pipe = tiny_wan().to(device=device, dtype=dtype)
    residuals = []  # (device, dtype) of every new block-stack residual: the cache lives with the activations
    session = sencache.enable(pipe, RULES[rule](), observers=[CallbackObserver(
        lambda event: event.residual is not None and residuals.append((event.residual.device.type,
                                                                       event.residual.dtype)))])
    frames = pipe(prompt="a red circle moving left", generator=torch.Generator().manual_seed(0),
                  **wan_kwargs(steps=STEPS)).frames
    assert frames.device.type == device.type and torch.isfinite(frames).all()
    assert residuals and set(residuals) == {(device.type, dtype)}
    summary = session.summary()
    assert summary["steps"] == STEPS and 1 < summary["nfe"] < STEPS  # it reused, and computed


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    from sencache.core.profile import model_config_hash

    folder = tmp_path_factory.mktemp("model")
    pipe = tiny_wan()
    pipe.save_pretrained(folder)
    flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0005,
                 config_hash=model_config_hash(pipe.transformer)).save(folder / "sencache_profile.json")
    calibrate_baselines(pipe, ["a blue square standing still"], num_inference_steps=6,
                        progress=False).save(folder / "baselines.json")
    return folder


@pytest.mark.parametrize("cache", sorted(METHODS))
def test_generate_runs_every_cache_on_the_device(cache, saved_model, device, tmp_path, capsys):
    if cache == "dbcache":
        pytest.importorskip("cache_dit")
    out = tmp_path / "clip.mp4"
    code = main(["generate", "--model", str(saved_model), "--prompt", "a red circle moving left", "--cache", cache,
                 "--steps", "6", "--device", str(device), "--out", str(out), "--save-npy"])
    if cache.startswith("sencache-loop"):  # this profile predates the closed loop: a clear error, no clip
        assert code == 2 and "closed-loop calibration" in capsys.readouterr().err and not out.exists()
        return
    assert code == 0
    assert out.stat().st_size > 0
    assert np.isfinite(np.load(out.with_suffix(".npy"))).all()
    nfe = int(re.search(r"NFE (\d+)/6", capsys.readouterr().out).group(1))
    assert nfe == 6 if cache == "none" else 1 <= nfe <= 6
    if cache.startswith("fixed"):
        assert nfe < 6
