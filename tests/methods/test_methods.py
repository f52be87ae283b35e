"""The method registry and the baseline calibration, on a tiny untrained demo WanPipeline."""

from __future__ import annotations

import re

import pytest
import torch

from sencache.calibration.baselines import Baselines, calibrate_baselines, ensure_baselines
from sencache.demo_model.prompts import default_calibration_prompts, default_evaluation_prompts
from sencache.errors import SenCacheError
from sencache.methods import METHODS, MethodContext, get_method
from sencache.methods.diffusers_caches import TAYLORSEER_IDENTIFIERS
from sencache.runtime.generation import generate
from sencache.runtime.prompts import check_disjoint

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

STEPS = 8
PROMPT = "a red circle moving left on a plain background"
OURS = {"sencache", "magcache", "magcache-final", "teacache", "fixed", "fixed-final"}


def tiny_demo_pipe():
    from sencache.demo_model.build import build_pipeline
    from sencache.demo_model.data import vocabulary

    pipe = build_pipeline(vocabulary(), num_layers=2, num_attention_heads=2, attention_head_dim=16, ffn_dim=32)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def flat_profile():
    from sencache import SensitivityProfile

    return SensitivityProfile([0.0, 1000.0], [1.0, 1.0], [0.001, 0.001], model_class="WanTransformer3DModel")


@pytest.fixture(scope="module")
def pipe():
    return tiny_demo_pipe()


@pytest.fixture(scope="module")
def baselines(pipe):
    return calibrate_baselines(pipe, default_calibration_prompts(2), seeds=[0], num_inference_steps=STEPS,
                               progress=False)


@pytest.fixture(scope="module")
def ctx(pipe, baselines):
    from sencache.calibration.loop import calibrate_loop

    profile = flat_profile()
    calibrate_loop(pipe, profile, [PROMPT], num_inference_steps=STEPS, gain_every=2, progress=False)
    return MethodContext(num_inference_steps=STEPS, profile=profile, baselines=baselines)


def test_the_closed_loop_is_opt_in(ctx):
    """`sencache` is the ε-schedule rule; the closed loop runs as `sencache-loop(-auto)` on a calibrated profile."""
    from sencache.core.rules.sencache import SenCacheRule
    from sencache.core.rules.sencache_loop import SenCacheLoopRule
    from sencache.methods import ours_config

    old = MethodContext(num_inference_steps=STEPS, profile=flat_profile())
    assert isinstance(ours_config("sencache", 0.1, ctx).build_rule(), SenCacheRule)  # the default
    assert isinstance(ours_config("sencache-loop", 0.001, ctx).build_rule(), SenCacheLoopRule)
    assert ours_config("sencache-loop-auto", 0.001, ctx).forecast == "auto"
    assert "closed-loop calibration" in get_method("sencache-loop").unavailable(old)


class RealRuns:
    """The test's own count: transformer calls, and calls in which the last block's FFN really ran."""

    def __init__(self, transformer):
        self.calls = self.ffn_runs = 0
        self.handles = [transformer.register_forward_pre_hook(self._call),
                        transformer.blocks[-1].ffn.register_forward_pre_hook(self._ffn)]

    def _call(self, module, args):
        self.calls += 1

    def _ffn(self, module, args):
        self.ffn_runs += 1

    def remove(self):
        for h in self.handles:
            h.remove()


def aggressive(spec):
    """The sweep value that skips the most (every method must skip something there)."""
    return max(spec.sweep) if spec.sweep else None


def test_registry_holds_every_method():
    assert set(METHODS) == {"none", "sencache", "sencache-paper", "sencache-loop", "sencache-loop-auto", "magcache",
                            "magcache-final", "magcache-fast", "teacache",
                            "fixed", "fixed-final",
                            "fbcache", "seacache", "seacache-paper", "diffusers-seacache",
                            "diffusers-seacache-hold", "taylorseer", "diffusers-magcache", "dbcache"}
    for spec in METHODS.values():
        if spec.name != "none":
            assert spec.param and spec.sweep and spec.default is not None
            assert spec.setting(None)[spec.param] == spec.coerce(spec.default)
    with pytest.raises(SenCacheError, match="unknown method"):
        get_method("teacache-pro")


@pytest.mark.parametrize("name", list(METHODS))
def test_every_method_reports_the_nfe_an_independent_counter_sees(name, pipe, ctx):
    spec = METHODS[name]
    if name == "dbcache":
        pytest.importorskip("cache_dit")
    real = RealRuns(pipe.transformer)
    try:
        with spec.apply(pipe, aggressive(spec), ctx) as handle:
            generate(pipe, PROMPT, 0, num_inference_steps=STEPS)
            stats = handle.stats()
    finally:
        real.remove()
    assert stats["calls"] == real.calls == 2 * STEPS  # CFG: cond + uncond per step
    assert stats["computed"] == real.ffn_runs
    assert stats["steps"] == STEPS and len(stats["schedule"]) == STEPS
    assert stats["nfe"] == pytest.approx(real.ffn_runs * STEPS / real.calls)
    assert stats["schedule"][0] is True  # an empty cache always computes
    assert set(stats["skipped_steps"]) <= {i for i, c in enumerate(stats["schedule"]) if not c}
    if name == "none":
        assert stats["nfe"] == STEPS and stats["skipped_steps"] == []
    else:
        assert stats["nfe"] < STEPS, f"{name} at {aggressive(spec)} skipped nothing"
    if name in OURS:  # the adapter's own trace tells the same story
        assert stats["trace"]["nfe"] == stats["nfe"]
        assert stats["trace"]["computed"] == stats["computed"]
        assert stats["trace_schedule"] == stats["schedule"]
    if name == "dbcache":  # cache-dit's own summary agrees with the count
        cached = set(stats["cache_dit_cached_steps"])
        assert cached == {i for i, c in enumerate(stats["schedule"]) if not c}


def test_none_gives_the_frames_of_a_plain_call_and_remove_restores_the_pipeline(pipe, ctx):
    plain = generate(pipe, PROMPT, 3, num_inference_steps=STEPS).frames
    with get_method("none").apply(pipe, None, ctx):
        hooked = generate(pipe, PROMPT, 3, num_inference_steps=STEPS).frames
    assert torch.equal(torch.from_numpy(plain), torch.from_numpy(hooked))
    for name in ("magcache", "fbcache", "taylorseer"):
        with get_method(name).apply(pipe, aggressive(METHODS[name]), ctx):
            cached = generate(pipe, PROMPT, 3, num_inference_steps=STEPS).frames
        assert not torch.equal(torch.from_numpy(plain), torch.from_numpy(cached))
        after = generate(pipe, PROMPT, 3, num_inference_steps=STEPS).frames
        assert torch.equal(torch.from_numpy(plain), torch.from_numpy(after)), f"{name} left hooks behind"


def test_taylorseer_identifiers_match_wan_blocks_and_its_defaults_do_not(pipe):
    names = [n for n, _ in pipe.transformer.named_modules()]
    ours = [n for n in names if any(re.fullmatch(p, n) for p in TAYLORSEER_IDENTIFIERS)]
    assert ours == ["blocks.0", "blocks.1"]
    from diffusers.hooks.taylorseer_cache import _TRANSFORMER_BLOCK_IDENTIFIERS

    assert not [n for n in names if any(re.fullmatch(p, n) for p in _TRANSFORMER_BLOCK_IDENTIFIERS)]


def test_dbcache_is_skipped_with_a_reason_without_cache_dit(monkeypatch, pipe, ctx):
    import sencache.methods.base as methods_base

    monkeypatch.setattr(methods_base, "cache_dit_available", lambda: False)
    assert METHODS["dbcache"].unavailable(ctx, pipe) == "skipped: cache-dit not installed"
    with pytest.raises(SenCacheError, match="cache-dit not installed"):
        METHODS["dbcache"].apply(pipe, 0.1, ctx)


def test_methods_needing_calibration_say_so(pipe):
    bare = MethodContext(num_inference_steps=STEPS)
    assert "profile" in METHODS["sencache"].unavailable(bare, pipe)
    assert "baselines" in METHODS["magcache"].unavailable(bare, pipe)
    assert METHODS["fixed"].unavailable(bare, pipe) is None
    with pytest.raises(SenCacheError, match="profile"):
        METHODS["sencache"].apply(pipe, 0.1, bare)


def test_settings_record_the_final_step_controls(ctx):
    assert METHODS["magcache"].setting(0.1, ctx)["final_steps"] == 0
    assert METHODS["magcache-final"].setting(0.1, ctx)["final_steps"] == 1  # 10 % of 8 steps, at least 1
    assert METHODS["fixed-final"].setting(3, MethodContext(num_inference_steps=50))["final_steps"] == 5
    with pytest.raises(SenCacheError):
        METHODS["fixed"].setting(2.5, ctx)


# --------------------------------------------------------------------------------------------------
# Baseline calibration
# --------------------------------------------------------------------------------------------------


def test_calibration_tables(baselines, pipe):
    assert len(baselines.magcache_ratios) == STEPS and baselines.magcache_ratios[0] == 1.0
    assert len(baselines.magcache_ratios_uncond) == STEPS
    assert baselines.magcache_prompt == baselines.calibration_prompts[0]
    # diffusers' own calibrate=True run measures the same cond-branch quantity on the same prompt
    assert baselines.diffusers_magcache_ratios == pytest.approx(baselines.magcache_ratios, rel=1e-4)
    assert len(baselines.teacache_coefficients["1"]) == 2
    # (d_k, o_k) pairs: every step after the first, of every calibration prompt
    assert len(baselines.teacache_points["input"]) == 2 * (STEPS - 1)
    assert all(x > 0 for x in baselines.teacache_points["input"])
    assert baselines.metadata["model_class"] == "WanTransformer3DModel"


def test_baselines_round_trip_and_model_check(baselines, tmp_path, pipe):
    path = baselines.save(tmp_path / "baselines.json")
    loaded = Baselines.load(path)
    assert loaded.to_dict() == baselines.to_dict()
    loaded.check_model(pipe.transformer)
    loaded.metadata["config_hash"] = "0" * 16
    with pytest.raises(SenCacheError, match="another config"):
        loaded.check_model(pipe.transformer)
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(SenCacheError, match="not a sencache baselines"):
        Baselines.load(tmp_path / "bad.json")


def test_calibration_and_evaluation_prompts_must_be_disjoint(baselines, tmp_path, pipe):
    calib = baselines.calibration_prompts
    with pytest.raises(SenCacheError, match="also used for calibration"):
        check_disjoint(calib, ["a new prompt", "  " + calib[1].upper() + " "])
    check_disjoint(calib, ["a new prompt"])
    evaluation = default_evaluation_prompts(6, exclude=calib)
    assert len(set(evaluation)) == 6 and not set(evaluation) & set(calib)
    path = baselines.save(tmp_path / "baselines.json")
    with pytest.raises(SenCacheError, match="also used"):
        ensure_baselines(pipe, path, evaluation_prompts=[calib[0]], log=lambda *_: None)


def test_seacache_is_skipped_where_diffusers_has_no_adapter_because_there_it_silently_runs_every_step(pipe, ctx):
    import diffusers
    from conftest import cog_kwargs, tiny_cogvideox, tiny_ltx

    assert METHODS["diffusers-seacache"].unavailable(ctx, pipe) is None  # Wan text-to-video: supported
    for tiny in (tiny_cogvideox, tiny_ltx):
        other = tiny()
        assert METHODS["seacache"].unavailable(ctx, other) is None  # ours runs there
        for name in ("diffusers-seacache", "diffusers-seacache-hold"):
            reason = METHODS[name].unavailable(ctx, other)
            assert reason and "Wan text-to-video and Cosmos 3 only" in reason and type(other).__name__ in reason
    # The premise: on CogVideoX diffusers' SeaCache at a huge threshold still computes every block of every step.
    cog = tiny_cogvideox()
    calls = []
    cog.transformer.transformer_blocks[-1].register_forward_hook(lambda *a: calls.append(1))
    cog.transformer.enable_cache(diffusers.SeaCacheConfig(threshold=1e6, max_consecutive_cached=0))
    cog(**cog_kwargs(steps=6))
    assert len(calls) == 6  # one batched CFG call per step, none skipped
