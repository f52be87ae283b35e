"""The closed-loop rule's audit on the shipped Wan demo model: local and per-clip predicted vs real error at the
tolerances budget mode picks for NFE 25 and 15 (docs/audit_loop/).
    .venv/bin/python scripts/audit_loop.py [prompts.txt] [seeds...]"""

import sys
from pathlib import Path

import torch

from sencache import SenCacheConfig, SensitivityProfile
from sencache.budget import with_target
from sencache.demo_model import load_pipeline
from sencache.harness.loop_audit import audit_table, loop_audit, write_loop_audit
from sencache.runtime.prompts import read_prompts

torch.set_num_threads(1)
root = Path(__file__).resolve().parents[1]
weights = root / "src" / "sencache" / "demo_model" / "weights"
prompts = read_prompts(sys.argv[1] if len(sys.argv) > 1 else root / "docs" / "eval_prompts.txt")
seeds = [int(s) for s in sys.argv[2:]] or [0, 1]
pipe = load_pipeline(str(weights))
profile = SensitivityProfile.load(weights / "sencache_profile.json")
results = [loop_audit(pipe, with_target(SenCacheConfig(profile, loop=True), target_nfe=n), prompts, seeds,
                      progress=False)
           for n in (25, 15)]
write_loop_audit(results, root / "docs" / "audit_loop")
print(audit_table(results))
