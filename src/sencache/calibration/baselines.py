"""Offline calibration of the baselines (MagCache, TeaCache, diffusers' MagCache), kept in ``baselines.json``.

* **MagCache** needs a table of magnitude ratios of consecutive block-stack residuals. Following the paper,
  it comes from ONE uncached run on one calibration prompt (conditional branch; the unconditional table is
  kept too, for reference).
* **TeaCache** needs a rescaling polynomial from the relative L1 change of the first block's timestep
  modulation (``temb``) to the relative L1 change of the transformer output. We record both, step after
  step, in uncached runs on every calibration prompt (conditional branch) and fit order 1 (and order 4 when
  there are enough points) with :func:`~sencache.core.rules.teacache.fit_rescale_polynomial`.
* **diffusers' MagCache** is calibrated by its own ``MagCacheConfig(calibrate=True)`` run on the same prompt;
  the table it prints is captured and stored.

The recording goes through the adapter's one recorder (:func:`sencache.adapter.recorder.record_uncached`):
every transformer call of an uncached generation arrives as a ``CallEvent`` with its branch, the first
block's modulation, the block-stack residual and the model output.

Calibration prompts must never be evaluation prompts: :func:`check_disjoint` enforces it, and the prompts
used are stored with the tables so every result can list them.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch
from tqdm.auto import tqdm

from sencache.adapter.observers import CallEvent
from sencache.adapter.recorder import record_uncached as record_uncached_run
from sencache.core.profile import model_class_name, model_config_hash
from sencache.core.rules.magcache import ratios_from_residual_norms, token_norms
from sencache.core.rules.teacache import fit_rescale_polynomial, relative_l1
from sencache.errors import SenCacheError
from sencache.runtime.generation import generate
from sencache.runtime.prompts import check_disjoint
from sencache.toolbox.files import write_json_atomic

FORMAT = "sencache-baselines/1"
BASELINES_NAME = "baselines.json"
ORDER4_MIN_POINTS = 20  # fit the 4th-order TeaCache polynomial only with at least this many (d_k, o_k) pairs

__all__ = [
    "BASELINES_NAME",
    "Baselines",
    "calibrate_baselines",
    "default_baselines_path",
    "ensure_baselines",
    "record_uncached",
]


# --------------------------------------------------------------------------------------------------
# The stored tables
# --------------------------------------------------------------------------------------------------


@dataclass
class Baselines:
    """Calibrated tables of the baseline methods for one model, with the prompts they came from."""

    magcache_ratios: list[float]  # cond branch, one entry per calibration step (entry 0 = 1.0)
    teacache_coefficients: dict[str, list[float]]  # polynomial order ("1", "4") -> coefficients, highest first
    calibration_prompts: list[str]
    calibration_seeds: list[int]
    num_inference_steps: int
    guidance_scale: float
    magcache_ratios_uncond: list[float] | None = None
    diffusers_magcache_ratios: list[float] | None = None
    teacache_points: dict[str, list[float]] = field(default_factory=dict)  # "input"/"output" pairs of the fit
    magcache_prompt: str | None = None
    # tuned thresholds (see sencache.harness.tuning.tune_threshold)
    settings: dict[str, dict] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    # --- use ----------------------------------------------------------------------------------
    def teacache(self, order: int = 1) -> tuple[float, ...]:
        """The TeaCache rescaling polynomial of ``order`` (coefficients, highest first); raises if it was not fitted."""
        coeffs = self.teacache_coefficients.get(str(order))
        if coeffs is None:
            have = ", ".join(sorted(self.teacache_coefficients)) or "none"
            raise SenCacheError(f"baselines hold no order-{order} TeaCache polynomial (have: {have}); recalibrate")
        return tuple(coeffs)

    def check_model(self, transformer: torch.nn.Module) -> None:
        """Raise :class:`SenCacheError` if these baselines were calibrated for another class or config than
        ``transformer``'s."""
        want_cls, want_hash = self.metadata.get("model_class"), self.metadata.get("config_hash")
        if want_cls and want_cls != model_class_name(transformer):
            raise SenCacheError(
                f"baselines were calibrated for {want_cls}, not {model_class_name(transformer)}; "
                f"delete the baselines file to recalibrate, or pass the right one"
            )
        have_hash = model_config_hash(transformer)
        if want_hash and have_hash != "unknown" and want_hash != have_hash:
            raise SenCacheError(
                "baselines were calibrated for a model with another config; delete the baselines file to recalibrate"
            )

    # --- io -----------------------------------------------------------------------------------
    def to_dict(self) -> dict:
        """The tables as plain JSON, tagged with the file format."""
        return {
            "format": FORMAT,
            "magcache_ratios": self.magcache_ratios,
            "magcache_ratios_uncond": self.magcache_ratios_uncond,
            "magcache_prompt": self.magcache_prompt,
            "diffusers_magcache_ratios": self.diffusers_magcache_ratios,
            "teacache_coefficients": self.teacache_coefficients,
            "teacache_points": self.teacache_points,
            "calibration_prompts": self.calibration_prompts,
            "calibration_seeds": self.calibration_seeds,
            "num_inference_steps": self.num_inference_steps,
            "guidance_scale": self.guidance_scale,
            "settings": self.settings,
            "metadata": self.metadata,
        }

    @classmethod
    def from_dict(cls, data: dict) -> "Baselines":
        """Baselines from :meth:`to_dict`'s JSON; raises :class:`SenCacheError` on another format or malformed data."""
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SenCacheError(f"not a sencache baselines file (expected format '{FORMAT}'); delete it to recalibrate")
        try:
            return cls(
                magcache_ratios=[float(r) for r in data["magcache_ratios"]],
                teacache_coefficients={str(k): [float(c) for c in v] for k, v in data["teacache_coefficients"].items()},
                calibration_prompts=[str(p) for p in data["calibration_prompts"]],
                calibration_seeds=[int(s) for s in data["calibration_seeds"]],
                num_inference_steps=int(data["num_inference_steps"]),
                guidance_scale=float(data["guidance_scale"]),
                magcache_ratios_uncond=_floats_or_none(data.get("magcache_ratios_uncond")),
                diffusers_magcache_ratios=_floats_or_none(data.get("diffusers_magcache_ratios")),
                teacache_points={k: [float(x) for x in v] for k, v in (data.get("teacache_points") or {}).items()},
                magcache_prompt=data.get("magcache_prompt"),
                settings=dict(data.get("settings") or {}),
                metadata=dict(data.get("metadata") or {}),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SenCacheError(f"baselines file is malformed ({exc!r}); delete it to recalibrate") from None

    def save(self, path) -> Path:
        """Write the tables as JSON to ``path`` (atomically); returns the path written."""
        return write_json_atomic(path, self.to_dict())

    @classmethod
    def load(cls, path) -> "Baselines":
        """Read the baselines :meth:`save` wrote; raises :class:`SenCacheError` if the file is unreadable or invalid."""
        path = Path(path)
        try:
            text = path.read_text()
        except OSError as exc:
            raise SenCacheError(f"cannot read baselines {path}: {exc.strerror or exc}") from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise SenCacheError(f"baselines {path} is not valid JSON ({exc}); delete it to recalibrate") from None
        return cls.from_dict(data)


def _floats_or_none(values) -> list[float] | None:
    return None if values is None else [float(v) for v in values]


def default_baselines_path(profile_path) -> Path:
    """Baselines live next to the sensitivity profile."""
    return Path(profile_path).parent / BASELINES_NAME


# --------------------------------------------------------------------------------------------------
# Recording one uncached generation
# --------------------------------------------------------------------------------------------------


@dataclass
class Recording:
    """What one uncached generation showed, per step (conditional branch unless said otherwise)."""

    prompt: str
    seed: int
    modulation: list[torch.Tensor] = field(default_factory=list)  # first block's temb, one per step
    output: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # branch -> transformer output per step
    residual_norms: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # branch -> (B, N) token norms


def record_uncached(pipe, prompt: str, seed: int, num_inference_steps: int, guidance_scale: float) -> Recording:
    """Run one uncached generation and record modulation, outputs and residual norms per step and branch."""
    rec = Recording(prompt=prompt, seed=seed)

    def keep(event: CallEvent) -> None:
        if event.decider and event.modulation is not None:
            rec.modulation.append(event.modulation.detach().float().cpu().clone())
        if event.residual is not None:
            rec.residual_norms.setdefault(event.branch, []).append(token_norms(event.residual.float()).cpu())
        output = event.output
        sample = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
        rec.output.setdefault(event.branch, []).append(sample.detach().float().cpu().clone())

    record_uncached_run(pipe, lambda: generate(pipe, prompt, seed, num_inference_steps=num_inference_steps,
                                               guidance_scale=guidance_scale), keep)
    if len(rec.modulation) != num_inference_steps:
        raise SenCacheError(
            f"recorded {len(rec.modulation)} modulation tensors for {num_inference_steps} steps; "
            f"{type(pipe.transformer).__name__} does not pass a timestep modulation to its first block"
        )
    return rec


def _cond_branch(rec: Recording) -> str:
    for name in ("cond", "cond_uncond", "default"):
        if name in rec.output:
            return name
    return next(iter(rec.output))


def magcache_table(norms: Sequence[torch.Tensor]) -> list[float]:
    """MagCache's ratio table (one float per step, entry 0 = 1.0) from one run's per-step residual token norms."""
    return [float(r) for r in ratios_from_residual_norms(norms)]


def teacache_pairs(rec: Recording) -> tuple[list[float], list[float]]:
    """(d_k, o_k) for k >= 1: relative L1 change of the modulation and of the cond-branch output."""

    outputs = rec.output[_cond_branch(rec)]
    xs, ys = [], []
    for k in range(1, min(len(rec.modulation), len(outputs))):
        xs.extend(relative_l1(rec.modulation[k], rec.modulation[k - 1]).double().tolist())
        ys.extend(relative_l1(outputs[k], outputs[k - 1]).double().tolist())
    return xs, ys


def diffusers_magcache_ratios(pipe, prompt: str, seed: int, num_inference_steps: int,
                              guidance_scale: float) -> list[float]:
    """The table diffusers' own ``MagCacheConfig(calibrate=True)`` prints (its first, cond-branch print)."""
    from diffusers import MagCacheConfig


    transformer = pipe.transformer
    buf = io.StringIO()
    transformer.enable_cache(MagCacheConfig(calibrate=True, num_inference_steps=num_inference_steps))
    try:
        with contextlib.redirect_stdout(buf):
            generate(pipe, prompt, seed, num_inference_steps=num_inference_steps, guidance_scale=guidance_scale)
    finally:
        transformer.disable_cache()
    tables = []
    for line in buf.getvalue().splitlines():
        line = line.strip()
        if line.startswith("[") and line.endswith("]") and "MagCache" not in line:
            try:
                tables.append([float(v) for v in ast.literal_eval(line)])
            except (ValueError, SyntaxError):
                continue
    if not tables:
        raise SenCacheError("diffusers' MagCache calibration printed no ratio table (diffusers version changed?)")
    return tables[0]


def calibrate_baselines(pipe, prompts: Sequence[str], seeds: Sequence[int] = (0,), num_inference_steps: int = 50,
                        guidance_scale: float = 5.0, diffusers_magcache: bool = True,
                        progress: bool = True) -> Baselines:
    """Uncached runs on ``prompts`` x ``seeds``: MagCache table (first run only), TeaCache fit (all runs)."""

    prompts, seeds = list(prompts), [int(s) for s in seeds]
    if not prompts or not seeds:
        raise SenCacheError("calibration needs at least one prompt and one seed")
    start = time.perf_counter()
    runs = [(p, s) for p in prompts for s in seeds]
    total = len(runs) + int(diffusers_magcache)
    bar = tqdm(total=total, desc="calibrate baselines", disable=not progress, leave=False)
    recordings = []
    for prompt, seed in runs:
        recordings.append(record_uncached(pipe, prompt, seed, num_inference_steps, guidance_scale))
        bar.update(1)
    first = recordings[0]
    cond = _cond_branch(first)
    ratios = magcache_table(first.residual_norms[cond])
    uncond = magcache_table(first.residual_norms["uncond"]) if "uncond" in first.residual_norms else None

    xs, ys = [], []
    for rec in recordings:
        x, y = teacache_pairs(rec)
        xs.extend(x)
        ys.extend(y)

    coefficients = {"1": list(fit_rescale_polynomial(xs, ys, order=1))}
    if len(xs) >= ORDER4_MIN_POINTS and len(set(round(x, 12) for x in xs)) >= 5:
        coefficients["4"] = list(fit_rescale_polynomial(xs, ys, order=4))

    d_ratios = None
    notes = []
    if diffusers_magcache:
        try:
            d_ratios = diffusers_magcache_ratios(pipe, first.prompt, first.seed, num_inference_steps, guidance_scale)
        except SenCacheError as exc:
            notes.append(str(exc))
        bar.update(1)
    bar.close()
    return Baselines(
        magcache_ratios=ratios,
        magcache_ratios_uncond=uncond,
        magcache_prompt=first.prompt,
        diffusers_magcache_ratios=d_ratios,
        teacache_coefficients=coefficients,
        teacache_points={"input": xs, "output": ys},
        calibration_prompts=prompts,
        calibration_seeds=seeds,
        num_inference_steps=int(num_inference_steps),
        guidance_scale=float(guidance_scale),
        metadata={
            "model_class": model_class_name(pipe.transformer),
            "config_hash": model_config_hash(pipe.transformer),
            "created": time.strftime("%Y-%m-%d %H:%M:%S"),
            "seconds": round(time.perf_counter() - start, 2),
            "notes": notes,
        },
    )


def ensure_baselines(pipe, path, evaluation_prompts: Sequence[str] = (),
                     calibration_prompts: Sequence[str] | None = None,
                     seeds: Sequence[int] = (0,), num_inference_steps: int = 50, guidance_scale: float = 5.0,
                     fallback_dir=None, log=print, progress: bool = True,
                     save_path=None) -> tuple[Baselines, Path]:
    """Load the baselines at ``path``, or calibrate and save them there (or in ``fallback_dir`` if read-only).

    With ``save_path`` a copy there is read first, and new baselines are saved there instead of at ``path``
    (``sencache demo`` keeps everything it writes in its output folder, never in the installed package).
    Either way the calibration prompts are checked against ``evaluation_prompts``.
    """
    path = Path(path)
    if save_path is not None and Path(save_path).is_file():
        path = Path(save_path)
    if path.is_file():
        baselines = Baselines.load(path)
        baselines.check_model(pipe.transformer)
        check_disjoint(baselines.calibration_prompts, evaluation_prompts)
        return baselines, path
    if calibration_prompts is None:
        raise SenCacheError(f"no baselines at {path}: pass calibration_prompts to calibrate MagCache/TeaCache there "
                            f"(prompts never used for evaluation)")
    prompts = list(calibration_prompts)
    check_disjoint(prompts, evaluation_prompts)
    log(f"no baselines at {path}: calibrating MagCache/TeaCache on {len(prompts)} calibration prompt(s) "
        f"x {len(seeds)} seed(s), {num_inference_steps} steps (one-time)")
    baselines = calibrate_baselines(pipe, prompts, seeds, num_inference_steps, guidance_scale, progress=progress)
    try:
        saved = baselines.save(Path(save_path) if save_path is not None else path)
    except OSError:
        if fallback_dir is None:
            raise
        saved = baselines.save(Path(fallback_dir) / BASELINES_NAME)
    log(f"saved baselines to {saved} ({baselines.metadata.get('seconds', 0):.1f} s)")
    return baselines, saved
