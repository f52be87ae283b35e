"""Every caching method by name, one object each, grouped by family: ours through :func:`sencache.enable`
(:mod:`.ours`), diffusers' built-in caches (:mod:`.diffusers_caches`) and cache-dit's DBCache (:mod:`.cache_dit`).

    method = get_method("magcache")
    with method.apply(pipe, 0.12, MethodContext(num_inference_steps=50, baselines=baselines)) as handle:
        frames = generate(pipe, prompt, seed, num_inference_steps=50).frames
        handle.stats()   # {"nfe": 27, "computed": 54, "calls": 100, "skipped_steps": [...], "schedule": [...]}

Each method says what it needs (a profile, calibrated baselines, an optional package, something of the model's)
and how it is applied; :mod:`.counter` counts the work every cache really does, independently of all of them.
"""

from sencache.methods.base import REFERENCE, CacheMethod, MethodContext, MethodHandle, final_step_count
from sencache.methods.counter import StepCounter
from sencache.methods.registry import METHODS, available_methods, get_method, method_names, ours_config

__all__ = ["METHODS", "REFERENCE", "CacheMethod", "MethodContext", "MethodHandle", "StepCounter",
           "available_methods", "final_step_count", "get_method", "method_names", "ours_config"]
