"""Device choices that must hold on any machine: where ranks run, and that every command takes the same options."""

from __future__ import annotations

import pytest
import torch

from sencache.cli import build_parser
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
