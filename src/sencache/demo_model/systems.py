"""The demo family: one small model per video architecture, trained here on the same clips, captions and judge.

Each member is a module with the same functions (``build_pipeline``, ``build_vae``, ``load_vae``,
``set_latent_stats``, ``encode_clips``, ``training_example``, ``call_kwargs``), so the training scripts, the judge
and the demo treat them alike; what differs (VAE class, latent normalisation, objective, how the pipeline calls
its transformer) stays in the member's module.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

from sencache.demo_model import cogvideox, ltx, wan
from sencache.errors import SenCacheError

HERE = Path(__file__).parent

#: name -> (module, shipped weights folder, what the README calls it)
SYSTEMS: dict[str, tuple[ModuleType, Path, str]] = {
    "wan": (wan, HERE / "weights", "Wan 2.1 architecture"),
    "cogvideox": (cogvideox, HERE / "weights_cogvideox", "CogVideoX architecture"),
    "ltx": (ltx, HERE / "weights_ltx", "LTX-Video architecture"),
}


def system(name: str) -> ModuleType:
    """The module of demo family member ``name``; raises :class:`SenCacheError` for an unknown name."""
    if name not in SYSTEMS:
        raise SenCacheError(f"unknown demo system {name!r}; choose one of {', '.join(SYSTEMS)}")
    return SYSTEMS[name][0]


def weights_dir(name: str) -> Path:
    """The folder of member ``name``'s shipped weights."""
    system(name)
    return SYSTEMS[name][1]


def title(name: str) -> str:
    """What the README calls member ``name`` (e.g. "Wan 2.1 architecture")."""
    system(name)
    return SYSTEMS[name][2]
