"""What every calibration target shares: the pipeline call's settings (its own defaults, then the model
family's call defaults, then the caller's), CFG, and the text conditioning cached per prompt. A family's
target adds the initial noise, the transformer call and the sampler step the way its pipeline makes them."""

from __future__ import annotations

import hashlib
import inspect

import numpy as np
import torch

from sencache.core.profile import model_class_name, model_config_hash
from sencache.errors import SenCacheError
from sencache.runtime.call_defaults import call_defaults

ACCEPTED = ("height", "width", "num_frames", "guidance_scale", "negative_prompt", "max_sequence_length",
            "attention_kwargs")


class PipelineTarget:
    """The settings and conditioning part of a calibration target (``family`` names it in messages)."""

    family = "pipeline"
    extra_accepted: tuple[str, ...] = ()  # the family's own call arguments that change the trajectory

    def __init__(self, pipe, pipe_kwargs: dict):
        self.pipe = pipe
        accepted = ACCEPTED + self.extra_accepted
        unknown = sorted(set(pipe_kwargs) - set(accepted))
        if unknown:
            raise SenCacheError(f"calibrate() got unsupported {self.family} argument(s) {', '.join(unknown)}; "
                                f"it accepts {', '.join(accepted)}")
        defaults = {k: p.default for k, p in inspect.signature(type(pipe).__call__).parameters.items()
                    if p.default is not inspect.Parameter.empty}
        self.settings = {**{k: defaults.get(k) for k in accepted}, **call_defaults(pipe), **pipe_kwargs}
        self.transformer = pipe.transformer
        self.device = pipe._execution_device
        self.dtype = self.transformer.dtype
        guidance = self.settings["guidance_scale"]
        self.guidance = float(guidance if guidance is not None else 1.0)
        self.cfg = self.guidance > 1.0
        self.negative_prompt = self.settings["negative_prompt"] or ""
        self.max_sequence_length = int(self.settings["max_sequence_length"])
        self.attention_kwargs = self.settings["attention_kwargs"]
        self._embeds: dict[str, tuple] = {}

    def conditioning_image(self):
        """Image-to-video: the ``image`` every calibration sample is conditioned on (a call argument, or a call
        default attached to the pipeline)."""
        image = self.settings.get("image")
        if image is None:
            raise SenCacheError(f"calibrating {type(self.pipe).__name__} needs the conditioning image: pass "
                                f"image=... (a PIL image) to calibrate(), or attach it as a call default")
        return image

    def conditioning_digest(self) -> dict:
        """A short sha256 per conditioning image (``image``, ``last_image``) of this calibration, so the profile
        says which image it was measured on and a resumed run with another image is refused; {} for text-only."""
        out = {}
        for key in ("image", "last_image"):
            value = self.settings.get(key)
            if value is None:
                continue
            array = value.detach().cpu().float().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            digest = hashlib.sha256(np.ascontiguousarray(array).tobytes() + str(array.shape).encode()).hexdigest()
            out[key] = digest[:16]
        return out

    def use_true_cfg(self) -> None:
        """FLUX and HunyuanVideo: ``guidance_scale`` is the embedded (distilled) guidance, and classifier-free
        guidance is ``true_cfg_scale`` with a negative prompt (the pipeline's ``do_true_cfg``), two calls per step."""
        self.embedded_guidance = self.guidance
        self.guidance = float(self.settings.get("true_cfg_scale") or 1.0)
        self.negative_prompt = self.settings.get("negative_prompt")
        self.cfg = self.guidance > 1.0 and self.negative_prompt is not None

    # -- experts: one denoising transformer unless a family says otherwise (Wan 2.2) -------------------------
    def experts(self) -> dict:
        """The pipeline's denoising transformers by name, in serving order."""
        return {"transformer": self.transformer}

    def expert_at(self, t) -> str:
        """The name of the transformer that serves timestep ``t``."""
        return "transformer"

    def segment_of(self):
        """``expert_at`` when the pipeline has several experts (calibration then measures each on its own steps),
        else None."""
        return self.expert_at if len(self.experts()) > 1 else None

    def expert_metadata(self, grid: list[float]) -> dict:
        """For a profile of several experts: each one's class, config hash and the timesteps it served."""
        if len(self.experts()) < 2:
            return {}
        experts = {}
        for name, module in self.experts().items():
            served = [t for t in grid if self.expert_at(t) == name]
            if not served:
                raise SenCacheError(f"{name} serves no step of the {len(grid)}-step grid; calibrate with more steps")
            experts[name] = {"model_class": model_class_name(module), "config_hash": model_config_hash(module),
                             "timesteps": [min(served), max(served)], "steps": len(served)}
        return {"experts": experts}

    def conditioning(self, prompt: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(cond, uncond) text embeddings as the pipeline encodes them, cached per prompt."""
        if prompt not in self._embeds:
            with torch.no_grad():  # as in the pipeline: the text encoder may take another kernel path with grad
                cond, uncond = self.pipe.encode_prompt(
                    prompt=prompt, negative_prompt=self.negative_prompt, do_classifier_free_guidance=self.cfg,
                    num_videos_per_prompt=1, max_sequence_length=self.max_sequence_length, device=self.device)
            self._embeds[prompt] = (cond.to(self.dtype), uncond.to(self.dtype) if uncond is not None else None)
        return self._embeds[prompt]

    def denoisers(self, prompt: str, guided: bool):
        """(the measured output f(x, t), the sampler's CFG output (x, t, f) or None): the conditional branch,
        or with ``guided`` the CFG-combined output itself."""
        cond, uncond = self.conditioning(prompt)

        def f_cond(x, t):
            return self.forward(x, t, cond)

        if not self.cfg:
            return f_cond, None
        combine = self.cfg_output(cond, uncond, f_cond)
        if guided:
            return (lambda x, t: combine(x, t, None)), None
        return f_cond, combine

    def guidance_at(self, t) -> float:
        """The CFG scale at timestep ``t`` (Wan 2.2's low-noise expert has its own)."""
        return self.guidance

    def cfg_output(self, cond, uncond, f_cond):
        """The sampler's output where the pipeline calls cond and uncond separately (Wan, FLUX, HunyuanVideo):
        uncond + g·(cond − uncond). Families that batch the two override it."""

        def combine(x, t, f_c):
            f_c = f_cond(x, t) if f_c is None else f_c
            f_u = self.forward(x, t, uncond)
            return f_u + self.guidance_at(t) * (f_c - f_u)

        return combine

    def forwards_per_step(self, guided: bool) -> int:
        """Transformer forwards per grid step: the call, a J_x and a J_t probe, and their uncond twins with CFG
        (only the first with ``guided=False``: the probes measure the conditional branch)."""
        return 3 if not self.cfg else (6 if guided else 4)

    def set_timesteps(self, scheduler, num_inference_steps: int) -> None:
        """The grid the pipeline samples on (its own ``set_timesteps`` call)."""
        scheduler.set_timesteps(num_inference_steps, device=self.device)

    def sampler_step(self):
        """None: the scheduler's own ``step(output, t, x)`` is the pipeline's."""
        return None

    def branch(self, guided: bool) -> str:
        """The measured branch, as the profile records it: "guided" (the CFG-combined output) or "cond"."""
        return "guided" if (guided and self.cfg) else "cond"
