"""Train a demo model's video autoencoder (a tiny diffusers ``AutoencoderKLWan``, or with ``--system`` an
``AutoencoderKLCogVideoX`` / ``AutoencoderKLLTXVideo``) on CPU.

    python -m sencache.demo_model.train_vae --out runs/vae --minutes 15
    python -m sencache.demo_model.train_vae --system ltx --out runs/vae_ltx --minutes 15

The autoencoder turns a 9x32x32 RGB clip into an 8-channel latent of 5x8x8 (time /2 after the first
frame, space /4), so the transformer only has to place objects and the decoder draws them. Loss: L1 +
MSE reconstruction of a latent blurred by a little Gaussian noise (so the decoder tolerates the small errors a
diffusion model makes), plus a small penalty on the latent's size so the encoder cannot simply outgrow the noise.
(A KL term from the start collapsed the latent here: with the posterior's unit variance drowning the encoder's
initially tiny means, the decoder learned to ignore the latent and drew the mean background.) At the end
the per-channel latent mean and std are measured on fresh clips and stored where the system's pipeline reads
them (Wan: ``latents_mean`` / ``latents_std`` in the config; LTX: the VAE's buffers of the same names; CogVideoX:
one ``scaling_factor``). Deterministic given
``--seed``; resumable from ``OUT/vae_checkpoint.pt``; SIGTERM or Ctrl-C stop with a checkpoint and export.

``--decoder-of VAE_DIR`` sharpens the decoder of a finished VAE while its encoder (and so the latent space a
transformer was trained in, and the recorded latent statistics) stays exactly as it was. With
``--vae-overrides '{"decoder_base_dim": 32}'`` the decoder is replaced by a wider one trained from scratch on the
same frozen latents, so a transformer trained on the old VAE works with the new one unchanged.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from sencache.demo_model import data
from sencache.demo_model.build import frames_to_pixels
from sencache.demo_model.interruptible import save_atomic, sigterm_as_keyboard_interrupt
from sencache.demo_model.systems import SYSTEMS, system
from sencache.errors import SenCacheError

LATENT_NOISE = 0.1  # std of the noise added to the posterior mean while training
SIZE_WEIGHT = 1e-4  # weight of mean(z^2)
# Object pixels (saturated palette colours; backgrounds are near-gray) are ~10 % of a clip but all that matters:
# unweighted, the loss sat at "draw the mean background" for the first 300+ steps here.
OBJECT_WEIGHT = 10.0
OBJECT_CHROMA = 0.47  # max(rgb) - min(rgb) in [-1, 1] units above which a pixel is an object pixel (60 of 255)


def make_clips(step: int, seed: int, batch_size: int, sizes=data.SIZE_PX) -> torch.Tensor:
    """Clips of ``step`` as float (B, 3, F, H, W) in [-1, 1], deterministic in (seed, step)."""
    rng = np.random.default_rng([seed, step, 7])  # 7: a stream apart from the transformer's batches
    return frames_to_pixels(np.stack([data.make_sample(rng, sizes).frames for _ in range(batch_size)]))


def vae_loss(vae, x: torch.Tensor, generator: torch.Generator,
             latent_noise: float = LATENT_NOISE) -> tuple[torch.Tensor, float]:
    """(loss, reconstruction part): object-weighted L1 + MSE of the clips decoded from a noised latent, plus
    a small penalty on the latent's size."""
    mean = vae.encode(x).latent_dist.mean
    y = vae.decode(mean + latent_noise * torch.randn(mean.shape, generator=generator).to(mean.device)).sample
    weight = 1.0 + (OBJECT_WEIGHT - 1.0) * ((x.amax(1, keepdim=True) - x.amin(1, keepdim=True)) > OBJECT_CHROMA)
    rec = (weight * ((y - x).abs() + (y - x) ** 2)).mean() / weight.mean()
    return rec + SIZE_WEIGHT * (mean ** 2).mean(), rec.item()


@torch.no_grad()
def measure_latent_stats(vae, seed: int, clips: int = 256, batch_size: int = 16,
                         sizes=data.SIZE_PX) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the posterior means of fresh clips (the normalisation WanPipeline undoes)."""
    zs = [vae.encode(make_clips(10_000_000 + i, seed, batch_size, sizes).to(vae.device)).latent_dist.mean
          for i in range(math.ceil(clips / batch_size))]
    z = torch.cat(zs).transpose(0, 1).flatten(1).cpu()
    return z.mean(1).tolist(), z.std(1).tolist()


DECODER_ONLY_KEYS = {"decoder_base_dim"}  # config entries that leave the encoder, and so the latent space, alone


def load_for_decoder_training(vae_dir: str, overrides: dict, seed: int):
    """The VAE at ``vae_dir`` with its encoder frozen; with ``overrides`` (decoder-only config entries) a new
    VAE whose encoder and quant_conv are copied from it and whose decoder starts from random weights."""
    from diffusers import AutoencoderKLWan


    old = AutoencoderKLWan.from_pretrained(vae_dir)
    if set(overrides) - DECODER_ONLY_KEYS:
        raise SenCacheError(f"--decoder-of keeps the encoder and its latent space: only {sorted(DECODER_ONLY_KEYS)} "
                            f"may change (got {sorted(overrides)})")
    if overrides:
        torch.manual_seed(seed)
        vae = AutoencoderKLWan(**{**dict(old.config), **overrides})
        kept = {k: v for k, v in old.state_dict().items() if k.startswith(("encoder.", "quant_conv."))}
        missing, unexpected = vae.load_state_dict(kept, strict=False)
        assert not unexpected and not any(k.startswith(("encoder.", "quant_conv.")) for k in missing)
    else:
        vae = old
    vae.encoder.requires_grad_(False)
    vae.quant_conv.requires_grad_(False)
    return vae


def train(args) -> Path:
    """Train (or resume) a demo VAE, store its latent statistics (unless only the decoder trained) and save it;
    returns the VAE folder."""
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    member = system(args.system)
    if args.decoder_of and args.system != "wan":
        raise SenCacheError("--decoder-of is only implemented for the wan system's VAE")
    if args.decoder_of:
        vae = load_for_decoder_training(args.decoder_of, json.loads(args.vae_overrides or "{}"), args.seed)
    else:
        vae = member.build_vae(seed=args.seed, **json.loads(args.vae_overrides or "{}"))
    vae.to(args.device)
    opt = torch.optim.AdamW([p for p in vae.parameters() if p.requires_grad], lr=args.lr, weight_decay=0.0)
    ckpt_path = out / "vae_checkpoint.pt"
    start = 0
    if ckpt_path.exists() and not args.restart:
        ckpt = torch.load(ckpt_path, weights_only=True, map_location=args.device)
        vae.load_state_dict(ckpt["model"])
        opt.load_state_dict(ckpt["opt"])
        start = int(ckpt["step"])
        print(f"resumed from {ckpt_path} at step {start}")
    log_file = open(out / "vae_loss.csv", "a" if start else "w", newline="")
    log = csv.writer(log_file)
    if not start:
        log.writerow(["step", "loss", "reconstruction", "elapsed_s"])

    def checkpoint(step: int) -> None:
        save_atomic({"model": vae.state_dict(), "opt": opt.state_dict(), "step": step}, ckpt_path)

    deadline = time.time() + args.minutes * 60 if args.minutes else math.inf
    t0, step = time.time(), start
    bar = tqdm(total=args.steps, initial=start, desc="train vae", dynamic_ncols=True)
    with sigterm_as_keyboard_interrupt():
        try:
            while step < min(args.steps, args.stop_at or args.steps) and time.time() < deadline:
                progress = step / max(1, args.steps)
                for group in opt.param_groups:  # warm-up, then cosine down to 10 %
                    group["lr"] = (args.lr * min(1.0, (step + 1) / 100)
                                   * (0.1 + 0.45 * (1 + math.cos(math.pi * progress))))
                gen = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
                clips = make_clips(step, args.seed, args.batch_size, args.sizes).to(args.device)
                loss, rec = vae_loss(vae, clips, gen, args.latent_noise)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
                opt.step()
                step += 1
                log.writerow([step, f"{loss.item():.6f}", f"{rec:.6f}", f"{time.time() - t0:.1f}"])
                log_file.flush()
                bar.update(1)
                bar.set_postfix(rec=f"{rec:.4f}")
                if step % args.save_every == 0:
                    checkpoint(step)
        except KeyboardInterrupt:
            print("interrupted: saving checkpoint and VAE")
        finally:
            bar.close()
            log_file.close()
            checkpoint(step)
    vae.eval()
    if not args.decoder_of:  # a decoder fine-tune keeps the encoder, so the statistics stay valid
        mean, std = measure_latent_stats(vae, args.seed, sizes=args.sizes)
        member.set_latent_stats(vae, mean, std)
        print(f"latent std per channel: {', '.join(f'{s:.2f}' for s in std)}")
    vae.save_pretrained(out / "vae", safe_serialization=True)
    print(f"trained to step {step}; VAE saved to {out / 'vae'}")
    return out / "vae"


def parse_args(argv=None):
    """The VAE training script's command-line options."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--system", choices=list(SYSTEMS), default="wan",
                   help="whose VAE class to train (default %(default)s)")
    p.add_argument("--out", default="runs/vae")
    p.add_argument("--steps", type=int, default=3000, help="total optimiser steps (sets the LR schedule)")
    p.add_argument("--minutes", type=float, default=0, help="stop early after this many minutes (0 = no limit)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--small-px", dest="sizes", type=data.sizes_option, default=str(data.SIZE_PX["small"]), metavar="N",
                   help="side of small objects in pixels (default %(default)s; the shipped model's VAE and first "
                        "three stages used 7)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--device", default="cpu", help="torch device to train on, e.g. cuda (random draws stay on the CPU)")
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--stop-at", type=int, default=0, metavar="STEP",
                   help="stop after this step, keeping the LR schedule of --steps (resume later to go on)")
    p.add_argument("--latent-noise", type=float, default=LATENT_NOISE,
                   help="std of the Gaussian noise added to the latent while training (robustness vs. sharpness)")
    p.add_argument("--vae-overrides", default=None, metavar="JSON",
                   help='VAE config entries to change (default: build.VAE_CONFIG), e.g. '
                        '\'{"dim_mult": [1, 2], "temperal_downsample": [true], "scale_factor_spatial": 2}\'')
    p.add_argument("--restart", action="store_true", help="ignore an existing checkpoint")
    p.add_argument("--decoder-of", default=None, metavar="VAE_DIR",
                   help="fine-tune only the decoder of this trained VAE (encoder and latent statistics frozen)")
    return p.parse_args(argv)


if __name__ == "__main__":
    train(parse_args())
