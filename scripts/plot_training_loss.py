"""Plot a training loss.csv (step, loss, ...) as raw points and a 100-step running mean.

    .venv/bin/python scripts/plot_training_loss.py src/sencache/demo_model/weights/training_loss.csv docs/training_loss.png
"""  # noqa: E501

import csv
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def main(src: str, out: str, window: int = 100) -> None:
    with open(src) as f:
        rows = list(csv.DictReader(f))
    step = np.array([int(r["step"]) for r in rows])
    loss = np.array([float(r["loss"]) for r in rows])
    mean = np.convolve(loss, np.ones(window) / window, mode="valid")
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot(step, loss, ".", ms=1, alpha=0.3, color="gray", label="per step")
    ax.plot(step[window - 1:], mean, color="C0", label=f"{window}-step mean")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("flow-matching loss (latent units)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
