"""Decision patterns of the baseline rules: MagCache, TeaCache, fixed interval, no cache."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest
import torch

from sencache.core.rules.base import StepInput
from sencache.core.rules.fixed import FixedConfig, FixedRule, NoCacheRule
from sencache.core.rules.magcache import (
    MagCacheCalibration,
    MagCacheConfig,
    MagCacheRule,
    interpolate_ratios,
    magnitude_ratio,
    nearest_table_index,
    ratios_from_residual_norms,
    retention_steps,
    token_norms,
)
from sencache.core.rules.teacache import TeaCacheConfig, TeaCacheRule, fit_rescale_polynomial, relative_l1

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

# --------------------------------------------------------------------------------------------------
# A tiny stand-in for the adapter: decide once per step, report refreshes with a row mask.
# --------------------------------------------------------------------------------------------------


def drive(rule, num_steps, batch=1, modulations=None, latents=None, force_refresh=None, drop_observe=()):
    """Run ``rule`` over one generation and return (patterns, decisions).

    patterns[b] is a string with "C" (compute) or "R" (reuse) per step for sample b.
    modulations / latents: per-step (B, ...) tensors (or None). force_refresh: {step: (B,) bool} rows the
    adapter refreshes even if the rule said reuse. drop_observe: steps at which observe_refresh is skipped.
    """
    state = rule.new_state(batch)
    patterns = [""] * batch
    decisions = []
    for k in range(num_steps):
        inp = StepInput(
            step=k,
            num_steps=num_steps,
            timestep=torch.full((batch,), 1000.0 * (1 - k / num_steps)),
            latent=latents[k] if latents is not None else torch.zeros(batch, 3, 2),
            modulation=modulations[k] if modulations is not None else None,
        )
        d = rule.decide(state, inp)
        assert d.reuse.dtype == torch.bool and d.reuse.shape == (batch,)
        assert d.score is None or d.score.shape == (batch,)
        assert d.reason is None or len(d.reason) == batch
        rows = ~d.reuse
        if force_refresh and k in force_refresh:
            rows = rows | force_refresh[k]
        if rows.any() and k not in drop_observe:
            residual = torch.randn(int(rows.sum()), 4, 3)
            rule.observe_refresh(state, inp, rows, residual)
        for b in range(batch):
            patterns[b] += "C" if bool(rows[b]) else "R"
        decisions.append(d)
    return patterns, decisions


def scaled_sequence(changes, base=None, batch=1):
    """Modulations F_0 = base, F_k = F_{k-1} * (1 + changes[k-1]): relative L1 change exactly changes[k-1]."""
    base = torch.linspace(0.5, 1.5, 8).repeat(batch, 1) if base is None else base
    seq = [base.clone()]
    for c in changes:
        seq.append(seq[-1] * (1.0 + c))
    return seq


def single_line_value_error(fn):
    with pytest.raises(ValueError) as info:
        fn()
    assert "\n" not in str(info.value)
    return str(info.value)


# --------------------------------------------------------------------------------------------------
# MagCache
# --------------------------------------------------------------------------------------------------


def test_magcache_unit_ratios_reuse_limited_by_max_skip():
    # E stays 0, so only max_skip stops reuse: compute, then exactly max_skip reuses, repeating.
    T = 20
    rule = MagCacheRule(MagCacheConfig(ratios=[1.0] * T, threshold=0.12, max_skip=2, retention_ratio=0.2))
    (pattern,), decisions = drive(rule, T)
    assert pattern == "CCCC" + "RRC" * 5 + "R"
    assert decisions[6].reason == ["max_skip"]
    assert all(float(d.score[0]) == 0.0 for d in decisions)

    rule4 = MagCacheRule(MagCacheConfig(ratios=[1.0] * T, max_skip=4, retention_ratio=0.0))
    assert drive(rule4, T)[0][0] == "C" + "RRRRC" * 3 + "RRRR"
    rule0 = MagCacheRule(MagCacheConfig(ratios=[1.0] * T, max_skip=0, retention_ratio=0.0))
    assert drive(rule0, T)[0][0] == "C" * T


def test_magcache_threshold_crossing_at_known_step():
    # gamma = 0.95 from step 4: P = 0.95 -> E = 0.05 (reuse); P = 0.9025 -> E = 0.1475 > 0.12 (compute).
    ratios = [1.0, 1.0, 1.0, 1.0] + [0.95] * 6
    rule = MagCacheRule(MagCacheConfig(ratios=ratios, threshold=0.12, max_skip=10, retention_ratio=0.0))
    (pattern,), decisions = drive(rule, 10)
    assert pattern == "CRRRRCRCRC"
    assert decisions[5].reason == ["threshold"]
    assert decisions[5].score[0].item() == pytest.approx(0.05 + (1 - 0.95**2), abs=1e-6)
    assert decisions[5].eps == 0.12
    assert decisions[4].score[0].item() == pytest.approx(0.05, abs=1e-6)


def test_magcache_error_equal_to_threshold_still_reuses():
    # 0.75 and 0.25 are exact in binary: E == threshold at step 1 (reuse), E > threshold at step 2.
    rule = MagCacheRule(MagCacheConfig(ratios=[1.0] + [0.75] * 5, threshold=0.25, max_skip=5, retention_ratio=0.0))
    (pattern,), _ = drive(rule, 6)
    assert pattern == "CRCRCR"


def test_magcache_retention_and_final_steps():
    assert [retention_steps(0.2, T) for T in (50, 20, 15, 8, 7, 1)] == [10, 4, 3, 2, 1, 0]
    assert retention_steps(0.25, 10) == 3  # 2.5 rounds half up
    T = 12
    rule = MagCacheRule(MagCacheConfig(ratios=[1.0] * T, max_skip=100, retention_ratio=0.25, final_steps=3))
    (pattern,), decisions = drive(rule, T)
    assert pattern == "CCC" + "R" * 6 + "CCC"
    assert [d.reason[0] for d in decisions] == ["first", "retention", "retention"] + ["reuse"] * 6 + ["final"] * 3
    # Without final_steps the tail reuses (the paper's rule), so the control really is the option.
    plain = MagCacheRule(MagCacheConfig(ratios=[1.0] * T, max_skip=100, retention_ratio=0.25))
    assert drive(plain, T)[0][0] == "CCC" + "R" * 9


def test_nearest_interpolation_of_50_entry_table():
    table = [1.0 + i / 1000 for i in range(50)]  # entry value encodes its index
    assert interpolate_ratios(table, 50) == tuple(table)
    for T in (20, 100):
        mapped = interpolate_ratios(table, T)
        assert len(mapped) == T
        assert mapped[0] == table[0] and mapped[-1] == table[-1]
        idx = [round((m - 1.0) * 1000) for m in mapped]
        assert idx == sorted(idx)
        for i, j in enumerate(idx):
            # j is the table entry nearest to step i in normalised position
            pos = Fraction(i, T - 1)
            best = min(range(50), key=lambda c: (abs(Fraction(c, 49) - pos), -c))
            assert j == best
    assert [nearest_table_index(i, 20, 50) for i in (0, 1, 2, 10, 19)] == [0, 3, 5, 26, 49]
    assert set(round((m - 1.0) * 1000) for m in interpolate_ratios(table, 100)) == set(range(50))


def test_magcache_uses_interpolated_table():
    # The drop sits in entries 40..49 of a 50-step table; at T=20 step i maps to round(i*49/19), which
    # first reaches 40 at i=16, so the rule reuses until step 15 and computes from step 16.
    table = [1.0] * 40 + [0.5] * 10
    rule = MagCacheRule(MagCacheConfig(ratios=table, threshold=0.12, max_skip=100, retention_ratio=0.0))
    assert drive(rule, 20)[0][0] == "C" + "R" * 15 + "CCCC"
    # At T=100 the drop starts at step ceil(39.5*99/49) = 80.
    assert drive(rule, 100)[0][0] == "C" + "R" * 79 + "C" * 20


def test_magcache_per_sample_state_is_independent():
    ratios = [1.0] * 5 + [0.97] * 15
    rule = MagCacheRule(MagCacheConfig(ratios=ratios, threshold=0.12, max_skip=3, retention_ratio=0.0))
    force = {6: torch.tensor([False, True])}  # the adapter refreshes sample 1 only at step 6
    both, _ = drive(rule, 20, batch=2, force_refresh=force)
    alone0, _ = drive(rule, 20)
    alone1, _ = drive(rule, 20, force_refresh={6: torch.tensor([True])})
    assert both[0] == alone0[0]
    assert both[1] == alone1[0]
    assert both[0] != both[1]


def test_magcache_sample_without_cached_residual_computes():
    rule = MagCacheRule(MagCacheConfig(ratios=[1.0] * 6, max_skip=5, retention_ratio=0.0))
    (pattern,), decisions = drive(rule, 6, drop_observe={0})
    assert pattern == "CCRRRR"
    assert decisions[1].reason == ["first"]


def test_magcache_call_order_is_checked():
    rule = MagCacheRule(MagCacheConfig(ratios=[1.0] * 4))
    state = rule.new_state(1)
    inp = StepInput(step=0, num_steps=4, timestep=torch.ones(1), latent=torch.zeros(1, 2))
    rule.decide(state, inp)
    single_line_value_error(lambda: rule.decide(state, inp))  # same step twice
    single_line_value_error(lambda: rule.decide(state, StepInput(1, 5, torch.ones(1), torch.zeros(1, 2))))
    single_line_value_error(lambda: rule.decide(state, StepInput(1, 4, torch.ones(2), torch.zeros(2, 2))))
    single_line_value_error(lambda: rule.observe_refresh(state, inp, torch.ones(2, dtype=torch.bool), None))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(ratios=[]),
        dict(ratios=[1.0, 0.0]),
        dict(ratios=[1.0, -0.9]),
        dict(ratios=[1.0, float("nan")]),
        dict(ratios="abc"),
        dict(ratios=[1.0], threshold=-0.1),
        dict(ratios=[1.0], threshold=float("inf")),
        dict(ratios=[1.0], max_skip=-1),
        dict(ratios=[1.0], max_skip=1.5),
        dict(ratios=[1.0], retention_ratio=1.5),
        dict(ratios=[1.0], retention_ratio=-0.1),
        dict(ratios=[1.0], final_steps=-1),
    ],
)
def test_magcache_invalid_config(kwargs):
    single_line_value_error(lambda: MagCacheConfig(**kwargs))


def test_magcache_config_is_frozen_and_normalised():
    cfg = MagCacheConfig(ratios=np.array([1.0, 0.99]), max_skip=np.int64(3))
    assert cfg.ratios == (1.0, 0.99) and isinstance(cfg.max_skip, int)
    with pytest.raises(Exception):
        cfg.threshold = 1.0  # frozen


def test_magnitude_ratio_is_mean_of_token_norm_ratios():
    torch.manual_seed(0)
    prev = torch.randn(2, 5, 4)
    scale = torch.tensor([[0.5, 1.0, 2.0, 1.5, 1.0], [1.0, 1.0, 1.0, 1.0, 0.5]])
    now = prev * scale[:, :, None]
    got = magnitude_ratio(now, prev)
    assert got.shape == (2,)
    torch.testing.assert_close(got, scale.mean(dim=1))
    # Channels-first layout (B, D, S): name the feature dimension.
    torch.testing.assert_close(magnitude_ratio(now.transpose(1, 2), prev.transpose(1, 2), feature_dim=1), got)
    assert token_norms(torch.randn(2, 3, 4, 6)).shape == (2, 12)


def test_ratio_table_from_one_uncached_run():
    torch.manual_seed(0)
    gammas = [1.0, 0.99, 0.98, 0.9, 0.7]
    r = torch.randn(1, 6, 4)
    residuals = []
    for g in gammas:
        r = r * g
        residuals.append(r.clone())
    expected = (1.0,) + tuple(gammas[1:])
    table = ratios_from_residual_norms([token_norms(x) for x in residuals])
    assert table == pytest.approx(expected, abs=1e-6)
    assert ratios_from_residual_norms([token_norms(x)[0] for x in residuals]) == pytest.approx(expected, abs=1e-6)
    smooth = ratios_from_residual_norms([token_norms(x) for x in residuals], smooth_sqrt=True)
    assert smooth == pytest.approx(tuple(math.sqrt(g) for g in expected), abs=1e-6)

    calib = MagCacheCalibration()
    for x in residuals:
        calib.observe(x)
    assert calib.num_steps == 5
    assert calib.ratios() == pytest.approx(expected, abs=1e-6)
    cfg = calib.to_config(smooth_sqrt=True, threshold=0.06, max_skip=4)
    assert cfg.ratios == pytest.approx(smooth, abs=1e-9) and cfg.max_skip == 4
    single_line_value_error(lambda: MagCacheCalibration().ratios())


# --------------------------------------------------------------------------------------------------
# TeaCache
# --------------------------------------------------------------------------------------------------


def test_relative_l1_per_sample():
    b = torch.tensor([[1.0, -2.0, 3.0], [0.0, 0.0, 0.0]])
    a = torch.tensor([[1.1, -2.2, 3.3], [0.0, 0.0, 0.0]])
    got = relative_l1(a, b)
    assert got.shape == (2,)
    assert got[0].item() == pytest.approx(0.1, abs=1e-6)
    assert got[1].item() == 0.0  # no change on a zero signal: not NaN


def test_teacache_threshold_crossing_at_known_step():
    # A = 0.01, 0.03, 0.06, 0.11 -> step 4 crosses 0.1 and computes, then A restarts.
    changes = [0.01, 0.02, 0.03, 0.05, 0.01, 0.01, 0.01, 0.01, 0.01]
    mods = scaled_sequence(changes)
    rule = TeaCacheRule(TeaCacheConfig(threshold=0.1, final_steps=1))
    (pattern,), decisions = drive(rule, 10, modulations=mods)
    assert pattern == "CRRRCRRRRC"
    assert decisions[4].reason == ["threshold"]
    assert decisions[4].score[0].item() == pytest.approx(0.11, abs=1e-5)
    assert decisions[3].score[0].item() == pytest.approx(0.06, abs=1e-5)
    assert decisions[9].reason == ["final"]
    assert decisions[4].eps == 0.1


def test_teacache_change_is_against_previous_step_not_reference():
    # F alternates 1.0, 1.05, 1.0, ...: against the previous step A = .05, .0976, .1476 (compute at 3);
    # against the last refresh it would be .05, .05, .10 and reuse at step 3.
    base = torch.ones(1, 8)
    mods = [base * (1.05 if k % 2 else 1.0) for k in range(8)]
    rule = TeaCacheRule(TeaCacheConfig(threshold=0.12, final_steps=0))
    (pattern,), decisions = drive(rule, 8, modulations=mods)
    assert pattern[:4] == "CRRC"
    assert decisions[2].score[0].item() == pytest.approx(0.05 + 0.05 / 1.05, abs=1e-5)


def test_teacache_rescale_polynomial_and_strict_threshold():
    mods = scaled_sequence([0.04] * 7)
    doubled = TeaCacheRule(TeaCacheConfig(threshold=0.1, coefficients=(2.0, 0.0), final_steps=0))
    assert drive(doubled, 8, modulations=mods)[0][0] == "CRCRCRCR"  # A: .08 reuse, .16 compute
    identity = TeaCacheRule(TeaCacheConfig(threshold=0.1, final_steps=0))
    assert drive(identity, 8, modulations=mods)[0][0] == "CRRCRRCR"  # A: .04, .08, .12
    # A constant 0.05 per step: A == 0.1 exactly at the second step, which must compute (A < threshold).
    const = TeaCacheRule(TeaCacheConfig(threshold=0.1, coefficients=(0.0, 0.05), final_steps=0))
    assert drive(const, 7, modulations=mods)[0][0] == "CRCRCRC"


def test_teacache_first_and_final_steps():
    mods = [torch.ones(1, 4)] * 10  # no change at all: only the forced steps compute
    for final, expected in [(0, "C" + "R" * 9), (1, "C" + "R" * 8 + "C"), (3, "C" + "R" * 6 + "CCC")]:
        rule = TeaCacheRule(TeaCacheConfig(threshold=0.1, final_steps=final))
        assert drive(rule, 10, modulations=mods)[0][0] == expected


def test_teacache_per_sample_independence():
    slow = scaled_sequence([0.011] * 11)
    fast = scaled_sequence([0.06] * 11, base=torch.linspace(2.0, -1.0, 8)[None])
    batch = [torch.cat([s, f]) for s, f in zip(slow, fast)]
    rule = TeaCacheRule(TeaCacheConfig(threshold=0.1, final_steps=1))
    both, decisions = drive(rule, 12, batch=2, modulations=batch)
    alone_slow, _ = drive(rule, 12, modulations=slow)
    alone_fast, _ = drive(rule, 12, modulations=fast)
    assert both == [alone_slow[0], alone_fast[0]]
    assert both[0] == "C" + "R" * 9 + "CC"  # A = 0.099 at step 9, 0.110 at step 10
    assert both[1] == "CRCRCRCRCRCC"
    assert decisions[2].reason == ["reuse", "threshold"]


def test_teacache_falls_back_to_latent():
    seq = scaled_sequence([0.03] * 9)
    rule = TeaCacheRule(TeaCacheConfig(threshold=0.1))
    via_latent, _ = drive(rule, 10, latents=seq)
    via_modulation, _ = drive(rule, 10, modulations=seq)
    assert via_latent == via_modulation == ["CRRRCRRRCC"]


def test_teacache_broadcasts_a_shared_modulation():
    seq = scaled_sequence([0.04] * 5)  # batch-1 modulation for a batch of 3
    rule = TeaCacheRule(TeaCacheConfig(threshold=0.1, final_steps=0))
    patterns, _ = drive(rule, 6, batch=3, modulations=seq)
    assert patterns == ["CRRCRR"] * 3


def test_fit_rescale_polynomial_recovers_coefficients():
    x = np.linspace(0.0, 0.3, 40)
    quartic = (5.0, -3.0, 2.0, 0.4, 0.01)
    got4 = fit_rescale_polynomial(x, np.polyval(quartic, x), order=4)
    assert got4 == pytest.approx(quartic, rel=1e-6, abs=1e-8)
    got1 = fit_rescale_polynomial(torch.tensor(x), torch.tensor(3.0 * x - 0.2), order=1)
    assert got1 == pytest.approx((3.0, -0.2), abs=1e-10)
    TeaCacheConfig(coefficients=got4)  # plugs straight into the config
    single_line_value_error(lambda: fit_rescale_polynomial(x, x[:-1]))
    single_line_value_error(lambda: fit_rescale_polynomial(x[:3], x[:3], order=4))
    single_line_value_error(lambda: fit_rescale_polynomial(x, x, order=0))


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(threshold=-0.1),
        dict(threshold=float("nan")),
        dict(coefficients=()),
        dict(coefficients=(1.0, float("inf"))),
        dict(coefficients=("a", "b")),
        dict(final_steps=-1),
        dict(final_steps=0.5),
    ],
)
def test_teacache_invalid_config(kwargs):
    single_line_value_error(lambda: TeaCacheConfig(**kwargs))


# --------------------------------------------------------------------------------------------------
# Fixed interval and no cache
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "cfg, T, expected",
    [
        (FixedConfig(), 8, "CRCRCRCR"),
        (FixedConfig(interval=1), 5, "CCCCC"),
        (FixedConfig(interval=3, warmup_steps=2, final_steps=2), 12, "CCCRRCRRCRCC"),
        (FixedConfig(interval=4, final_steps=1), 10, "CRRRCRRRCC"),
    ],
)
def test_fixed_patterns(cfg, T, expected):
    patterns, decisions = drive(FixedRule(cfg), T, batch=2)
    assert patterns == [expected, expected]
    assert all(d.score is None for d in decisions)
    assert FixedRule(cfg).computes_at(0, T)


def test_fixed_reasons_and_uncached_sample():
    (pattern,), decisions = drive(FixedRule(FixedConfig(interval=3, warmup_steps=1, final_steps=1)), 6,
                                  drop_observe={0})
    assert pattern == "CCRRCC"
    assert [d.reason[0] for d in decisions] == ["first", "first", "reuse", "reuse", "interval", "final"]


def test_no_cache_always_computes():
    patterns, decisions = drive(NoCacheRule(), 7, batch=2)
    assert patterns == ["C" * 7] * 2
    assert all(d.score is None for d in decisions)


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(interval=0),
        dict(interval=-2),
        dict(interval=1.5),
        dict(warmup_steps=-1),
        dict(final_steps=-1),
        dict(final_steps=float("inf")),
    ],
)
def test_fixed_invalid_config(kwargs):
    single_line_value_error(lambda: FixedConfig(**kwargs))
