"""Join the loss.csv of consecutive training stages into one curve: each stage's steps and elapsed seconds go on
from where the previous stage stopped.
    .venv/bin/python scripts/join_training_loss.py STAGE1/loss.csv STAGE2/loss.csv ... > training_loss.csv"""
import csv
import sys

rows = []
for path in sys.argv[1:]:
    last, elapsed = (int(rows[-1]["step"]), float(rows[-1]["elapsed_s"])) if rows else (0, 0.0)
    with open(path) as f:
        rows += [{**r, "step": int(r["step"]) + last, "elapsed_s": f'{float(r["elapsed_s"]) + elapsed:.1f}'}
                 for r in csv.DictReader(f)]
writer = csv.DictWriter(sys.stdout, ["step", "loss", "lr", "elapsed_s"], lineterminator="\n")
writer.writeheader()
writer.writerows(rows)
