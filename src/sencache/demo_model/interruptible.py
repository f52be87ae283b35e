"""What both training scripts share so that a stopped run loses nothing: atomic checkpoints, and SIGTERM
handled like Ctrl-C (background jobs of a non-interactive shell ignore SIGINT, so `kill` is how they are stopped)."""

from __future__ import annotations

import contextlib
import signal
from pathlib import Path

import torch

from sencache.toolbox.files import write_atomic


def save_atomic(state: dict, path: Path) -> None:
    """``torch.save`` through a temporary file: an interrupted save never corrupts the last checkpoint."""
    write_atomic(path, lambda tmp: torch.save(state, tmp))


def _raise_keyboard_interrupt(signum, frame):
    raise KeyboardInterrupt


@contextlib.contextmanager
def sigterm_as_keyboard_interrupt():
    """Inside the block SIGTERM raises KeyboardInterrupt, as Ctrl-C does; the previous handler is
    restored on exit."""
    previous = signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
