"""The pure core: sensitivity profiles, ε schedules, caching rules, stored trajectories, offline replay and
budget mode. Tensors and numbers in, decisions out; torch, numpy and the standard library only — no
diffusers, no torch.distributed, nothing from the layers above."""
