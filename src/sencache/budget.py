"""``sencache.budget``: budget mode, picking ε for a target NFE (the public name of :mod:`sencache.core.budget`).

    config = sencache.budget.with_target(sencache.SenCacheConfig(profile), target_nfe=25)
"""

from sencache.core.budget import recommend, recommended_eps, with_target

__all__ = ["recommend", "recommended_eps", "with_target"]
