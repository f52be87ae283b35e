"""Finished items of a long run on disk, so that an interrupted run continues where it stopped.

At real size a calibration sample costs minutes (36 s for Wan 2.1 1.3B at 480×832×33 on an H200, several times
that at 81 frames) and a comparison job more. Every finished item (a calibration sample, a comparison job) is
written to the run's checkpoint folder as it completes — ``item_NNNNN.json`` (its record, floats as exact
decimals) and, when it has any, ``item_NNNNN.npz`` (its arrays) — next to ``run.json``, the arguments that
decide what the items are. Resuming reads the finished items back and runs the rest; a run with other
arguments is refused, so the resumed result equals an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from sencache.errors import SenCacheError
from sencache.runtime import distributed as dist
from sencache.toolbox.files import write_json_atomic

RUN_FILE = "run.json"


class RunCheckpoint:
    """The checkpoint folder of one run.

    Args:
        folder: where finished items go.
        run: the arguments that decide what each item is (compared on resume).
        resume: continue the run found in ``folder``; without it, a folder holding finished items is refused
            (nothing is deleted behind the user's back).
        what: the run's name in messages ("calibration", "comparison").
    """

    def __init__(self, folder, run: dict, resume: bool = False, what: str = "run"):
        self.folder = Path(folder)
        self.run = json.loads(json.dumps(run))  # the form it takes on disk, so the comparison is exact
        found = self.folder / RUN_FILE
        if found.is_file():
            done = len(list(self.folder.glob("item_*.json")))
            if not resume:
                raise SenCacheError(f"{self.folder} holds {done} finished item(s) of an interrupted {what}: pass "
                                    f"--resume (resume=True) to continue it, or delete the folder to start over")
            try:
                stored = json.loads(found.read_text())
            except (OSError, ValueError) as exc:
                raise SenCacheError(f"cannot read {found} ({exc}); delete {self.folder} to start over") from None
            differ = [k for k in sorted(set(stored) | set(self.run)) if stored.get(k) != self.run.get(k)]
            if differ:
                raise SenCacheError(f"cannot resume {self.folder}: the interrupted {what} was run with other "
                                    f"{', '.join(differ)}; run it with the same arguments, or delete the folder "
                                    f"to start over")
        dist.barrier()  # every rank has checked before rank 0 writes run.json
        if dist.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            _write_json(found, self.run)
        dist.barrier()

    def _path(self, index: int, suffix: str) -> Path:
        return self.folder / f"item_{index:05d}{suffix}"

    def load(self, index: int) -> tuple[dict, dict[str, np.ndarray]] | None:
        """Item ``index`` as it was saved (its record and arrays), or None when it is not finished."""
        path = self._path(index, ".json")
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
            arrays = {}
            if data["arrays"]:
                with np.load(self._path(index, ".npz"), allow_pickle=False) as npz:
                    arrays = {name: npz[f"a{i}"] for i, name in enumerate(data["arrays"])}
        except (OSError, ValueError, KeyError):
            return None  # cut short by the interruption: run the item again
        return data["record"], arrays

    def save(self, index: int, record: dict, arrays: dict[str, np.ndarray] | None = None) -> None:
        """Write finished item ``index``: arrays first, the record last (its presence marks the item done)."""
        names = list(arrays or {})
        if names:
            tmp = self._path(index, ".tmp.npz")
            np.savez(tmp, **{f"a{i}": np.asarray(arrays[n]) for i, n in enumerate(names)})
            tmp.replace(self._path(index, ".npz"))
        _write_json(self._path(index, ".json"), {"record": record, "arrays": names})


def _write_json(path: Path, data: dict) -> None:
    write_json_atomic(path, data, indent=None, allow_nan=True)  # NaN stays NaN (Python reads it back)
