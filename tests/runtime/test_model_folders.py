"""The real-model path of the CLI on complete tiny Wan, CogVideoX and LTX pipelines saved to folders
(`--model FOLDER` with `--height --width --frames`), and hub ids without network."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from conftest import flat_profile
from full_pipelines import save_tiny_pipeline

from sencache.cli import main
from sencache.core.profile import SensitivityProfile, model_config_hash

CLASSES = {"wan": "WanTransformer3DModel", "cogvideox": "CogVideoXTransformer3DModel",
           "ltx": "LTXVideoTransformer3DModel"}
PROMPT = "a red circle moving left"


@pytest.fixture(scope="module", params=sorted(CLASSES))
def folder(request, tmp_path_factory):
    """A saved pipeline folder with a flat profile of the right class next to it."""
    from diffusers import DiffusionPipeline

    path = tmp_path_factory.mktemp(request.param)
    save(request.param, path)
    transformer = DiffusionPipeline.from_pretrained(path).transformer
    flat_profile(CLASSES[request.param], jx=1.0, jt=0.0005,
                 config_hash=model_config_hash(transformer)).save(path / "sencache_profile.json")
    return request.param, path


def save(kind, path):
    """The tiny pipeline, with the text length it was built for as its folder's call default (the real
    models' pipeline defaults, e.g. CogVideoX's 226 tokens, are too long for it)."""
    sizes = save_tiny_pipeline(kind, path)
    (path / "sencache_call_defaults.json").write_text(json.dumps({"max_sequence_length": sizes["max_sequence_length"]}))


def frames_of(out):
    return np.load(out.with_suffix(".npy"))


def test_generate_from_a_folder_takes_the_size_flags(folder, tmp_path, capsys):
    kind, path = folder
    for (height, width, frames) in ((32, 32, 9), (64, 32, 13)):
        out = tmp_path / f"{height}x{width}x{frames}.mp4"
        code = main(["generate", "--model", str(path), "--prompt", PROMPT, "--steps", "4", "--height", str(height),
                     "--width", str(width), "--frames", str(frames), "--out", str(out), "--save-npy"])
        assert code == 0, capsys.readouterr().err
        clip = frames_of(out)
        assert clip.shape[1:] == (height, width, 3) and np.isfinite(clip).all()
        if kind == "cogvideox":  # its VAE decodes its own frame count (13 asked -> 16 out); it still grows
            assert clip.shape[0] >= frames
        else:
            assert clip.shape[0] == frames
        assert re.search(r"NFE \d/4", capsys.readouterr().out)


def test_compare_from_a_folder_runs_sencache_and_a_peer(folder, tmp_path, capsys):
    kind, path = folder
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a blue square moving up\n")
    code = main(["compare", "--model", str(path), "--prompts", str(prompts), "--methods", "sencache", "fixed",
                 "--steps", "4", "--height", "32", "--width", "32", "--frames", "5", "--no-lpips",
                 "--out", str(tmp_path / "cmp")])
    assert code == 0, capsys.readouterr().err
    text = (tmp_path / "cmp" / "results.md").read_text()
    for method in ("sencache", "fixed"):
        assert re.search(rf"\| (\*\*)?{method}(\*\*)? \| ", text), method


def test_calibrate_a_wan_folder_with_the_size_flags(tmp_path, capsys):
    path = tmp_path / "wan"
    save("wan", path)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\na blue square moving right\n")
    out = tmp_path / "profile.json"
    code = main(["calibrate", "--model", str(path), "--prompts", str(prompts), "--samples", "2", "--steps", "4",
                 "--height", "32", "--width", "32", "--frames", "5", "--no-progress", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    profile = SensitivityProfile.load(out)
    assert profile.metadata["model_class"] == "WanTransformer3DModel" and len(profile.timesteps) == 4
    assert profile.metadata["model_dir"] == str(path)
    assert profile.metadata["calibration_size"] == {"num_frames": 5, "height": 32, "width": 32}
    assert profile.metadata["latent_shape"] == [1, 16, 2, 4, 4]  # 5 frames -> 2 latent frames, 32 px -> 4


def test_a_hub_id_without_network_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    args = ["generate", "--model", "nobody/no-such-model", "--prompt", PROMPT, "--steps", "2",
            "--out", str(tmp_path / "c.mp4")]
    assert main(args) == 2
    assert "is a hub id, so there is no model folder to find its profile in: pass --profile" in capsys.readouterr().err
    flat_profile("WanTransformer3DModel").save(tmp_path / "p.json")
    assert main(args + ["--profile", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert "cannot load the hub model nobody/no-such-model" in err and "Hugging Face cache" in err
    assert main(["generate", "--model", str(tmp_path / "missing" / "deeper" / "folder"), "--prompt", PROMPT,
                 "--out", str(tmp_path / "c.mp4")]) == 2
    assert "not found" in capsys.readouterr().err
