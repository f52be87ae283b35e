"""Complete tiny diffusers video pipelines (tokenizer, text encoder, VAE, transformer, scheduler) with random
weights, saved to a folder so tests can exercise the real ``DiffusionPipeline.from_pretrained`` path offline.

Unlike the conftest fixtures (transformer only, embeddings passed in), these pipelines run end to end from a
text prompt to decoded frames. The Wan one deliberately differs from the sencache demo model (other VAE and
vocabulary), so it is treated as a generic Wan 2.1 pipeline rather than the demo family.
"""

from __future__ import annotations

import torch

TEXT_LEN = 16  # max_sequence_length; CogVideoX needs it to equal the transformer's max_text_seq_length
WORDS = ("a an the and on in of with small large red green blue yellow white black circle square triangle ball "
         "moving standing still left right up down slowly fast plain striped background").split()
PAD, EOS, UNK = "<pad>", "</s>", "<unk>"


def build_tokenizer():
    """Word-level fast tokenizer over WORDS, appending </s> like T5 (as sencache.demo_model.build does)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {PAD: 0, EOS: 1, UNK: 2, **{w: i + 3 for i, w in enumerate(sorted(set(WORDS)))}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(single=f"$A {EOS}", special_tokens=[(EOS, 1)])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, eos_token=EOS, unk_token=UNK,
                                   model_max_length=TEXT_LEN)


def build_text_encoder(config_cls, model_cls, vocab_size: int, width: int):
    """A 2-layer (U)T5 encoder; ``width`` must equal the transformer's text dimension."""
    torch.manual_seed(0)
    config = config_cls(vocab_size=vocab_size, d_model=width, d_kv=8, d_ff=32, num_layers=2, num_heads=2,
                        relative_attention_num_buckets=8, relative_attention_max_distance=16, dropout_rate=0.0,
                        pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    return model_cls(config)


def seeded(cls, **config):
    torch.manual_seed(0)  # per component, so each one's weights do not depend on build order
    return cls(**config)


def _wan(tokenizer):
    from diffusers import AutoencoderKLWan, UniPCMultistepScheduler, WanPipeline, WanTransformer3DModel
    from transformers import UMT5Config, UMT5EncoderModel

    # Wan 2.1's real compression (x8 space, x4 time, 16 latent channels, so the default latents_mean/std fit)
    vae = seeded(AutoencoderKLWan, base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                 temperal_downsample=[False, True, True])
    transformer = seeded(WanTransformer3DModel, patch_size=(1, 2, 2), num_attention_heads=2, attention_head_dim=12,
                         in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32, num_layers=2,
                         cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=build_text_encoder(UMT5Config, UMT5EncoderModel, len(tokenizer), 32),
        vae=vae, transformer=transformer,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    # 16-pixel multiples (pipeline check); 1 + 4k frames (the VAE's first-frame + 4-frame chunks)
    return pipe, dict(height=32, width=32, num_frames=9)


def _cogvideox(tokenizer):
    from diffusers import (AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline,
                           CogVideoXTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    blocks = 4  # spatial factor 2**(blocks-1) = 8, as CogVideoXPipeline assumes from block_out_channels
    vae = seeded(AutoencoderKLCogVideoX, down_block_types=("CogVideoXDownBlock3D",) * blocks,
                 up_block_types=("CogVideoXUpBlock3D",) * blocks, block_out_channels=(8,) * blocks,
                 latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    # heads * head_dim must be a multiple of 16 for the 3D sin-cos positional embedding; sample_* = latent size
    # of the default call (32x32x9), so the pipeline's defaults match the returned sizes
    transformer = seeded(CogVideoXTransformer3DModel, num_attention_heads=2, attention_head_dim=8, in_channels=4,
                         out_channels=4, time_embed_dim=8, text_embed_dim=16, num_layers=2, sample_width=4,
                         sample_height=4, sample_frames=9, patch_size=2, temporal_compression_ratio=4,
                         max_text_seq_length=TEXT_LEN)
    # CogVideoX-2b's scheduler settings (v-prediction, zero terminal SNR)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True, clip_sample=False)
    pipe = CogVideoXPipeline(
        tokenizer=tokenizer, text_encoder=build_text_encoder(T5Config, T5EncoderModel, len(tokenizer), 16),
        vae=vae, transformer=transformer, scheduler=scheduler)
    return pipe, dict(height=32, width=32, num_frames=9)


def _ltx(tokenizer):
    from diffusers import (AutoencoderKLLTXVideo, FlowMatchEulerDiscreteScheduler, LTXPipeline,
                           LTXVideoTransformer3DModel)
    from transformers import T5Config, T5EncoderModel

    # two scaling blocks: x4 in space and time (decoder sizes must be given too, its defaults are full-size)
    scaling = (True, True, False, False)
    vae = seeded(AutoencoderKLLTXVideo, latent_channels=8, block_out_channels=(8,) * 4,
                 decoder_block_out_channels=(8,) * 4, layers_per_block=(1,) * 5, decoder_layers_per_block=(1,) * 5,
                 spatio_temporal_scaling=scaling, decoder_spatio_temporal_scaling=scaling, patch_size=1,
                 patch_size_t=1)
    transformer = seeded(LTXVideoTransformer3DModel, in_channels=8, out_channels=8, patch_size=1, patch_size_t=1,
                         num_attention_heads=2, attention_head_dim=8, cross_attention_dim=16, num_layers=2,
                         caption_channels=16)
    pipe = LTXPipeline(
        tokenizer=tokenizer, text_encoder=build_text_encoder(T5Config, T5EncoderModel, len(tokenizer), 16),
        vae=vae, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler())
    # LTXPipeline requires 32-pixel multiples whatever the VAE; 1 + 4k frames for the x4 temporal factor
    return pipe, dict(height=32, width=32, num_frames=9)


BUILDERS = {"wan": _wan, "cogvideox": _cogvideox, "ltx": _ltx}


def save_tiny_pipeline(kind: str, folder) -> dict:
    """Build the tiny ``kind`` pipeline ("wan", "cogvideox" or "ltx"), save it to ``folder`` and return the size
    kwargs a call needs (height, width, num_frames, max_sequence_length)."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {sorted(BUILDERS)}")
    pipe, sizes = BUILDERS[kind](build_tokenizer())
    pipe.save_pretrained(str(folder))
    return {**sizes, "max_sequence_length": TEXT_LEN}
