"""An interrupted calibration continues where it stopped (calibrate(checkpoint=..., resume=True), `sencache
calibrate --resume`), gives the same profile as an uninterrupted run, and refuses other arguments."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import Interrupt, counting_calls
from full_pipelines import save_tiny_pipeline

import sencache.calibration.calibrate as calibrate_module
from sencache.calibration.calibrate import calibrate
from sencache.cli import main
from sencache.demo_model.build import build_pipeline, pipeline_size_kwargs
from sencache.errors import SenCacheError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

PROMPTS = ["a red ball moves left", "a blue box"]
SIZE = pipeline_size_kwargs(5, 16, 16)
ARGS = dict(num_inference_steps=4, num_samples=3, seed=5, progress=False, **SIZE)


@pytest.fixture(scope="module")
def pipe():
    torch.manual_seed(0)
    p = build_pipeline(["a", "red", "ball", "blue", "box", "moves", "left"], seed=0, num_layers=1)
    p.set_progress_bar_config(disable=True)
    return p


def counting(monkeypatch, fail_at: int | None = None) -> list:
    return counting_calls(monkeypatch, calibrate_module, "measure_trajectory", fail_at)


def test_a_resumed_calibration_equals_an_uninterrupted_one(pipe, tmp_path, monkeypatch):
    whole = calibrate(pipe, PROMPTS, **ARGS)
    folder = tmp_path / "parts"
    counting(monkeypatch, fail_at=3)  # samples 0 and 1 finish, sample 2 is interrupted
    with pytest.raises(Interrupt):
        calibrate(pipe, PROMPTS, checkpoint=folder, **ARGS)
    assert sorted(p.name for p in folder.glob("item_*.json")) == ["item_00000.json", "item_00001.json"]
    calls = counting(monkeypatch)
    resumed = calibrate(pipe, PROMPTS, checkpoint=folder, resume=True, **ARGS)
    assert len(calls) == 1  # only the unfinished sample was measured again
    a, b = whole.to_dict(), resumed.to_dict()
    for d in (a, b):
        d["metadata"].pop("created", None)
    assert json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


def test_resume_refuses_other_arguments_and_a_folder_without_resume(pipe, tmp_path, monkeypatch):
    folder = tmp_path / "parts"
    counting(monkeypatch, fail_at=2)
    with pytest.raises(Interrupt):
        calibrate(pipe, PROMPTS, checkpoint=folder, **ARGS)
    counting(monkeypatch)
    with pytest.raises(SenCacheError, match="holds 1 finished item.*pass --resume"):
        calibrate(pipe, PROMPTS, checkpoint=folder, **ARGS)
    with pytest.raises(SenCacheError, match="was run with other grid; run it with the same arguments"):
        calibrate(pipe, PROMPTS, checkpoint=folder, resume=True, **{**ARGS, "num_inference_steps": 5})
    with pytest.raises(SenCacheError, match="was run with other samples"):
        calibrate(pipe, ["another prompt"], checkpoint=folder, resume=True, **ARGS)
    assert (folder / "item_00000.json").is_file()  # nothing was lost by the refusals


def test_cli_calibrate_resume(tmp_path, monkeypatch, capsys):
    model = tmp_path / "wan"
    save_tiny_pipeline("wan", model)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square moving right\n")
    out = tmp_path / "profile.json"
    args = ["calibrate", "--model", str(model), "--prompts", str(prompts), "--samples", "3", "--steps", "3",
            "--height", "32", "--width", "32", "--frames", "5", "--no-progress", "--out", str(out)]
    assert main(args) == 0
    whole = json.loads(out.read_text())
    assert not (tmp_path / "profile.json.partial").exists()  # cleaned up after a finished run
    out.unlink()
    counting(monkeypatch, fail_at=2)
    with pytest.raises(Interrupt):
        main(args)
    assert (tmp_path / "profile.json.partial" / "item_00000.json").is_file() and not out.exists()
    counting(monkeypatch)
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    resumed = json.loads(out.read_text())
    for d in (whole, resumed):
        d["metadata"].pop("created", None)
        d["metadata"]["loop"].pop("seconds")  # the closed loop's calibration time, the one wall-clock field
    assert resumed == whole
    assert not (tmp_path / "profile.json.partial").exists()
