"""Start a larger demo model from a trained smaller one without changing what it computes.

A training stage may add layers to the transformer or the text encoder, or give the text encoder finer
relative-position buckets. Every tensor the two models share is copied; the added layers are appended after
the trained ones with their output projections zeroed, so each is an identity on the residual stream until
training moves it; a relative-attention bias table with more buckets is filled from the old table, each new
bucket taking the old bucket its relative positions fell in. So the grown model's first output equals the
trained model's, and training goes on from there instead of from scratch.
"""

from __future__ import annotations

import re

import torch

from sencache.errors import SenCacheError

# Output projections of a residual layer (Wan block: self-attention, cross-attention, FFN; UMT5 block:
# self-attention, feed-forward): zero them and the layer adds nothing to the stream.
_OUTPUT_PROJECTIONS = re.compile(
    r"(attn1\.to_out\.0|attn2\.to_out\.0|ffn\.net\.2)\.(weight|bias)$"
    r"|SelfAttention\.o\.weight$|DenseReluDense\.wo\.weight$"
)
_LAYER_INDEX = re.compile(r"^(blocks|encoder\.block)\.(\d+)\.")
_BUCKET_TABLE = "relative_attention_bias.weight"


def _layer_of(name: str) -> int | None:
    match = _LAYER_INDEX.match(name)
    return int(match.group(2)) if match else None


def _layer_count(names) -> int:
    layers = [layer for layer in map(_layer_of, names) if layer is not None]
    return 1 + max(layers, default=-1)


def _bucket_map(target: torch.nn.Module, source: torch.nn.Module, seq_len: int) -> dict[int, int]:
    """New bucket -> old bucket over every relative position a ``seq_len``-token caption has."""
    new_attn = next(m for m in target.modules() if hasattr(m, "_relative_position_bucket"))
    old_attn = next(m for m in source.modules() if hasattr(m, "_relative_position_bucket"))
    offsets = torch.arange(-(seq_len - 1), seq_len)
    new, old = new_attn._relative_position_bucket(offsets), old_attn._relative_position_bucket(offsets)
    mapping: dict[int, int] = {}
    for n, o in zip(new.tolist(), old.tolist()):
        if mapping.setdefault(n, o) != o:
            raise SenCacheError(f"the new relative-position buckets do not refine the old ones (bucket {n} "
                                f"spans old buckets {mapping[n]} and {o}); use more buckets, not fewer")
    return mapping


def grow_from(target: torch.nn.Module, source: torch.nn.Module, seq_len: int = 32) -> list[str]:
    """Load ``source``'s weights into the larger ``target`` in place; returns the names of the zeroed tensors.

    Allowed differences: ``target`` has more layers, or (UMT5) more relative-attention buckets. Anything else
    (another width, a tensor missing from ``target``) is refused, naming the first tensor that differs.
    """
    ours, theirs = target.state_dict(), source.state_dict()
    old_layers = _layer_count(theirs)
    if _layer_count(ours) < old_layers:
        raise SenCacheError(f"cannot grow into fewer layers ({_layer_count(ours)} < {old_layers})")
    bucket_map = None
    zeroed, loaded = [], {}
    for name, tensor in ours.items():
        layer = _layer_of(name)
        if name not in theirs:
            if layer is None or layer < old_layers:
                raise SenCacheError(f"cannot grow: {name} exists only in the new model")
            if _OUTPUT_PROJECTIONS.search(name):
                loaded[name] = torch.zeros_like(tensor)
                zeroed.append(name)
            continue
        old = theirs[name]
        if old.shape == tensor.shape:
            loaded[name] = old
        elif name.endswith(_BUCKET_TABLE) and old.shape[1:] == tensor.shape[1:]:
            bucket_map = bucket_map or _bucket_map(target, source, seq_len)
            table = tensor.clone()
            for new_bucket, old_bucket in bucket_map.items():
                table[new_bucket] = old[old_bucket]
            loaded[name] = table
        else:
            raise SenCacheError(f"cannot grow: {name} is {tuple(old.shape)} in the trained model and "
                                f"{tuple(tensor.shape)} in the new one (only layers and buckets may be added)")
    missing = sorted(set(theirs) - set(ours))
    if missing:
        raise SenCacheError(f"cannot grow: the new model lacks {missing[0]} ({len(missing)} tensors)")
    target.load_state_dict(loaded, strict=False)
    return zeroed
