"""Scenarios for tests/test_torchrun.py, run on 2 gloo ranks under torchrun (and in a single process for reference).

    python -m torch.distributed.run --standalone --nproc_per_node=2 tests/torchrun_worker.py decisions OUT_DIR

writes OUT_DIR/rank{r}.pt with the results of every scenario on that rank. The test imports the same
functions and runs them in one process on the whole latent, as the reference.
``... torchrun_worker.py compare-fail PROMPT SEED COMPARE_ARGS...`` runs `sencache compare` with that one
job made to fail.

* :func:`wan_context_parallel` — a tiny Wan under diffusers' real context parallelism (Ulysses, degree 2)
  with SenCache enabled after ``enable_parallelism`` (automatic sync).
* :func:`hand_sharded` — the latent split by hand along the frames: each rank runs the adapter on its half.
  SenCache with sync on (global RMS), with sync off, with the automatic default (no parallel config: must not
  sync), and a rule that looks at rank-local data with and without the guard.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

T_SHARDED = 6
EPS_SHARDED = 0.8
T_WAN = 8
EPS_WAN = 0.3


def _records(session) -> list[tuple]:
    return [(r.step, r.branch, r.sample, r.computed, r.reason, r.score) for r in session.trace.records]


# ------------------------------------------------------------------------------------------------------------
# diffusers context parallelism on a tiny Wan
# ------------------------------------------------------------------------------------------------------------


def cpu_context_parallel_shim() -> None:
    """diffusers 0.42 builds the CP device as ``torch.device(type, rank % torch.accelerator.device_count())``,
    which divides by zero on a CPU-only torch (no accelerator). Report one "device" so CPU + gloo can run."""
    if torch.accelerator.device_count() == 0:
        torch.accelerator.device_count = lambda: 1


def wan_context_parallel(parallel: bool) -> dict:
    from conftest import flat_profile, tiny_wan, wan_kwargs

    import sencache
    from sencache import SenCacheConfig

    pipe = tiny_wan(num_layers=2)
    config = SenCacheConfig(flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0), eps=EPS_WAN, eps_start=EPS_WAN,
                            max_reuse=2, final_steps=1, eps_schedule="constant")  # thresholds set by hand
    if parallel:
        from diffusers import ContextParallelConfig

        cpu_context_parallel_shim()
        pipe.transformer.enable_parallelism(config=ContextParallelConfig(ulysses_degree=2))
    session = sencache.enable(pipe, config)  # after enable_parallelism: sync is automatic, hooks reordered
    frames = pipe(prompt="a red circle moving left", generator=torch.Generator().manual_seed(0),
                  **wan_kwargs(steps=T_WAN)).frames
    return {"frames": frames, "records": _records(session), "synced": session.sync is not None,
            "block0_hooks": list(pipe.transformer.blocks[0]._diffusers_hook._hook_order),
            "notes": list(session.trace.notes)}


# ------------------------------------------------------------------------------------------------------------
# the latent sharded by hand
# ------------------------------------------------------------------------------------------------------------


def sharded_inputs(kind: str) -> tuple[list[torch.Tensor], list[float]]:
    """Full latents (1, 8, 4, 4, 4) per step. Frames 0-1 are rank 0's half, frames 2-3 rank 1's.

    ``drift``: only rank 1's half moves (by 1 per step, RMS 1 on the half, 1/sqrt(2) on the whole), so a
    rank-local RMS sees no change on rank 0 and a change of 1 on rank 1, the global one 0.707.
    ``sign``: rank 0's half is +1, rank 1's half flips between +1 (even steps) and -1 (odd steps).
    """
    ts = torch.linspace(900.0, 100.0, T_SHARDED).tolist()
    if kind == "drift":
        x0 = torch.randn(1, 8, 4, 4, 4, generator=torch.Generator().manual_seed(0))
        d = torch.zeros_like(x0)
        d[:, :, 2:] = 1.0
        return [x0 + k * d for k in range(T_SHARDED)], ts
    xs = []
    for k in range(T_SHARDED):
        x = torch.ones(1, 8, 4, 4, 4)
        x[:, :, 2:] = 1.0 if k % 2 == 0 else -1.0
        xs.append(x)
    return xs, ts


@dataclass
class LocalSignConfig:
    """A rule that looks at rank-local data: reuse after step 0 while the (local) latent mean is positive."""

    name = "local-sign"

    def build_rule(self):
        return LocalSignRule()


class LocalSignRule:
    name = "local-sign"

    def new_state(self, batch_size: int):
        return None

    def decide(self, state, inp):
        from sencache.core.rules.base import Decision

        want = inp.step > 0 and float(inp.latent.mean()) > 0
        return Decision(reuse=torch.full((inp.latent.shape[0],), want), score=None, eps=0.0)

    def observe_refresh(self, state, inp, rows, residual):
        pass


def run_bare(transformer, config, kind: str, rank: int, world: int, sync_group) -> dict:
    import sencache

    session = sencache.enable(transformer, config, num_inference_steps=T_SHARDED, sync_group=sync_group)
    xs, ts = sharded_inputs(kind)
    per = xs[0].shape[2] // world
    text = torch.zeros(1, 32, 64)
    for x, t in zip(xs, ts):
        transformer(hidden_states=x[:, :, rank * per:(rank + 1) * per], timestep=torch.tensor([t]),
                    encoder_hidden_states=text)
    out = {"records": _records(session), "computed": session.trace.computed_steps(), "notes": list(session.trace.notes),
           "synced": session.sync is not None}
    sencache.disable(transformer)
    return out


def hand_sharded(rank: int, world: int) -> dict:
    from conftest import flat_profile, tiny_wan

    from sencache import SenCacheConfig

    transformer = tiny_wan(num_layers=1).transformer
    sencache_config = SenCacheConfig(flat_profile("WanTransformer3DModel", jx=1.0, jt=0.0), eps=EPS_SHARDED,
                                     eps_start=EPS_SHARDED, max_reuse=3, final_steps=1, eps_schedule="constant")
    out = {}
    if world == 1:  # the reference: the whole latent in one process
        out["sencache"] = run_bare(transformer, sencache_config, "drift", 0, 1, None)
        out["sign"] = run_bare(transformer, LocalSignConfig(), "sign", 0, 1, None)
        return out
    out["sencache_sync"] = run_bare(transformer, sencache_config, "drift", rank, world, True)
    out["sencache_nosync"] = run_bare(transformer, sencache_config, "drift", rank, world, None)
    out["sencache_auto"] = run_bare(transformer, sencache_config, "drift", rank, world, "auto")
    out["sign_sync"] = run_bare(transformer, LocalSignConfig(), "sign", rank, world, True)
    out["sign_nosync"] = run_bare(transformer, LocalSignConfig(), "sign", rank, world, None)
    return out


def decisions(out_dir: str) -> int:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    result = {"hand_sharded": hand_sharded(rank, world)}
    result["wan_cp"] = wan_context_parallel(parallel=True)  # last: enable_parallelism leaves the mesh in place
    torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()
    return 0


def compare_with_a_failing_job(fail_prompt: str, fail_seed: int, cli_args: list[str]) -> int:
    """`sencache compare` where the job (fail_prompt, fail_seed) raises inside run_job, on whichever rank runs it."""
    import sencache.harness.compare as compare
    from sencache.cli import main

    real = compare.run_job

    def run_job(pipe, job, *args, **kwargs):
        if job.prompt == fail_prompt and job.seed == fail_seed:
            raise RuntimeError(f"injected failure for job {job.index}")
        return real(pipe, job, *args, **kwargs)

    compare.run_job = run_job
    return main(cli_args)


if __name__ == "__main__":
    if sys.argv[1] == "decisions":
        sys.exit(decisions(sys.argv[2]))
    if sys.argv[1] == "compare-fail":
        sys.exit(compare_with_a_failing_job(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
    sys.exit(f"unknown scenario {sys.argv[1]!r}")
