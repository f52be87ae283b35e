"""Build the demo model's components from plain configs: tokenizer, text encoder, transformer, scheduler.

The demo model works in pixel space: the "latent" a WanPipeline denoises is the RGB video itself,
scaled to [-1, 1], laid out (B, 3, F, H, W). There is no VAE (``vae=None``); callers ask the pipeline
for ``output_type="latent"`` and convert with :func:`latents_to_frames`. Without a VAE, WanPipeline
assumes spatial factor 8 and temporal factor 4, so a (F, H, W) pixel video is requested as
``height=8*H, width=8*W, num_frames=4*(F-1)+1`` — :func:`pipeline_size_kwargs` does that arithmetic.
"""

from __future__ import annotations

import torch

TEXT_LEN = 32  # max_sequence_length the model was trained with; pass it to WanPipeline.__call__
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 4, 4),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=3,
    out_channels=3,
    text_dim=64,
    freq_dim=64,
    ffn_dim=256,
    num_layers=6,
    cross_attn_norm=True,
    qk_norm="rms_norm_across_heads",
    eps=1e-6,
    rope_max_seq_len=64,
)

TEXT_ENCODER_CONFIG = dict(
    d_model=64,
    d_kv=16,
    d_ff=128,
    num_layers=2,
    num_heads=4,
    relative_attention_num_buckets=8,
    relative_attention_max_distance=32,
    dropout_rate=0.0,
    feed_forward_proj="gated-gelu",
    pad_token_id=0,
    eos_token_id=1,
    decoder_start_token_id=0,
)

SCHEDULER_CONFIG = dict(
    num_train_timesteps=1000,
    prediction_type="flow_prediction",
    use_flow_sigmas=True,
    flow_shift=2.0,
)


def build_tokenizer(words: list[str]):
    """A word-level fast tokenizer over our own vocabulary (no download), appending </s> like T5."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2}
    for word in sorted(set(words)):
        vocab.setdefault(word, len(vocab))
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK, model_max_length=TEXT_LEN
    )


def build_text_encoder(vocab_size: int, seed: int = 0):
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **TEXT_ENCODER_CONFIG))


def build_transformer(seed: int = 0, **overrides):
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_scheduler():
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)


def build_pipeline(words: list[str], seed: int = 0, **transformer_overrides):
    """A complete, untrained demo WanPipeline (pixel space, vae=None)."""
    from diffusers import WanPipeline

    tokenizer = build_tokenizer(words)
    return WanPipeline(
        tokenizer=tokenizer,
        text_encoder=build_text_encoder(len(tokenizer), seed=seed),
        transformer=build_transformer(seed=seed, **transformer_overrides),
        vae=None,
        scheduler=build_scheduler(),
    )


def encode_text(tokenizer, text_encoder, captions: list[str], max_len: int = TEXT_LEN) -> torch.Tensor:
    """The same embedding WanPipeline computes (trim to the real length, zero-pad), but differentiable."""
    tokens = tokenizer(
        captions, padding="max_length", max_length=max_len, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    hidden = text_encoder(tokens.input_ids, tokens.attention_mask).last_hidden_state
    keep = tokens.attention_mask.unsqueeze(-1).to(hidden.dtype)
    return hidden * keep  # positions past the real length become exact zeros, as in the pipeline


def frames_to_latents(frames) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames).float().div(127.5).sub(1.0)
    return x.permute(0, 4, 1, 2, 3).contiguous()


def latents_to_frames(latents: torch.Tensor):
    """float (B, 3, F, H, W) in about [-1, 1] -> numpy float32 (B, F, H, W, 3) in [0, 1]."""
    x = latents.detach().float().add(1.0).div(2.0).clamp(0.0, 1.0)
    return x.permute(0, 2, 3, 4, 1).cpu().numpy()


def pipeline_size_kwargs(frames: int, height: int, width: int) -> dict:
    """WanPipeline size arguments that give a (frames, height, width) pixel-space latent with vae=None."""
    return dict(height=8 * height, width=8 * width, num_frames=4 * (frames - 1) + 1)
