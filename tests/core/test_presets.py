"""SenCacheConfig.preset: the paper's and the reference code's published settings per model, as the README's
table states them, and `sencache generate --preset`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from conftest import flat_profile, tiny_wan

from sencache import SenCacheConfig, SenCacheError
from sencache.cli import main
from sencache.core.presets import PRESETS, presets_table
from sencache.core.profile import model_config_hash
from sencache.core.rules.base import StepInput

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

README = Path(__file__).resolve().parents[2] / "README.md"
STATED = {  # (eps, eps_start, n, forced last steps), as the issue and the sources give them
    "wan2.1-t2v-1.3b-slow": (0.1, 0.01, 2, 0),
    "wan2.1-t2v-1.3b-fast": (0.2, 0.01, 3, 0),
    "wan2.1-t2v-1.3b-readme": (2.0, 0.045, 3, 0),
    "cogvideox1.5-5b": (0.6, 0.01, 3, 1),
    "cogvideox1.5-5b-code": (0.07, 0.005, 10, 1),
    "ltx-video-0.9.1": (0.5, 0.01, 3, 1),
    "ltx-video-0.9.1-code": (0.7, 0.01, 4, 1),
}


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_builds_the_stated_settings(name):
    model_class = PRESETS[name][0]
    config = SenCacheConfig.preset(name, flat_profile(model_class))
    eps, eps_start, n, final = STATED[name]
    assert (config.eps, config.eps_start, config.max_reuse, config.final_steps) == (eps, eps_start, n, final)
    assert config.warmup_fraction == 0.2 and config.forecast == "hold" and config.eps_schedule.name == "constant"
    assert config.preset_source.startswith(f"{name}: ")
    assert SenCacheConfig.preset(name, flat_profile(model_class), eps=0.3).eps == 0.3  # an override


def test_readme_shows_the_presets_table_as_the_code_has_it():
    assert presets_table() in README.read_text()


def test_preset_refuses_another_models_profile_and_unknown_names():
    with pytest.raises(SenCacheError, match="is for LTXVideoTransformer3DModel, but the profile was measured on Wan"):
        SenCacheConfig.preset("ltx-video-0.9.1", flat_profile("WanTransformer3DModel"))
    with pytest.raises(SenCacheError, match="no preset 'wan'; presets: wan2.1-t2v-1.3b-slow"):
        SenCacheConfig.preset("wan", flat_profile("WanTransformer3DModel"))


@pytest.mark.parametrize("name, pattern", [
    # S = 0 everywhere: reuse up to n in a row; CogVideoX/LTX also compute the last step, Wan does not
    ("ltx-video-0.9.1", [1, 0, 0, 0, 1, 0, 0, 0, 1, 1]),
    ("wan2.1-t2v-1.3b-slow", [1, 0, 0, 1, 0, 0, 1, 0, 0, 1]),
    ("wan2.1-t2v-1.3b-fast", [1, 0, 0, 0, 1, 0, 0, 0, 1, 0]),
])
def test_preset_reuse_pattern_follows_n_and_the_forced_steps(name, pattern):
    profile = flat_profile(PRESETS[name][0], jx=1e-9, jt=1e-9)  # S is never above ε
    rule = SenCacheConfig.preset(name, profile).build_rule()
    state = rule.new_state(1)
    computed = []
    for step in range(10):
        d = rule.decide(state, StepInput(step, 10, torch.tensor([1000.0 - 100 * step]), torch.zeros(1, 4)))
        computed.append(int(not d.reuse[0]))
    assert computed == pattern


def test_cli_generate_with_a_preset(tmp_path, capsys):
    folder = tmp_path / "model"
    pipe = tiny_wan()
    pipe.save_pretrained(folder)
    flat_profile("WanTransformer3DModel", jx=1e-9, jt=1e-9,
                 config_hash=model_config_hash(pipe.transformer)).save(folder / "sencache_profile.json")
    args = ["generate", "--model", str(folder), "--prompt", "a red circle", "--steps", "10", "--overwrite", "--out",
            str(tmp_path / "c.mp4")]
    assert main(args + ["--preset", "wan2.1-t2v-1.3b-slow"]) == 0
    assert re.search(r"NFE 4/10", capsys.readouterr().out)  # the pattern above: steps 0, 3, 6, 9
    assert main(args + ["--preset", "wan2.1-t2v-1.3b-slow", "--cache", "magcache"]) == 2
    assert "use it with --cache sencache" in capsys.readouterr().err
    assert main(args + ["--preset", "cogvideox1.5-5b"]) == 2
    assert "is for CogVideoXTransformer3DModel" in capsys.readouterr().err
