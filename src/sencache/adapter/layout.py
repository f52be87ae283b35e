"""Where a transformer keeps its block stack, and how its blocks hand on the video and text streams.

The per-model facts live in one table (:data:`BLOCK_LISTS`); a model not listed is accepted when it has
exactly one candidate block list whose block class diffusers' ``TransformerBlockRegistry`` knows.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from diffusers.hooks._helpers import TransformerBlockRegistry

from sencache.errors import UnsupportedModelError

# Where each model keeps its block stack. A class not listed is accepted if it has exactly one of
# these lists and diffusers knows its block class (TransformerBlockRegistry).
BLOCK_LISTS = {
    "WanTransformer3DModel": "blocks",
    "WanVACETransformer3DModel": "blocks",
    "CogVideoXTransformer3DModel": "transformer_blocks",
    "LTXVideoTransformer3DModel": "transformer_blocks",
    "MochiTransformer3DModel": "transformer_blocks",
}
CANDIDATE_LISTS = ("blocks", "transformer_blocks")
SECOND_STACKS = ("single_transformer_blocks", "single_blocks", "refiner_blocks")


@dataclass
class BlockStack:
    """The block list sencache skips as one, and where a block's output tuple holds each stream.

    Args:
        name: attribute of the transformer holding the blocks ("blocks", "transformer_blocks").
        blocks: the ``nn.ModuleList`` itself.
        hidden_index: position of the video stream in a block's returned tuple.
        encoder_index: position of the text stream, or None when blocks return the video stream only.
        hidden_arg: the name of a block's video-stream argument.
    """

    name: str
    blocks: torch.nn.ModuleList
    hidden_index: int  # position of the video stream in a block's returned tuple
    encoder_index: int | None  # position of the text stream, if blocks return it
    hidden_arg: str


def find_block_stack(transformer: torch.nn.Module) -> BlockStack:
    """The transformer's block stack; :class:`UnsupportedModelError` (saying what is missing) if there is none
    sencache can skip (no block list, two stacks, or a block class diffusers has no layout facts for)."""
    cls = type(transformer).__name__
    name = BLOCK_LISTS.get(cls)
    if name is None:
        found = [n for n in CANDIDATE_LISTS if isinstance(getattr(transformer, n, None), torch.nn.ModuleList)]
        if len(found) != 1:
            raise UnsupportedModelError(
                f"{cls} is not supported: sencache needs one list of transformer blocks "
                f"(looked for {', '.join(CANDIDATE_LISTS)}); open an issue with the model name"
            )
        name = found[0]
    for extra in SECOND_STACKS:
        if len(getattr(transformer, extra, None) or []) > 0:
            raise UnsupportedModelError(
                f"{cls} is not supported: it has a second block stack '{extra}' that sencache cannot skip yet"
            )
    blocks = getattr(transformer, name, None)
    if not isinstance(blocks, torch.nn.ModuleList) or len(blocks) == 0:
        raise UnsupportedModelError(f"{cls} has no blocks in '{name}'; nothing to cache")
    try:
        meta = TransformerBlockRegistry.get(type(blocks[0]))
    except ValueError:
        raise UnsupportedModelError(
            f"{cls} is not supported: diffusers has no layout facts for its block {type(blocks[0]).__name__}"
        ) from None
    return BlockStack(name, blocks, meta.return_hidden_states_index, meta.return_encoder_hidden_states_index,
                      meta.hidden_states_argument_name)


def split_target(target) -> tuple[torch.nn.Module, Any]:
    """(transformer, scheduler or None) from a pipeline or a bare transformer."""
    transformer = getattr(target, "transformer", None)
    if isinstance(transformer, torch.nn.Module):
        return transformer, getattr(target, "scheduler", None)
    if isinstance(target, torch.nn.Module):
        return target, None
    raise UnsupportedModelError(
        f"sencache.enable needs a diffusers pipeline with a .transformer or a transformer module, "
        f"got {type(target).__name__}"
    )
