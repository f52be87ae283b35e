"""Growing a trained demo model (more layers, finer text-position buckets) must not change what it computes."""

import pytest
import torch

from sencache.demo_model import build, data
from sencache.demo_model.grow import grow_from
from sencache.errors import SenCacheError

pytestmark = pytest.mark.fast  # in the inner-loop subset (pytest -m fast)

CAPTIONS = data.dataset_prompts(6, seed=11)


def small_transformer(seed, layers):
    return build.build_transformer(seed=seed, num_layers=layers, num_attention_heads=2, attention_head_dim=16,
                                   ffn_dim=64).eval()


def text_encoder(seed, layers, buckets=8):
    return build.build_text_encoder(len(tokenizer()), seed=seed, num_layers=layers,
                                    relative_attention_num_buckets=buckets).eval()


def tokenizer():
    return build.build_tokenizer(data.vocabulary())


def encode(encoder):
    with torch.no_grad():
        return build.encode_text(tokenizer(), encoder, CAPTIONS)


def denoise(transformer, text):
    torch.manual_seed(0)
    x, t = torch.randn(2, 8, 5, 8, 8), torch.tensor([700.0, 90.0])
    with torch.no_grad():
        return transformer(x, t, text[:2], return_dict=False)[0]


def test_a_grown_text_encoder_with_more_layers_and_buckets_encodes_exactly_as_before():
    old, new = text_encoder(1, layers=2), text_encoder(2, layers=4, buckets=32)
    assert not torch.allclose(encode(old), encode(new))  # different random models to start with
    zeroed = grow_from(new, old)
    assert torch.allclose(encode(old), encode(new), atol=1e-6)
    # the new layers are silenced at their outputs only, so training can move them
    assert sorted(zeroed) == sorted(f"encoder.block.{i}.layer.{j}" for i in (2, 3) for j in (
        "0.SelfAttention.o.weight", "1.DenseReluDense.wo.weight"))
    assert new.encoder.block[3].layer[0].SelfAttention.q.weight.abs().sum() > 0


def test_a_grown_transformer_denoises_exactly_as_before_and_its_new_blocks_get_gradients():
    text = encode(text_encoder(1, layers=2))
    old, new = small_transformer(1, layers=2), small_transformer(2, layers=3)
    grow_from(new, old)
    assert torch.allclose(denoise(old, text), denoise(new, text), atol=1e-6)
    new.train()
    x = torch.randn(1, 8, 5, 8, 8)
    new(x, torch.tensor([500.0]), text[:1], return_dict=False)[0].square().mean().backward()
    assert new.blocks[2].ffn.net[2].weight.grad.abs().sum() > 0


def test_growing_refuses_other_widths_fewer_layers_and_coarser_buckets():
    with pytest.raises(SenCacheError, match="only layers and buckets"):
        grow_from(build.build_transformer(num_layers=2, ffn_dim=128), small_transformer(1, layers=2))
    with pytest.raises(SenCacheError, match="fewer layers"):
        grow_from(small_transformer(1, layers=2), small_transformer(1, layers=3))
    with pytest.raises(SenCacheError, match="refine"):
        grow_from(text_encoder(1, layers=2, buckets=8), text_encoder(1, layers=2, buckets=32))
