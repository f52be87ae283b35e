"""An interrupted comparison runs only its unfinished jobs on resume (compare(checkpoint=..., resume=True),
`sencache compare --resume`) and gives the same results apart from wall-clock fields."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import Interrupt, counting_calls, tiny_wan, without_wall_clock

import sencache.harness.compare as compare_module
from sencache.cli import main
from sencache.errors import SenCacheError
from sencache.harness.compare import compare

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

STEPS = 4
PROMPTS = ["a red circle moving left", "a blue square"]
VOLATILE = frozenset({"created", "elapsed_s", "files", "machine"})  # besides wall-clock fields


def counting(monkeypatch, fail_at: int | None = None) -> list:
    return counting_calls(monkeypatch, compare_module, "run_job", fail_at)


def test_a_resumed_comparison_equals_an_uninterrupted_one(tmp_path, monkeypatch):
    pipe = tiny_wan()
    kwargs = dict(num_inference_steps=STEPS, progress=False, use_lpips=False, warmup=False)
    whole = compare(pipe, PROMPTS, [0, 1], ["fixed"], out_dir=tmp_path / "whole", **kwargs)
    folder = tmp_path / "parts"
    counting(monkeypatch, fail_at=3)  # jobs 0 and 1 finish, job 2 is interrupted
    with pytest.raises(Interrupt):
        compare(pipe, PROMPTS, [0, 1], ["fixed"], out_dir=tmp_path / "cut", checkpoint=folder, **kwargs)
    with pytest.raises(SenCacheError, match="holds 2 finished item.*interrupted comparison: pass --resume"):
        compare(pipe, PROMPTS, [0, 1], ["fixed"], out_dir=tmp_path / "cut", checkpoint=folder, **kwargs)
    with pytest.raises(SenCacheError, match="was run with other jobs"):
        compare(pipe, PROMPTS, [0], ["fixed"], out_dir=tmp_path / "cut", checkpoint=folder, resume=True, **kwargs)
    with pytest.raises(SenCacheError, match="was run with other variants"):
        compare(pipe, PROMPTS, [0, 1], ["fixed", "none"], out_dir=tmp_path / "cut", checkpoint=folder, resume=True,
                **kwargs)
    calls = counting(monkeypatch)
    resumed = compare(pipe, PROMPTS, [0, 1], ["fixed"], out_dir=tmp_path / "cut", checkpoint=folder, resume=True,
                      **kwargs)
    assert len(calls) == 2  # jobs 2 and 3 only
    assert without_wall_clock(resumed, VOLATILE) == without_wall_clock(whole, VOLATILE)
    a, b = np.load(tmp_path / "whole" / "frames.npz"), np.load(tmp_path / "cut" / "frames.npz")
    assert sorted(a.files) == sorted(b.files) and all((a[k] == b[k]).all() for k in a.files)


def test_cli_compare_resume(tmp_path, monkeypatch, capsys):
    from conftest import flat_profile

    from sencache.core.profile import model_config_hash

    model = tmp_path / "model"
    pipe = tiny_wan()
    pipe.save_pretrained(model)
    flat_profile("WanTransformer3DModel", config_hash=model_config_hash(pipe.transformer)).save(
        model / "sencache_profile.json")
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = tmp_path / "cmp"
    args = ["compare", "--model", str(model), "--prompts", str(prompts), "--methods", "sencache", "fixed",
            "--steps", str(STEPS), "--no-lpips", "--out", str(out)]
    counting(monkeypatch, fail_at=2)
    assert main(args) == 1  # the CLI keeps going past a failed job and says how to resume
    err = capsys.readouterr().err
    assert "failed: job 1" in err and "--resume runs only the failed ones" in err
    assert (out / "partial" / "item_00000.json").is_file()
    calls = counting(monkeypatch)
    assert main(args) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(args + ["--resume"]) == 0
    assert len(calls) == 1  # only the failed job ran again
    results = json.loads((out / "results.json").read_text())
    assert results["failures"] == [] and len(results["jobs"]) == 2
    assert not (out / "partial").exists()


def test_ctrl_c_says_how_to_resume(monkeypatch, capsys, tmp_path):
    import sencache.cli.compare as compare_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(compare_cli, "_run_cli", interrupted)
    prompts = tmp_path / "p.txt"
    prompts.write_text("a red circle\n")
    assert main(["compare", "--prompts", str(prompts)]) == 130
    assert "the same command with --resume continues it" in capsys.readouterr().err
