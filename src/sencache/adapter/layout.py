"""Where a transformer keeps its block stack(s), and how each block hands on the video and text streams.

Most video transformers have one list of blocks. FLUX and HunyuanVideo have two that run one after the other
(dual-stream ``transformer_blocks``, then single-stream ``single_transformer_blocks``); sencache skips both
as one stack: the residual runs from the input of the first block of the first list to the output of the
last block of the last, and the head still runs with the current timestep. The per-model facts live in
one table (:data:`BLOCK_LISTS`); a model not listed is accepted when it has exactly one candidate block list
(and no second one) whose block classes diffusers' ``TransformerBlockRegistry`` knows.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.hooks._helpers import TransformerBlockRegistry

from sencache.errors import UnsupportedModelError

# Where each model keeps its block lists, in the order its forward runs them.
BLOCK_LISTS = {
    "WanTransformer3DModel": ("blocks",),
    "WanVACETransformer3DModel": ("blocks",),
    "CogVideoXTransformer3DModel": ("transformer_blocks",),
    "LTXVideoTransformer3DModel": ("transformer_blocks",),
    "MochiTransformer3DModel": ("transformer_blocks",),
    "FluxTransformer2DModel": ("transformer_blocks", "single_transformer_blocks"),
    "HunyuanVideoTransformer3DModel": ("transformer_blocks", "single_transformer_blocks"),
}
TWO_LIST_MODELS = tuple(k for k, v in BLOCK_LISTS.items() if len(v) > 1)
CANDIDATE_LISTS = ("blocks", "transformer_blocks")
SECOND_STACKS = ("single_transformer_blocks", "single_blocks")
# block lists whose place in the forward sencache does not know
UNKNOWN_STACKS = ("refiner_blocks", "noise_refiner", "context_refiner")

# Where a pipeline keeps its denoising transformers, in the order they serve the steps (Wan 2.2: high noise, then low).
EXPERTS = ("transformer", "transformer_2")


@dataclass(frozen=True)
class BlockLayout:
    """Where one block's returned tuple holds each stream, and the name of its video-stream argument.

    Args:
        hidden_index: position of the video stream in the returned tuple.
        encoder_index: position of the text stream, or None when the block returns the video stream only.
        hidden_arg: the name of the block's video-stream argument.
    """

    hidden_index: int
    encoder_index: int | None
    hidden_arg: str

    def pack(self, hidden, encoder):
        """What the block returns, from the two streams."""
        if self.encoder_index is None:
            return hidden
        out = [None] * (max(self.hidden_index, self.encoder_index) + 1)
        out[self.hidden_index], out[self.encoder_index] = hidden, encoder
        return tuple(out)

    def unpack(self, output):
        """(video stream, text stream or None) from what the block returned."""
        if self.encoder_index is None:
            return (output[self.hidden_index] if isinstance(output, tuple) else output), None
        return output[self.hidden_index], output[self.encoder_index]


@dataclass
class BlockStack:
    """The blocks sencache skips as one (one list, or two run back to back), each with its layout.

    Args:
        names: the transformer attributes holding the lists, in forward order ("blocks", or
            "transformer_blocks" then "single_transformer_blocks").
        blocks: every block, in the order the forward runs them.
        layouts: each block's :class:`BlockLayout`.
    """

    names: tuple[str, ...]
    blocks: list[torch.nn.Module]
    layouts: list[BlockLayout]

    @property
    def name(self) -> str:
        """The stack's name: its list attributes joined by "+" (e.g. "transformer_blocks+single_transformer_blocks")."""
        return "+".join(self.names)

    @property
    def encoder_index(self) -> int | None:
        """The text stream's position in the *last* block's output (None: the stack hands on the video only)."""
        return self.layouts[-1].encoder_index


def _layout(cls: str, name: str, block: torch.nn.Module) -> BlockLayout:
    try:
        meta = TransformerBlockRegistry.get(type(block))
    except ValueError:
        raise UnsupportedModelError(
            f"{cls} is not supported: diffusers has no layout facts for its block {type(block).__name__} (in "
            f"'{name}'); open an issue with the model name"
        ) from None
    return BlockLayout(meta.return_hidden_states_index, meta.return_encoder_hidden_states_index,
                       meta.hidden_states_argument_name)


def _list_names(transformer: torch.nn.Module) -> tuple[str, ...]:
    cls = type(transformer).__name__
    names = BLOCK_LISTS.get(cls)
    if names is not None:
        return names
    found = [n for n in CANDIDATE_LISTS if isinstance(getattr(transformer, n, None), torch.nn.ModuleList)]
    if len(found) != 1:
        raise UnsupportedModelError(
            f"{cls} is not supported: sencache needs one list of transformer blocks "
            f"(looked for {', '.join(CANDIDATE_LISTS)}); open an issue with the model name"
        )
    for extra in SECOND_STACKS:
        if len(getattr(transformer, extra, None) or []) > 0:  # how the forward joins the two lists is model-specific
            raise UnsupportedModelError(
                f"{cls} is not supported: it has a second block list '{extra}', and sencache skips two lists as one "
                f"only for models whose forward it knows ({', '.join(TWO_LIST_MODELS)}); "
                f"open an issue with the model name"
            )
    return (found[0],)


def find_block_stack(transformer: torch.nn.Module) -> BlockStack:
    """The transformer's block stack; :class:`UnsupportedModelError` (saying what is missing) if there is none
    sencache can skip: no block list, a block list whose place in the forward is unknown, a block class
    diffusers has no layout facts for, or two lists whose blocks hand on different streams."""
    cls = type(transformer).__name__
    names = _list_names(transformer)
    for extra in UNKNOWN_STACKS:
        if len(getattr(transformer, extra, None) or []) > 0:
            raise UnsupportedModelError(
                f"{cls} is not supported: it has another block list '{extra}' whose place in the forward sencache "
                f"does not know; open an issue with the model name"
            )
    blocks, layouts = [], []
    for name in names:
        stack = getattr(transformer, name, None)
        if not isinstance(stack, torch.nn.ModuleList):
            raise UnsupportedModelError(f"{cls} has no block list '{name}'; nothing to cache")
        for block in stack:
            blocks.append(block)
            layouts.append(_layout(cls, name, block))
    if not blocks:
        raise UnsupportedModelError(f"{cls} has no blocks in '{'+'.join(names)}'; nothing to cache")
    streams = {layout.encoder_index is None for layout in layouts}
    if len(streams) > 1:  # e.g. FLUX.2: its single blocks take the text and video tokens joined, by the model
        raise UnsupportedModelError(
            f"{cls} is not supported: its block lists {', '.join(names)} hand on different streams (some return the "
            f"text stream, some do not), so the stack's residual cannot be taken as one; open an issue"
        )
    return BlockStack(tuple(names), blocks, layouts)


def denoisers(target) -> dict[str, torch.nn.Module]:
    """The pipeline's denoising transformers by attribute name, in serving order (``transformer``, and Wan 2.2's
    low-noise expert ``transformer_2``), or ``{"transformer": target}`` for a bare transformer."""
    found = {name: getattr(target, name, None) for name in EXPERTS}
    found = {name: m for name, m in found.items() if isinstance(m, torch.nn.Module)}
    if "transformer" in found:
        return found
    if isinstance(target, torch.nn.Module):
        return {"transformer": target}
    raise UnsupportedModelError(
        f"sencache.enable needs a diffusers pipeline with a .transformer or a transformer module, "
        f"got {type(target).__name__}"
    )
