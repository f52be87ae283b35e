"""Train a demo text-to-video model on CPU (or ``--device cuda``), with its architecture's own objective.

    python -m sencache.demo_model.train --vae runs/vae/vae --out runs/demo --minutes 80
    python -m sencache.demo_model.train --system cogvideox --vae runs/vae_cog/vae --out runs/cog --minutes 80

``--system`` picks the member of the demo family (:mod:`.systems`): wan (rectified flow, the shipped model),
cogvideox (v-prediction DDIM) or ltx (rectified flow on packed tokens).

The VAE (trained first by :mod:`.train_vae`) stays frozen: clips are encoded to its latent space and the
transformer and text encoder learn to denoise there; the exported pipeline contains the VAE.

Deterministic given ``--seed``: the batch and the noise of step k come from generators seeded with
(seed, k), so a run resumed from a checkpoint continues exactly where it stopped. Logs the loss to
``OUT/loss.csv``; saves a resumable ``OUT/checkpoint.pt`` and, at the end (or on Ctrl-C or SIGTERM), the EMA
weights as a diffusers pipeline folder ``OUT/pipeline`` of the system's pipeline class.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from sencache.demo_model import data
from sencache.demo_model.grow import grow_from
from sencache.demo_model.interruptible import save_atomic, sigterm_as_keyboard_interrupt
from sencache.demo_model.systems import SYSTEMS, system
from sencache.errors import SenCacheError
from sencache.runtime.call_defaults import CALL_DEFAULTS_FILE

CAPTION_DROPOUT = 0.1  # share of empty captions, so classifier-free guidance has an unconditional model


def make_batch(step: int, seed: int, batch_size: int, sizes=data.SIZE_PX, objects_mix=data.N_OBJECTS_WEIGHTS):
    """Batch ``step``: uint8 clips (B, F, H, W, 3) and captions (``CAPTION_DROPOUT`` of them empty), deterministic
    in (seed, step)."""
    rng = np.random.default_rng([seed, step])
    samples = [data.make_sample(rng, sizes, objects_mix) for _ in range(batch_size)]
    frames = np.stack([s.frames for s in samples])
    captions = [s.caption if rng.random() >= CAPTION_DROPOUT else "" for s in samples]
    return frames, captions


def batch_loss(member, pipe, frames, captions, generator: torch.Generator) -> torch.Tensor:
    """The member's training loss on a batch of clips, encoded by its frozen VAE."""
    inputs, target = member.training_example(pipe, member.encode_clips(pipe.vae, frames), captions, generator)
    return F.mse_loss(pipe.transformer(**inputs, return_dict=False)[0], target)


def trainable_modules(pipe):
    """The modules training updates: the transformer and the text encoder (the VAE stays frozen)."""
    return torch.nn.ModuleDict({"transformer": pipe.transformer, "text_encoder": pipe.text_encoder})


def init_from_pipeline(modules: torch.nn.ModuleDict, folder: str, grow: bool = False) -> None:
    """Start from the transformer and text encoder of a saved demo pipeline (a second training stage goes on
    from the first one's EMA weights). Their configs must be the ones this run builds, unless ``grow``: then
    this run's may add layers (and text-encoder buckets), started so that the model computes what it did."""
    # the classes of the modules this run built: a folder of another architecture fails to load, loudly
    loaded = {name: type(modules[name]).from_pretrained(folder, subfolder=name) for name in modules}
    for name, source in loaded.items():
        target = modules[name]
        if grow:
            grow_from(target, source)
            continue
        shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
        theirs, ours = shapes(source), shapes(target)
        if theirs != ours:
            differ = sorted(k for k in set(theirs) | set(ours) if theirs.get(k) != ours.get(k))
            raise SenCacheError(f"--init-from {folder}: its {name} does not have this run's architecture "
                                f"({len(differ)} tensors differ, e.g. {differ[0]}); pass the same "
                                "--transformer-overrides / --text-encoder-overrides it was trained with, "
                                "or --grow to start a larger model from it")
        target.load_state_dict(source.state_dict())


def lr_at(step: int, base_lr: float, warmup: int, total: int) -> float:
    """Learning rate at ``step``: linear warm-up over ``warmup`` steps, then cosine from ``base_lr`` down to 10 %
    at ``total``."""
    if step < warmup:
        return base_lr * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return base_lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def save_pipeline(pipe, ema: torch.nn.ModuleDict, out_dir: Path, call_kwargs: dict) -> None:
    """Save a copy of ``pipe`` with the EMA weights as a diffusers folder ``out_dir``, with its call defaults."""
    export = copy.deepcopy(pipe)
    trainable_modules(export).load_state_dict(ema.state_dict())
    export.save_pretrained(out_dir, safe_serialization=True)
    # loaded anywhere, the folder says its trained clip size (WanPipeline would default to Wan 2.1's)
    (Path(out_dir) / CALL_DEFAULTS_FILE).write_text(json.dumps(call_kwargs, indent=1) + "\n")


def train(args) -> Path:
    """Train (resume, or with ``--export-only`` just export) a demo model; returns the saved pipeline folder."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    # JSON has no tuples; diffusers configs (patch_size) use them
    overrides = {k: tuple(v) if isinstance(v, list) else v
                 for k, v in json.loads(args.transformer_overrides or "{}").items()}
    text_overrides = json.loads(args.text_encoder_overrides or "{}")
    member = system(args.system)
    if args.grow and args.system != "wan":  # grow.py knows Wan's blocks and UMT5's per-layer position buckets
        raise SenCacheError(f"--grow is implemented for the wan member only, not {args.system}")
    vae = member.load_vae(args.vae).eval().requires_grad_(False)
    pipe = member.build_pipeline(data.vocabulary(), seed=args.seed, vae=vae, text_encoder_overrides=text_overrides,
                          **overrides).to(args.device)
    modules = trainable_modules(pipe)
    if args.init_from:
        init_from_pipeline(modules, args.init_from, grow=args.grow)
    ema = copy.deepcopy(modules).requires_grad_(False)
    opt = torch.optim.AdamW(modules.parameters(), lr=args.lr, weight_decay=0.01, betas=(0.9, 0.99))
    start = 0
    ckpt_path = out / "checkpoint.pt"
    if ckpt_path.exists() and not args.restart:
        ckpt = torch.load(ckpt_path, weights_only=True, map_location=args.device)
        modules.load_state_dict(ckpt["model"])
        ema.load_state_dict(ckpt["ema"])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])
        print(f"resumed from {ckpt_path} at step {start}")
    if args.export_only:
        if start == 0:
            raise SystemExit(f"no checkpoint in {out} to export")
        save_pipeline(pipe, ema, out / "pipeline", member.call_kwargs())
        print(f"exported the EMA weights of step {start} to {out / 'pipeline'}")
        return out / "pipeline"
    log_mode = "a" if start > 0 else "w"
    log_file = open(out / "loss.csv", log_mode, newline="")
    log = csv.writer(log_file)
    if start == 0:
        log.writerow(["step", "loss", "lr", "elapsed_s"])

    def checkpoint(step: int) -> None:
        state = {"model": modules.state_dict(), "ema": ema.state_dict(), "opt": opt.state_dict(), "step": step}
        save_atomic(state, ckpt_path)

    deadline = time.time() + args.minutes * 60 if args.minutes else math.inf
    t0 = time.time()
    step = start
    bar = tqdm(total=args.steps, initial=start, desc="train", dynamic_ncols=True)
    with sigterm_as_keyboard_interrupt():
        try:
            while step < min(args.steps, args.stop_at or args.steps) and time.time() < deadline:
                for group in opt.param_groups:
                    group["lr"] = lr_at(step, args.lr, args.warmup, args.steps)
                frames, captions = make_batch(step, args.seed, args.batch_size, args.sizes, args.objects_mix)
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
                loss = batch_loss(member, pipe, frames, captions, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
                opt.step()
                decay = min(args.ema, (1 + step) / (10 + step))
                with torch.no_grad():
                    for e, p in zip(ema.parameters(), modules.parameters()):
                        e.lerp_(p, 1 - decay)
                step += 1
                log.writerow([step, f"{loss.item():.6f}", f"{opt.param_groups[0]['lr']:.3e}",
                              f"{time.time() - t0:.1f}"])
                log_file.flush()  # the curve on disk is always current (cheap: one line per step)
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step % args.save_every == 0:
                    checkpoint(step)
        except KeyboardInterrupt:
            print("interrupted: saving checkpoint and pipeline")
        finally:
            bar.close()
            log_file.close()
            checkpoint(step)
    save_pipeline(pipe, ema, out / "pipeline", member.call_kwargs())
    print(f"trained to step {step}; pipeline saved to {out / 'pipeline'}")
    return out / "pipeline"


def parse_args(argv=None):
    """The training script's command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=list(SYSTEMS), default="wan",
                   help="which architecture of the demo family to train (default %(default)s)")
    p.add_argument("--vae", required=True, help="trained VAE folder (python -m sencache.demo_model.train_vae)")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--steps", type=int, default=6000, help="total optimiser steps (sets the LR schedule)")
    p.add_argument("--minutes", type=float, default=0, help="stop early after this many minutes (0 = no limit)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--small-px", dest="sizes", type=data.sizes_option, default=str(data.SIZE_PX["small"]), metavar="N",
                   help="side of small objects in pixels (default %(default)s; the shipped model's VAE and first "
                        "three stages used 7)")
    p.add_argument("--objects-mix", type=data.objects_mix_option, default=data.N_OBJECTS_WEIGHTS, metavar="A,B,C",
                   help="weights of 1, 2 and 3 objects in the training clips (default: the training distribution, "
                        "%s); the seventh stage used 0.4,0.35,0.25 to train more on crowded clips"
                        % ",".join(map(str, data.N_OBJECTS_WEIGHTS)))
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--warmup", type=int, default=200)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda (random draws stay on the CPU)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--transformer-overrides", default=None, metavar="JSON",
                   help='transformer config entries to change (default: build.TRANSFORMER_CONFIG), '
                        'e.g. \'{"num_layers": 4, "patch_size": [2, 4, 4]}\'')
    p.add_argument("--text-encoder-overrides", default=None, metavar="JSON",
                   help='text encoder (UMT5) config entries to change (default: build.TEXT_ENCODER_CONFIG), '
                        'e.g. \'{"num_layers": 4, "relative_attention_num_buckets": 32}\'')
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="stop after this step, keeping the LR schedule of --steps (resume later to go on)")
    p.add_argument("--init-from", default=None, metavar="PIPELINE",
                   help="start the transformer and text encoder (and their EMA) from a saved demo pipeline "
                        "instead of random weights, e.g. the shipped model for a second training stage")
    p.add_argument("--grow", action="store_true",
                   help="with --init-from: this run's overrides may add layers or text-encoder buckets; the "
                        "new layers start as identities, so the larger model first computes what the old one did")
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--export-only", action="store_true",
                   help="save the checkpoint's EMA weights as a pipeline and exit")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
