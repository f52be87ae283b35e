"""Published SenCache settings per model, each with where it comes from (``SenCacheConfig.preset``).

All are the paper's rule: the cached residual is held (no forecast), ε is constant after a warm-up of the
first 20 % of the steps at ``eps_start``. The reference implementation multiplies its tolerances by
√(number of latent elements), so they are per-element RMS tolerances: the same numbers in this project's
units, given a profile in RMS units (``sencache calibrate`` or ``sencache import-profile``). Where the paper and
the reference code or its README disagree, both are kept under different names. Budget mode
(``sencache.budget.with_target``) is the recommended way when the profile was calibrated here.
"""

from __future__ import annotations

PAPER = "SenCache paper (arXiv 2602.24208), stated settings"
README = "reference implementation's Wan2.1 README (vita-epfl/SenCache, commit 4bf419b, after its scaling-factor fix)"
CODE = "reference implementation's default arguments (vita-epfl/SenCache sencache.py)"
N_NOT_STATED = "n not stated for this model in the paper; 3 as in its main Wan runs"

# name -> (model class, settings, source). final_steps: the last steps forced to compute (the first always
# computes: the cache is empty).
PRESETS: dict[str, tuple[str, dict, str]] = {
    "wan2.1-t2v-1.3b-slow": ("WanTransformer3DModel",
                             dict(eps=0.1, eps_start=0.01, max_reuse=2, final_steps=0), PAPER),
    "wan2.1-t2v-1.3b-fast": ("WanTransformer3DModel",
                             dict(eps=0.2, eps_start=0.01, max_reuse=3, final_steps=0), PAPER),
    "wan2.1-t2v-1.3b-readme": ("WanTransformer3DModel",
                               dict(eps=2.0, eps_start=0.045, max_reuse=3, final_steps=0), README),
    "cogvideox1.5-5b": ("CogVideoXTransformer3DModel",
                        dict(eps=0.6, eps_start=0.01, max_reuse=3, final_steps=1), f"{PAPER}; {N_NOT_STATED}"),
    "cogvideox1.5-5b-code": ("CogVideoXTransformer3DModel",
                             dict(eps=0.07, eps_start=0.005, max_reuse=10, final_steps=1), CODE),
    "ltx-video-0.9.1": ("LTXVideoTransformer3DModel",
                        dict(eps=0.5, eps_start=0.01, max_reuse=3, final_steps=1), f"{PAPER}; {N_NOT_STATED}"),
    "ltx-video-0.9.1-code": ("LTXVideoTransformer3DModel",
                             dict(eps=0.7, eps_start=0.01, max_reuse=4, final_steps=1), CODE),
}
COMMON = dict(warmup_fraction=0.2, eps_schedule="constant", forecast="hold")


def preset_settings(name: str) -> tuple[str, dict, str]:
    """(model class, SenCacheConfig keyword arguments, source) of the preset ``name``; a KeyError names the
    presets there are."""
    if name not in PRESETS:
        raise KeyError(f"no preset {name!r}; presets: {', '.join(PRESETS)}")
    model_class, settings, source = PRESETS[name]
    return model_class, {**COMMON, **settings}, source


def presets_table() -> str:
    """The presets as a markdown table (the README's), sources abbreviated (full ones: :data:`PRESETS`)."""
    short = {PAPER: "paper", README: "reference README", CODE: "reference code",
             f"{PAPER}; {N_NOT_STATED}": "paper (n not stated: 3)"}
    lines = ["| preset | ε | ε_start (first 20 %) | n (max_reuse) | last steps forced | source |",
             "|---|---|---|---|---|---|"]
    for name, (_, s, source) in PRESETS.items():
        lines.append(f"| `{name}` | {s['eps']:g} | {s['eps_start']:g} | {s['max_reuse']} | {s['final_steps']} | "
                     f"{short[source]} |")
    return "\n".join(lines) + "\n"
