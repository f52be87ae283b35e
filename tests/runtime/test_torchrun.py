"""Scale-out with torchrun (2 gloo ranks on the CPU) against single-process runs.

* ``sencache compare`` sharded over ranks writes the same results.json (timing fields aside) and frames;
  a job that fails on one rank is recorded, the others' results are kept.
* ``sencache generate --prompts`` sharded over ranks gives byte-identical raw frames and generate.json.
* Rank-consistent decisions: a tiny Wan under diffusers' context parallelism (Ulysses 2) decides and
  outputs like one process; a latent sharded by hand decides like the whole latent with sync on, and
  differently on each rank with sync off (or by default, without a parallel config); the guard turns a
  rank-local reuse into a refresh and notes it.
* Residual offload keeps outputs bit-exact and the residuals on the CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import without_wall_clock

from sencache.cli import main

HERE = Path(__file__).resolve().parent
WORKER = HERE.parent / "torchrun_worker.py"
STEPS = 6

def torchrun(args: list[str], cwd, timeout: int = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args],
                          capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)



# ------------------------------------------------------------------------------------------------------------
# a tiny saved model, its calibrated profile and baselines
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from sencache.calibration.baselines import calibrate_baselines
    from sencache.calibration.calibrate import calibrate
    from sencache.demo_model.build import build_pipeline
    from sencache.demo_model.data import vocabulary
    from sencache.demo_model.prompts import default_calibration_prompts

    pipe = build_pipeline(vocabulary(), num_layers=1, num_attention_heads=2, attention_head_dim=16, ffn_dim=32)
    pipe.set_progress_bar_config(disable=True)
    d = tmp_path_factory.mktemp("model")
    pipe.save_pretrained(d)
    calib = default_calibration_prompts(1)
    calibrate(pipe, calib, num_inference_steps=STEPS, num_samples=1, progress=False).save(d / "sencache_profile.json")
    calibrate_baselines(pipe, calib, num_inference_steps=STEPS, progress=False).save(d / "baselines.json")
    return d


@pytest.fixture(scope="module")
def eval_prompts(model_dir):
    from sencache.demo_model.prompts import default_calibration_prompts, default_evaluation_prompts

    return default_evaluation_prompts(4, exclude=default_calibration_prompts(1))


# ------------------------------------------------------------------------------------------------------------
# sencache compare
# ------------------------------------------------------------------------------------------------------------


def compare_args(model_dir, prompts_file, out, *extra) -> list[str]:
    return ["compare", "--model", str(model_dir), "--prompts", str(prompts_file), "--seeds", "0", "1", "--steps",
            str(STEPS), "--profile", str(model_dir / "sencache_profile.json"), "--baselines",
            str(model_dir / "baselines.json"), "--no-lpips", "--out", str(out), *extra]


def test_compare_sharded_over_two_ranks_equals_one_process(model_dir, eval_prompts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(eval_prompts[:2]) + "\n")  # 2 prompts x 2 seeds = 4 jobs, 2 per rank
    # --nfe-targets: thresholds tuned on rank 0 and broadcast, so every rank evaluates the same settings
    extra = ["--methods", "none", "fixed", "sencache", "magcache", "--nfe-targets", "3"]
    single = tmp_path / "single"
    assert main(compare_args(model_dir, prompts, single, *extra)) == 0

    sharded = tmp_path / "sharded"
    proc = torchrun(["-m", "sencache.cli", *compare_args(model_dir, prompts, sharded, *extra)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("job(s) in") == 1  # rank 0 alone summarises and writes

    a = json.loads((single / "results.json").read_text())
    b = json.loads((sharded / "results.json").read_text())
    assert [j["job"] for j in b["jobs"]] == [0, 1, 2, 3] and b["failures"] == []
    assert set(b["methods"]) == {"none", "fixed", "sencache", "magcache"} and b["tuning"]
    assert any(s["nfe"] < STEPS for s in b["methods"]["sencache"]["settings"])  # caching really ran
    # "files" (written back with the tuning) holds the output folder's paths, which differ by design
    assert {k: Path(v).name for k, v in b.pop("files").items()} == {k: Path(v).name for k, v in a.pop("files").items()}
    assert without_wall_clock(b) == without_wall_clock(a)
    fa, fb = np.load(single / "frames.npz"), np.load(sharded / "frames.npz")
    assert sorted(fa.files) == sorted(fb.files) and len(fa.files) >= 4 * 2
    for key in fa.files:
        assert np.array_equal(fa[key], fb[key]), key


def test_compare_records_a_job_that_failed_on_one_rank(model_dir, eval_prompts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(eval_prompts[:2]) + "\n")
    out = tmp_path / "out"
    # job 1 = (prompt 0, seed 1) runs on rank 1 (round robin over 2 ranks)
    proc = torchrun([str(WORKER), "compare-fail", eval_prompts[0], "1",
                     *compare_args(model_dir, prompts, out, "--methods", "fixed", "--set", "fixed=2")], tmp_path)
    assert proc.returncode != 0  # rank 0 reports the failure in its exit status
    assert f"[rank 1] FAILED job 1 {eval_prompts[0]!r} seed 1" in proc.stderr
    assert f"failed: job 1 {eval_prompts[0]!r} seed 1 on rank 1" in proc.stderr
    results = json.loads((out / "results.json").read_text())
    assert [j["job"] for j in results["jobs"]] == [0, 2, 3]  # the other ranks' (and rank 1's other) jobs kept
    (failure,) = results["failures"]
    assert failure["job"] == 1 and failure["prompt"] == eval_prompts[0] and failure["seed"] == 1
    assert failure["rank"] == 1 and "injected failure" in failure["error"]
    assert len(results["methods"]["fixed"]["settings"][0]["per_prompt"]) == 3


# ------------------------------------------------------------------------------------------------------------
# sencache generate
# ------------------------------------------------------------------------------------------------------------


def test_generate_sharded_over_two_ranks_gives_identical_frames(model_dir, eval_prompts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(eval_prompts[:4]) + "\n")

    def args(out):
        return ["generate", "--model", str(model_dir), "--prompts", str(prompts), "--cache", "sencache", "--eps",
                "0.3", "--steps", str(STEPS), "--seeds", "5", "--out", str(out), "--save-npy", "--trace"]

    single = tmp_path / "single"
    assert main(args(single)) == 0
    sharded = tmp_path / "sharded"
    proc = torchrun(["-m", "sencache.cli", *args(sharded)], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]

    ja = json.loads((single / "generate.json").read_text())["jobs"]
    jb = json.loads((sharded / "generate.json").read_text())["jobs"]
    assert [j["index"] for j in jb] == [0, 1, 2, 3] and not any("error" in j for j in jb)
    assert any(j["nfe"] < STEPS for j in jb)  # the cache reused steps

    def normalised(jobs):
        return [{**without_wall_clock(j), "files": [Path(f).name for f in j["files"]]} for j in jobs]

    assert normalised(jb) == normalised(ja)
    npys = sorted(p.name for p in single.glob("*.npy"))
    assert len(npys) == 4 and npys == sorted(p.name for p in sharded.glob("*.npy"))
    for name in npys:
        assert (single / name).read_bytes() == (sharded / name).read_bytes(), name  # byte-identical raw frames
        trace = name.replace(".npy", ".trace.json")
        assert json.loads((single / trace).read_text()) == json.loads((sharded / trace).read_text())


# ------------------------------------------------------------------------------------------------------------
# rank-consistent decisions
# ------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("decisions")
    proc = torchrun([str(WORKER), "decisions", str(out)], out)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(2)]


@pytest.fixture(scope="module")
def reference():
    sys.path.insert(0, str(HERE.parent))
    import torchrun_worker

    return {"hand_sharded": torchrun_worker.hand_sharded(0, 1),
            "wan": torchrun_worker.wan_context_parallel(parallel=False)}


def _decisions(records):
    return [(step, branch, sample, computed, reason) for step, branch, sample, computed, reason, _ in records]


def _scores(records):
    """Scores with None (no score: first step) as NaN, for pytest.approx(..., nan_ok=True)."""
    return [float("nan") if score is None else score for *_, score in records]


def test_context_parallel_wan_decides_and_outputs_like_one_process(ranks, reference):
    ref = reference["wan"]
    assert not ref["synced"]
    for r in ranks:
        cp = r["wan_cp"]
        assert cp["synced"]  # automatic: torch.distributed is up and diffusers set _parallel_config
        assert cp["block0_hooks"] == ["sencache_block", "cp_input---blocks.0"]  # CP split outside the cache
        assert _decisions(cp["records"]) == _decisions(ref["records"])
        assert _scores(cp["records"]) == pytest.approx(_scores(ref["records"]), rel=1e-5, nan_ok=True)
        assert torch.allclose(cp["frames"], ref["frames"], rtol=0, atol=1e-6)
        assert not any("guard" in n for n in cp["notes"])
    assert any(not rec[3] for rec in ref["records"])  # some steps reused: the skip path ran under CP


def test_sharded_latent_with_sync_decides_like_the_whole_latent(ranks, reference):
    ref = reference["hand_sharded"]["sencache"]
    assert ref["computed"] == [0, 2, 4, 5]  # the whole latent: S = 0.707 per step against eps 0.8
    for r in ranks:
        got = r["hand_sharded"]["sencache_sync"]
        assert got["synced"]
        assert _decisions(got["records"]) == _decisions(ref["records"])
        assert _scores(got["records"]) == pytest.approx(_scores(ref["records"]), rel=1e-6, nan_ok=True)


def test_sharded_latent_without_sync_decides_differently_on_each_rank(ranks, reference):
    for key in ("sencache_nosync", "sencache_auto"):  # auto: no diffusers parallel config, so no sync
        r0, r1 = (r["hand_sharded"][key] for r in ranks)
        assert not r0["synced"] and not r1["synced"]
        assert r0["computed"] == [0, 4, 5]  # its half never changes: reuses up to max_reuse
        assert r1["computed"] == list(range(6))  # its half changes by 1 > eps every step
        assert r0["computed"] != reference["hand_sharded"]["sencache"]["computed"]


def test_guard_refreshes_where_any_rank_refreshes_and_says_so(ranks, reference):
    ref = reference["hand_sharded"]["sign"]
    r0, r1 = (r["hand_sharded"]["sign_sync"] for r in ranks)
    assert r0["computed"] == r1["computed"] == ref["computed"] == [0, 1, 3, 5]
    assert [rec[4] for rec in r0["records"]] == ["refresh", "sync_refresh", "reuse", "sync_refresh", "reuse",
                                                   "sync_refresh"]
    assert len(r0["notes"]) == 1 and "guard refreshed 3" in r0["notes"][0] and "[1, 3, 5]" in r0["notes"][0]
    assert not any("guard" in n for n in r1["notes"])  # rank 1's own rule refreshed there: nothing changed
    n0, n1 = (r["hand_sharded"]["sign_nosync"] for r in ranks)
    assert n0["computed"] == [0] and n1["computed"] == [0, 1, 3, 5]  # without the guard the ranks diverge


def test_sync_group_options_in_one_process(wan_pipe):
    from conftest import flat_profile

    import sencache
    from sencache import SenCacheConfig, SenCacheError

    config = SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.1)
    assert sencache.enable(wan_pipe, config).sync is None  # auto, no torch.distributed
    assert sencache.enable(wan_pipe, config, sync_group=None).sync is None
    with pytest.raises(SenCacheError, match="initialised"):
        sencache.enable(wan_pipe, config, sync_group=True)
    with pytest.raises(SenCacheError, match="sync_group"):
        sencache.enable(wan_pipe, config, sync_group="always")


# ------------------------------------------------------------------------------------------------------------
# residual offload
# ------------------------------------------------------------------------------------------------------------


def test_offloaded_residuals_give_bit_exact_outputs_and_live_on_the_cpu():
    from conftest import flat_profile, tiny_wan

    import sencache
    from sencache import SenCacheConfig

    transformer = tiny_wan(num_layers=2).transformer
    config = SenCacheConfig(flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0), eps=0.8, eps_start=0.8,
                            max_reuse=3, final_steps=1, eps_schedule="constant")
    x0 = torch.randn(2, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
    drift = torch.zeros_like(x0)
    drift[1] = 1.0  # sample 0 stands still and reuses, sample 1 moves and refreshes: subset steps
    text = torch.randn(2, 32, 64, generator=torch.Generator().manual_seed(1))

    def run(offload):
        session = sencache.enable(transformer, config, num_inference_steps=5, offload_residuals=offload)
        outs, held = [], []
        for k, t in enumerate([900.0, 700.0, 500.0, 300.0, 100.0]):
            outs.append(transformer(x0 + k * drift, torch.tensor([t, t]), text).sample)
            held.append((session.residual_devices(), session.residual_bytes(),
                         session.residuals()["default"].data_ptr()))
        return session, outs, held

    plain, ref, plain_held = run(False)
    cached, got, held = run(True)
    assert cached.offload_residuals and not plain.offload_residuals
    for a, b in zip(ref, got):
        assert torch.equal(a, b)
    assert cached.trace.computed_steps(0) == [0, 4] and cached.trace.computed_steps(1) == [0, 1, 2, 3, 4]
    hidden = 2 * 64 * 32  # batch x tokens (4 x 4 x 4 patches) x width (2 heads x 16)
    for devices, sizes, _ in held:
        assert devices == {"default": "cpu"}
        assert sizes["default"] == hidden * 4  # float32, one residual for the batch
    assert len({ptr for *_, ptr in held}) == 1  # offloaded: one host buffer per branch, refilled in place
    assert len({ptr for *_, ptr in plain_held}) > 1  # not offloaded: each refresh keeps the stack's new tensor
    assert [r.reason for r in cached.trace.records if r.step == 1] == ["reuse", "above_eps"]
