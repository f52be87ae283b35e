"""Finished calibration samples on disk, so that an interrupted calibration continues where it stopped.

At real size one sample costs minutes (36 s for Wan 2.1 1.3B at 480×832×33 on an H200, several times that at
81 frames). Every finished sample is written to the checkpoint folder as it completes (``sample_NNNNN.json``,
its secant curves as exact decimal floats), next to ``run.json``, the arguments that decide what a sample
measures. Resuming loads the finished samples and measures the rest; a run with other arguments is refused,
so a resumed profile equals an uninterrupted one.
"""

from __future__ import annotations

import json
from pathlib import Path

from sencache.calibration.secants import SampleCurves
from sencache.errors import SenCacheError
from sencache.runtime import distributed as dist

RUN_FILE = "run.json"


class SampleCheckpoint:
    """The checkpoint folder of one calibration run.

    Args:
        folder: where finished samples go.
        run: the arguments that decide what each sample measures (compared on resume).
        resume: continue the run found in ``folder``; without it, a folder holding finished samples is
            refused (nothing is deleted behind the user's back).
    """

    def __init__(self, folder, run: dict, resume: bool = False):
        self.folder = Path(folder)
        self.run = json.loads(json.dumps(run))  # the form it takes on disk, so the comparison is exact
        found = self.folder / RUN_FILE
        if found.is_file():
            done = len(list(self.folder.glob("sample_*.json")))
            if not resume:
                raise SenCacheError(f"{self.folder} holds {done} finished sample(s) of an interrupted calibration: "
                                    f"pass --resume (calibrate(..., resume=True)) to continue it, or delete the "
                                    f"folder to start over")
            try:
                stored = json.loads(found.read_text())
            except (OSError, ValueError) as exc:
                raise SenCacheError(f"cannot read {found} ({exc}); delete {self.folder} to start over") from None
            differ = [k for k in sorted(set(stored) | set(self.run)) if stored.get(k) != self.run.get(k)]
            if differ:
                raise SenCacheError(f"cannot resume {self.folder}: the interrupted calibration was run with other "
                                    f"{', '.join(differ)}; run it with the same arguments, or delete the folder "
                                    f"to start over")
        dist.barrier()  # every rank has checked before rank 0 writes run.json
        if dist.is_main():
            self.folder.mkdir(parents=True, exist_ok=True)
            _write(found, self.run)
        dist.barrier()

    def _path(self, index: int) -> Path:
        return self.folder / f"sample_{index:05d}.json"

    def load(self, index: int) -> SampleCurves | None:
        """Sample ``index`` as it was measured, or None when it is not finished."""
        path = self._path(index)
        if not path.is_file():
            return None
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            return None  # a file cut short by the interruption: measure the sample again
        return SampleCurves(timesteps=data["timesteps"], jx=data["jx"], jt=data["jt"], jtt=data["jtt"],
                            dist=data["dist"])

    def save(self, index: int, curves: SampleCurves) -> None:
        """Write finished sample ``index`` (atomically: an interruption never leaves half a file)."""
        dist_ = None if curves.dist is None else [[float(v) for v in row] for row in curves.dist]
        _write(self._path(index), {"timesteps": [float(v) for v in curves.timesteps],
                                   "jx": [float(v) for v in curves.jx], "jt": [float(v) for v in curves.jt],
                                   "jtt": [float(v) for v in curves.jtt], "dist": dist_})


def _write(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data))  # NaN stays NaN (Python reads it back)
    tmp.replace(path)
