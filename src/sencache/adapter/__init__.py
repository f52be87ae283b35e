"""The diffusers adapter: hooks on a transformer and its block stack that apply a core rule per sample and
step (:mod:`~sencache.adapter.hooks`, :mod:`~sencache.adapter.session`), where each model keeps its blocks
(:mod:`~sencache.adapter.layout`), the decision trace, observers of each call and the one recorder of
uncached runs, and rank-consistent decisions under context parallelism (:mod:`~sencache.adapter.parallel`)."""
