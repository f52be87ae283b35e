"""Check that the built wheel and sdist carry every shipped demo system (model, profile, baselines), or with
``--digest FOLDER`` print one sha256 line per file under FOLDER (to see whether a run changed an installed
package). Used by scripts/wheel_smoke.sh."""

from __future__ import annotations

import argparse
import hashlib
import sys
import tarfile
import zipfile
from pathlib import Path

SYSTEMS = ("weights", "weights_cogvideox", "weights_ltx")
NEEDED = ("model_index.json", "sencache_profile.json", "baselines.json", "transformer/config.json",
          "transformer/diffusion_pytorch_model.safetensors")


def names_in(dist: Path) -> list[str]:
    if dist.suffix == ".whl":
        with zipfile.ZipFile(dist) as z:
            return z.namelist()
    with tarfile.open(dist) as t:
        return [name.split("/", 1)[1] for name in t.getnames() if "/" in name]  # drop the sencache-X.Y/ prefix


def missing_in(dist: Path) -> list[str]:
    names = set(names_in(dist))
    prefix = "sencache/demo_model/" if dist.suffix == ".whl" else "src/sencache/demo_model/"
    return [f"{system}/{file}" for system in SYSTEMS for file in NEEDED if f"{prefix}{system}/{file}" not in names]


def digest(folder: Path) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts:
            print(hashlib.sha256(path.read_bytes()).hexdigest(), path.relative_to(folder))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("paths", nargs="+", type=Path)
    parser.add_argument("--digest", action="store_true")
    args = parser.parse_args()
    if args.digest:
        for folder in args.paths:
            digest(folder)
        return 0
    failed = False
    for dist in args.paths:
        missing = missing_in(dist)
        print(f"{dist.name}: " + ("every demo system present" if not missing else f"MISSING {', '.join(missing)}"))
        failed |= bool(missing)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
