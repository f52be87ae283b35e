"""ArgumentReader reads a hooked call's arguments the way inspect's binding would."""

import inspect

import pytest

from sencache.adapter.arguments import ArgumentReader

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)


class Block:
    def forward(self, hidden_states, encoder_hidden_states=None, temb=None, *extra, rotary_emb=None, **kw):
        return hidden_states


CALLS = [
    ((1, 2, 3), {}),
    ((1,), {"temb": 3, "encoder_hidden_states": 2}),
    ((), {"hidden_states": 1, "rotary_emb": 9}),
    ((1, 2, 3, 4, 5), {"rotary_emb": 6, "other": 7}),
    ((1, 2), {}),
]


@pytest.mark.parametrize("args,kwargs", CALLS)
def test_reader_agrees_with_bind_partial(args, kwargs):
    reader = ArgumentReader(Block.forward)
    bound = inspect.signature(Block.forward).bind_partial(Block(), *args, **kwargs).arguments
    for name in ("hidden_states", "encoder_hidden_states", "temb", "rotary_emb"):
        assert reader.get(name, args, kwargs, default="missing") == bound.get(name, "missing")
    assert "extra" not in reader.position and "rotary_emb" not in reader.position  # *args ends the positional part
