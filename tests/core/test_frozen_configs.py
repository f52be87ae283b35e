"""Every rule's config is frozen: what a generation ran with cannot change under it."""

from __future__ import annotations

import dataclasses

import pytest
from conftest import flat_profile

from sencache.core import rules
from sencache.core.rules import SenCacheConfig

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

CONFIGS = [c for c in (getattr(rules, n) for n in rules.__all__) if dataclasses.is_dataclass(c)]


def test_every_rule_config_is_a_frozen_dataclass():
    assert {c.__name__ for c in CONFIGS} >= {"SenCacheConfig", "MagCacheConfig", "TeaCacheConfig", "SeaCacheConfig",
                                             "FixedConfig", "NoCacheConfig"}
    assert [c.__name__ for c in CONFIGS if not c.__dataclass_params__.frozen] == []


def test_sencache_settles_its_defaults_then_refuses_changes():
    config = SenCacheConfig(flat_profile("WanTransformer3DModel"), eps=0.2)
    assert config.eps_start == pytest.approx(0.02) and config.forecast == "hold"  # resolved at construction
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.eps = 0.5
    assert dataclasses.replace(config, eps=0.5).eps == 0.5  # a changed copy is how settings change
