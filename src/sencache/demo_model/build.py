"""Build the demo model's components from plain configs: tokenizer, text encoder, VAE, transformer, scheduler.

The demo model is an ordinary latent video WanPipeline, only tiny: a 9x32x32 RGB clip is encoded by a
small ``AutoencoderKLWan`` (trained by :mod:`.train_vae`) into an 8-channel 5x8x8 latent, which a
``WanTransformer3DModel`` with 1x1x1 patches denoises (320 tokens). ``WanPipeline.from_pretrained`` on the
saved folder and ``pipe(prompt, num_frames=9, height=32, width=32)`` return RGB frames, as for Wan 2.1.
"""

from __future__ import annotations

import torch

from sencache.demo_model.data import FRAMES, SIZE, vocabulary
from sencache.errors import SenCacheError

TEXT_LEN = 32  # max_sequence_length the model was trained with; pass it to WanPipeline.__call__
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"

TRANSFORMER_CONFIG = dict(
    patch_size=(1, 1, 1),
    num_attention_heads=4,
    attention_head_dim=32,
    in_channels=8,
    out_channels=8,
    text_dim=64,
    freq_dim=64,
    ffn_dim=512,
    num_layers=8,
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

#: A tiny Wan video VAE: 9x32x32 RGB <-> 8x5x8x8 latent (time /2 after the first frame, space /4).
#: latents_mean / latents_std are placeholders until train_vae measures them.
VAE_CONFIG = dict(
    base_dim=16,
    z_dim=8,
    dim_mult=[1, 2, 2],
    num_res_blocks=1,
    attn_scales=[],
    temperal_downsample=[False, True],
    dropout=0.0,
    scale_factor_temporal=2,
    scale_factor_spatial=4,
    latents_mean=[0.0] * 8,
    latents_std=[1.0] * 8,
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


def build_text_encoder(vocab_size: int, seed: int = 0, **overrides):
    """An untrained UMT5 text encoder (``TEXT_ENCODER_CONFIG`` with ``overrides``), seeded with ``seed``."""
    from transformers import UMT5Config, UMT5EncoderModel

    torch.manual_seed(seed)
    return UMT5EncoderModel(UMT5Config(vocab_size=vocab_size, **{**TEXT_ENCODER_CONFIG, **overrides}))


#: the T5 text encoder of the CogVideoX and LTX members: the size the Wan member's UMT5 grew into
T5_TEXT_ENCODER_CONFIG = {**TEXT_ENCODER_CONFIG, "num_layers": 4, "relative_attention_num_buckets": 32}


def build_t5_encoder(vocab_size: int, seed: int = 0, **overrides):
    """An untrained T5 text encoder (``T5_TEXT_ENCODER_CONFIG`` with ``overrides``), seeded with ``seed``."""
    from transformers import T5Config, T5EncoderModel

    torch.manual_seed(seed)
    return T5EncoderModel(T5Config(vocab_size=vocab_size, **{**T5_TEXT_ENCODER_CONFIG, **overrides}))


def assemble_pipeline(pipeline_class, words: list[str], seed: int, vae, text_encoder_overrides: dict | None,
                      transformer_overrides: dict, *, text_encoder, transformer, new_vae, scheduler):
    """A pipeline of ``pipeline_class`` from a family member's builders (``text_encoder(vocab, seed, **o)``,
    ``transformer(seed, **o)``, ``new_vae(seed)``, ``scheduler()``): untrained, with ``vae`` if one is given."""
    tokenizer = build_tokenizer(words)
    return pipeline_class(
        tokenizer=tokenizer,
        text_encoder=text_encoder(len(tokenizer), seed=seed, **(text_encoder_overrides or {})),
        transformer=transformer(seed=seed, **transformer_overrides),
        vae=vae if vae is not None else new_vae(seed=seed),
        scheduler=scheduler(),
    )


def build_transformer(seed: int = 0, **overrides):
    """An untrained ``WanTransformer3DModel`` (``TRANSFORMER_CONFIG`` with ``overrides``), seeded with ``seed``."""
    from diffusers import WanTransformer3DModel

    torch.manual_seed(seed)
    return WanTransformer3DModel(**{**TRANSFORMER_CONFIG, **overrides})


def build_vae(seed: int = 0, **overrides):
    """An untrained ``AutoencoderKLWan`` (``VAE_CONFIG`` with ``overrides``), seeded with ``seed``."""
    from diffusers import AutoencoderKLWan

    torch.manual_seed(seed)
    return AutoencoderKLWan(**{**VAE_CONFIG, **overrides})


def build_scheduler():
    """The sampling scheduler: UniPC multistep on flow sigmas, shift 2 (``SCHEDULER_CONFIG``)."""
    from diffusers import UniPCMultistepScheduler

    return UniPCMultistepScheduler(**SCHEDULER_CONFIG)


def build_pipeline(words: list[str], seed: int = 0, vae=None, text_encoder_overrides=None, **transformer_overrides):
    """A complete demo WanPipeline with an untrained transformer and text encoder (and VAE, unless given)."""
    from diffusers import WanPipeline

    return assemble_pipeline(WanPipeline, words, seed, vae, text_encoder_overrides, transformer_overrides,
                             text_encoder=build_text_encoder, transformer=build_transformer, new_vae=build_vae,
                             scheduler=build_scheduler)


def is_demo_pipeline(pipe) -> bool:
    """A WanPipeline of the demo family (its trained sizes are the defaults): its VAE has the demo model's
    architecture, or its tokenizer knows exactly the demo captions' words (an experimental VAE, trained with
    ``train_vae --vae-overrides``, still wants demo-sized clips)."""
    vae = getattr(pipe, "vae", None)
    if type(pipe).__name__ != "WanPipeline" or type(vae).__name__ != "AutoencoderKLWan":
        return False
    if _knows_only_demo_words(getattr(pipe, "tokenizer", None)):
        return True
    keys = ("base_dim", "z_dim", "dim_mult", "temperal_downsample", "scale_factor_spatial", "scale_factor_temporal")
    # JSON turns lists into lists and tuples into lists: compare as lists
    as_list = lambda v: list(v) if isinstance(v, (list, tuple)) else v  # noqa: E731
    return all(as_list(vae.config.get(k)) == as_list(VAE_CONFIG[k]) for k in keys)


def _knows_only_demo_words(tokenizer) -> bool:
    words = vocabulary()
    if tokenizer is None or len(tokenizer) != len(words) + 3:  # cheap refusal of real tokenizers (256k entries)
        return False
    return set(tokenizer.get_vocab()) == {PAD, EOS, UNK, *words}


def encode_text(tokenizer, text_encoder, captions: list[str], max_len: int = TEXT_LEN) -> torch.Tensor:
    """The same embedding WanPipeline computes (trim to the real length, zero-pad), but differentiable."""
    tokens = tokenizer(
        captions, padding="max_length", max_length=max_len, truncation=True,
        add_special_tokens=True, return_attention_mask=True, return_tensors="pt",
    )
    ids, mask = tokens.input_ids.to(text_encoder.device), tokens.attention_mask.to(text_encoder.device)
    hidden = text_encoder(ids, mask).last_hidden_state
    keep = mask.unsqueeze(-1).to(hidden.dtype)
    return hidden * keep  # positions past the real length become exact zeros, as in the pipeline


def frames_to_pixels(frames) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> float (B, 3, F, H, W) in [-1, 1]."""
    x = torch.as_tensor(frames).float().div(127.5).sub(1.0)
    return x.permute(0, 4, 1, 2, 3).contiguous()


@torch.no_grad()
def encode_clips(vae, frames) -> torch.Tensor:
    """uint8 (B, F, H, W, 3) -> the normalised latent the transformer denoises (posterior mean, as WanPipeline
    undoes it: ``(z - latents_mean) / latents_std``)."""
    z = vae.encode(frames_to_pixels(frames).to(vae.device)).latent_dist.mean
    mean = torch.tensor(vae.config.latents_mean, device=z.device).view(1, -1, 1, 1, 1)
    std = torch.tensor(vae.config.latents_std, device=z.device).view(1, -1, 1, 1, 1)
    return (z - mean) / std


@torch.no_grad()
def round_trip(vae, frames):
    """uint8 (F, H, W, 3) clip -> the same clip encoded (posterior mean) and decoded by ``vae``, as uint8: what the
    decoder makes of a perfect latent, so no generated clip can be better."""
    pixels = vae.decode(vae.encode(frames_to_pixels(frames[None]).to(vae.device)).latent_dist.mean).sample[0]
    return ((pixels.clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 3, 0).cpu().numpy()


def pipeline_size_kwargs(frames: int, height: int, width: int) -> dict:
    """WanPipeline size arguments for a (frames, height, width) demo clip, checked against what the VAE can do.

    AutoencoderKLWan encodes the first frame alone and then chunks of 4 frames (whatever its temporal factor),
    so only 1 + 4k frames survive an encode/decode round trip: 5, 9, 13, ...
    """

    if frames < 1 or (frames - 1) % 4:
        raise SenCacheError(f"the demo model's VAE needs 1 + 4k frames (5, 9, 13, ...), got {frames}")
    if height % 16 or width % 16 or height <= 0 or width <= 0:
        raise SenCacheError(f"WanPipeline needs height and width in positive multiples of 16, got {height}x{width}")
    return dict(height=height, width=width, num_frames=frames)


def demo_call_kwargs() -> dict:
    """The size and text length the demo model was trained for, as WanPipeline call arguments."""

    return dict(max_sequence_length=TEXT_LEN, **pipeline_size_kwargs(FRAMES, SIZE, SIZE))
