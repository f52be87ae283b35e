"""`sencache calibrate`: measure a model's sensitivity profile and write it (sharded under torchrun).

With ``--target-nfe`` the profile also stores budget mode's ε for that NFE as ``recommended_eps``.
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

from sencache.calibration.calibrate import calibrate
from sencache.calibration.loop import calibrate_loop
from sencache.calibration.videos import list_videos
from sencache.cli.options import add_model_arguments, load_model, resolve_model, seed_value, step_count
from sencache.core.budget import recommend
from sencache.errors import SenCacheError, check_int
from sencache.runtime import distributed as dist
from sencache.runtime.prompts import read_prompts


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------
def add_cli(subparsers) -> None:
    """Register ``sencache calibrate`` and its options on ``subparsers``."""
    p = subparsers.add_parser(
        "calibrate", help="measure a model's sensitivity profile (J_x, J_t per timestep)",
        description="Measure ||J_x|| and ||J_t|| along the model's own sampling trajectories (or noised videos) "
                    "and write a profile for `sencache generate --profile`. Shard over GPUs/CPUs with "
                    "`torchrun --nproc_per_node=K -m sencache.cli calibrate ...`.",
    )
    add_model_arguments(p, profile=False)
    p.add_argument("--prompts", help="text file, one prompt per line")
    p.add_argument("--steps", type=step_count, default=50, help="inference steps: the timestep grid (default 50)")
    p.add_argument("--samples", type=int, default=8, help="number of trajectories (prompt x seed; default 8)")
    p.add_argument("--out", default="profile.json", help="where to write the profile (default profile.json)")
    p.add_argument("--seed", type=seed_value, default=0, help="sample i uses generator seed SEED+i (default 0)")
    p.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the pipeline's)")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--guided", action="store_true", help="measure the CFG-combined output, not the cond branch")
    p.add_argument("--videos", help="folder of .mp4/.gif/.npy videos to noise instead of sampling trajectories")
    p.add_argument("--jt-curve", choices=("raw", "smooth"), default="raw", help="which J_t curve becomes jt")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run: every finished sample is kept in OUT.partial/ as it completes "
                        "(same arguments required); the folder is deleted once the profile is written")
    p.add_argument("--target-nfe", type=float, default=None,
                   help="also pick the eps whose simulated NFE on these trajectories is closest to this target "
                        "(stored as recommended_eps; sencache.budget.with_target(config, target_nfe=N) does the same "
                        "in Python)")
    p.add_argument("--loop-prompts", type=int, default=3,
                   help="calibration prompts (the first N, seed --seed) on which the closed-loop rule's clip-error "
                        "gain and replay tables are measured (default 3; 0 skips it: the rule falls back to the eps "
                        "schedule)")
    p.add_argument("--gain-every", type=int, default=3,
                   help="measure the gain at every K-th step, one extra generation each (default 3)")
    p.set_defaults(func=run_cli)


def run_cli(args) -> int:
    """``sencache calibrate``: check the arguments, measure the profile (sharded under torchrun), and on rank 0
    the closed-loop gain and a budget eps when asked, then write it; returns the exit code."""
    # cheap checks first: no model is loaded for a mistake in the arguments
    check_int("--samples", args.samples, 1)
    check_int("--steps", args.steps, 2)
    check_int("--seed", args.seed, 0)
    check_int("--loop-prompts", args.loop_prompts, 0)
    check_int("--gain-every", args.gain_every, 1)
    for name in ("frames", "height", "width"):
        value = getattr(args, name)
        if value is not None:
            check_int(f"--{name}", value, 1)
    out = Path(args.out)
    if out.is_dir():
        raise SenCacheError(f"--out {out} is a folder; give a file name like {out / 'profile.json'}")
    target_nfe = getattr(args, "target_nfe", None)
    if target_nfe is not None:
        if not (math.isfinite(target_nfe) and 1 <= target_nfe <= args.steps):
            raise SenCacheError(f"--target-nfe must be between 1 and --steps {args.steps} (got {target_nfe:g})")
        if args.videos is not None:
            raise SenCacheError("--target-nfe needs sampling trajectories; it cannot be combined with --videos")
    prompts = read_prompts(args.prompts) if args.prompts else None
    if prompts is None and args.videos is None:
        raise SenCacheError("pass --prompts FILE (one prompt per line), or --videos DIR")
    videos = list_videos(args.videos) if args.videos is not None else None
    resolve_model(args.model)  # a missing folder fails before the process group starts
    dist.init_if_needed()
    pipe, model = load_model(args, progress=not args.no_progress and dist.is_main())
    kwargs = {}  # the size flags are already the pipeline's call defaults (load_model)
    if args.guidance is not None:
        kwargs["guidance_scale"] = args.guidance
    if args.negative_prompt is not None:
        kwargs["negative_prompt"] = args.negative_prompt
    partial = out.with_name(out.name + ".partial")
    profile = calibrate(pipe, prompts, num_inference_steps=args.steps, num_samples=args.samples, seed=args.seed,
                        guided=args.guided, videos=videos, progress=not args.no_progress, jt_curve=args.jt_curve,
                        checkpoint=partial, resume=args.resume, **kwargs)
    if dist.is_main():
        profile.metadata["model_dir"] = str(model)
        if args.loop_prompts and prompts:
            info = calibrate_loop(pipe, profile, prompts[:args.loop_prompts], seeds=(args.seed,),
                                  num_inference_steps=args.steps, gain_every=args.gain_every,
                                  progress=not args.no_progress, call_kwargs=kwargs)
            print(f"closed loop: clip-error gain at {len(info['gain_steps'])} steps on {len(info['prompts'])} "
                  f"prompt(s), combine {info['combine']:.3g} ({info['seconds']:.0f} s)")
            recommend(profile, args.steps / 2, loop=True)
        if target_nfe is not None:
            budget = recommend(profile, target_nfe)
            print(f"budget: eps={budget['eps']:.4g} gives a simulated mean NFE of {budget['simulated_nfe']:g} "
                  f"(target {target_nfe:g} of {args.steps}) on the {budget['trajectories']} calibration trajectories")
        profile.save(out)
        print(f"wrote {out}: {len(profile.timesteps)} timesteps, J_x {min(profile.jx):.4g}..{max(profile.jx):.4g}, "
              f"J_t {min(profile.jt):.4g}..{max(profile.jt):.4g} ({profile.metadata['branch']} branch, "
              f"{profile.metadata['num_samples']} samples)")
    dist.barrier()
    if dist.is_main():
        shutil.rmtree(partial, ignore_errors=True)  # the profile is written: its finished samples are done with
    return 0
