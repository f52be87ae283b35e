"""Complete tiny diffusers pipelines (tokenizers, text encoders, VAE, transformer(s), scheduler) with random
weights, saved to a folder so tests can exercise the real ``DiffusionPipeline.from_pretrained`` path offline.

Unlike the conftest fixtures (transformer only, embeddings passed in), these pipelines run end to end from a
text prompt to decoded frames. The Wan one deliberately differs from the sencache demo model (other VAE and
vocabulary), so it is treated as a generic Wan 2.1 pipeline rather than the demo family.

Kinds: ``wan``, ``cogvideox``, ``ltx`` (video, one transformer); ``wan22`` (Wan 2.2-style two experts,
``transformer`` for t >= boundary and ``transformer_2`` below it); ``flux`` (FluxPipeline, an image model: its
double-stream ``transformer_blocks`` and single-stream ``single_transformer_blocks``); ``hunyuanvideo``
(HunyuanVideoPipeline, the same two block stacks, Llama + CLIP text encoders). Every tokenizer is built here
(word-level, or a byte-level BPE for CLIP), nothing is downloaded.

* :func:`build_pipeline` ``(kind) -> (pipe, call_kwargs)``: the pipeline in memory and the keyword arguments
  of a tiny call (sizes, text length, HunyuanVideo's prompt template);
* :func:`save_tiny_pipeline` ``(kind, folder)``: the same, saved (the new kinds with their
  ``sencache_call_defaults.json``).
"""

from __future__ import annotations

import json
from pathlib import Path

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


def seeded(cls, *, seed: int = 0, **config):
    torch.manual_seed(seed)  # per component, so each one's weights do not depend on build order
    return cls(**config)


def _wan_vae():
    from diffusers import AutoencoderKLWan

    # Wan 2.1's real compression (x8 space, x4 time, 16 latent channels, so the default latents_mean/std fit)
    return seeded(AutoencoderKLWan, base_dim=3, z_dim=16, dim_mult=[1, 1, 1, 1], num_res_blocks=1,
                  temperal_downsample=[False, True, True])


def _wan_transformer(seed: int = 0):
    from diffusers import WanTransformer3DModel

    return seeded(WanTransformer3DModel, seed=seed, patch_size=(1, 2, 2), num_attention_heads=2,
                  attention_head_dim=12, in_channels=16, out_channels=16, text_dim=32, freq_dim=32, ffn_dim=32,
                  num_layers=2, cross_attn_norm=True, qk_norm="rms_norm_across_heads", rope_max_seq_len=32)


def _wan(tokenizer):
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=build_text_encoder(UMT5Config, UMT5EncoderModel, len(tokenizer), 32),
        vae=_wan_vae(), transformer=_wan_transformer(),
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=3.0))
    # 16-pixel multiples (pipeline check); 1 + 4k frames (the VAE's first-frame + 4-frame chunks)
    return pipe, dict(height=32, width=32, num_frames=9)


WAN22_BOUNDARY_RATIO = 0.5  # the real Wan 2.2 T2V-A14B uses 0.875 (with flow_shift 12)


def _wan22(tokenizer):
    """Wan 2.2 A14B's layout: the Wan 2.1 VAE and text encoder, two experts of one architecture with their own
    weights. ``transformer`` (high noise) serves t >= boundary_ratio * 1000, ``transformer_2`` the steps below."""
    from diffusers import UniPCMultistepScheduler, WanPipeline
    from transformers import UMT5Config, UMT5EncoderModel

    # flow_shift 1 (the unshifted grid): 4 steps are t = 999, 750, 500 | 250 and 6 steps 999, 833, 667, 500 |
    # 333, 167, so both experts serve every short run (with Wan 2.1's shift of 3, 4 steps never go below 500)
    pipe = WanPipeline(
        tokenizer=tokenizer, text_encoder=build_text_encoder(UMT5Config, UMT5EncoderModel, len(tokenizer), 32),
        vae=_wan_vae(), transformer=_wan_transformer(seed=0), transformer_2=_wan_transformer(seed=1),
        boundary_ratio=WAN22_BOUNDARY_RATIO,
        scheduler=UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=1.0))
    return pipe, dict(height=32, width=32, num_frames=9)


def _cogvideox(tokenizer, pipeline_class=None, **transformer):
    """A tiny CogVideoXPipeline (or ``pipeline_class`` built from the same parts; ``transformer`` overrides its
    config, e.g. the image-to-video input channels)."""
    from diffusers import AutoencoderKLCogVideoX, CogVideoXDDIMScheduler, CogVideoXPipeline, CogVideoXTransformer3DModel
    from transformers import T5Config, T5EncoderModel

    blocks = 4  # spatial factor 2**(blocks-1) = 8, as CogVideoXPipeline assumes from block_out_channels
    vae = seeded(AutoencoderKLCogVideoX, down_block_types=("CogVideoXDownBlock3D",) * blocks,
                 up_block_types=("CogVideoXUpBlock3D",) * blocks, block_out_channels=(8,) * blocks,
                 latent_channels=4, layers_per_block=1, norm_num_groups=2, temporal_compression_ratio=4)
    # heads * head_dim must be a multiple of 16 for the 3D sin-cos positional embedding; sample_* = latent size
    # of the default call (32x32x9), so the pipeline's defaults match the returned sizes
    transformer = seeded(CogVideoXTransformer3DModel, **{
        **dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, time_embed_dim=8,
               text_embed_dim=16, num_layers=2, sample_width=4, sample_height=4, sample_frames=9, patch_size=2,
               temporal_compression_ratio=4, max_text_seq_length=TEXT_LEN), **transformer})
    # CogVideoX-2b's scheduler settings (v-prediction, zero terminal SNR)
    scheduler = CogVideoXDDIMScheduler(prediction_type="v_prediction", timestep_spacing="trailing",
                                       rescale_betas_zero_snr=True, clip_sample=False)
    pipe = (pipeline_class or CogVideoXPipeline)(
        tokenizer=tokenizer, text_encoder=build_text_encoder(T5Config, T5EncoderModel, len(tokenizer), 16),
        vae=vae, transformer=transformer, scheduler=scheduler)
    return pipe, dict(height=32, width=32, num_frames=9)


def _ltx(tokenizer, pipeline_class=None):
    """A tiny LTXPipeline (or ``pipeline_class``, e.g. LTXImageToVideoPipeline, built from the same parts)."""
    from diffusers import (
        AutoencoderKLLTXVideo,
        FlowMatchEulerDiscreteScheduler,
        LTXPipeline,
        LTXVideoTransformer3DModel,
    )
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
    pipe = (pipeline_class or LTXPipeline)(
        tokenizer=tokenizer, text_encoder=build_text_encoder(T5Config, T5EncoderModel, len(tokenizer), 16),
        vae=vae, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler())
    # LTXPipeline requires 32-pixel multiples whatever the VAE; 1 + 4k frames for the x4 temporal factor
    return pipe, dict(height=32, width=32, num_frames=9)


CLIP_BOS, CLIP_EOS = "<|startoftext|>", "<|endoftext|>"
CLIP_LEN = 77  # HunyuanVideoPipeline always pads CLIP to 77 tokens; FluxPipeline uses the tokenizer's max length


def build_clip_tokenizer():
    """A real ``CLIPTokenizer`` (byte-level BPE, ``</w>`` word ends, lower-casing) whose merges spell WORDS:
    the full byte alphabet (so no text maps to the unknown token) and one merge chain per word. Like CLIP's,
    the start/end tokens have the highest ids and padding is the end token."""
    from tokenizers import pre_tokenizers
    from transformers import CLIPTokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet + [c + "</w>" for c in alphabet])}
    merges = []
    for word in sorted(set(WORDS)):
        symbols = list(word[:-1]) + [word[-1] + "</w>"]
        merged = symbols[0]
        for symbol in symbols[1:]:
            if (merged, symbol) not in merges:
                merges.append((merged, symbol))
            merged += symbol
            vocab.setdefault(merged, len(vocab))
    vocab[CLIP_BOS], vocab[CLIP_EOS] = len(vocab), len(vocab) + 1
    return CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=CLIP_LEN)


def build_clip_text_encoder(tokenizer, width: int):
    """A 2-layer ``CLIPTextModel``; its pooled output (at the end token) has ``width`` features."""
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(0)
    config = CLIPTextConfig(vocab_size=len(tokenizer), hidden_size=width, intermediate_size=2 * width,
                            projection_dim=width, num_hidden_layers=2, num_attention_heads=2,
                            max_position_embeddings=CLIP_LEN, bos_token_id=tokenizer.bos_token_id,
                            eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return CLIPTextModel(config)


def _flux(tokenizer):
    """Flux.1-dev's layout: CLIP (pooled) + T5 (sequence) text encoders, the x8 16-channel VAE with Flux's
    scale/shift, guidance-distilled transformer (2 double-stream + 2 single-stream blocks), dynamic shifting."""
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import T5Config, T5EncoderModel

    vae = seeded(AutoencoderKL, down_block_types=("DownEncoderBlock2D",) * 4,
                 up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(8,) * 4, layers_per_block=1,
                 latent_channels=16, norm_num_groups=4, sample_size=32, scaling_factor=0.3611, shift_factor=0.1159,
                 use_quant_conv=False, use_post_quant_conv=False)
    # latents are packed 2x2, so in_channels = 4 * 16; the rope axes add up to the head dim
    transformer = seeded(FluxTransformer2DModel, patch_size=1, in_channels=64, num_layers=2, num_single_layers=2,
                         attention_head_dim=16, num_attention_heads=2, joint_attention_dim=32,
                         pooled_projection_dim=32, guidance_embeds=True, axes_dims_rope=(4, 4, 8))
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0, use_dynamic_shifting=True, base_shift=0.5,
                                                max_shift=1.15, base_image_seq_len=256, max_image_seq_len=4096)
    clip = build_clip_tokenizer()
    pipe = FluxPipeline(
        tokenizer=clip, text_encoder=build_clip_text_encoder(clip, 32),
        tokenizer_2=tokenizer, text_encoder_2=build_text_encoder(T5Config, T5EncoderModel, len(tokenizer), 32),
        vae=vae, transformer=transformer, scheduler=scheduler)
    # 16-pixel multiples (x8 VAE, then 2x2 packing): 64 px -> 8x8 latents -> 16 image tokens; one image, no frames
    return pipe, dict(height=64, width=64)


LLAMA_BOS, LLAMA_EOS = "<|begin_of_text|>", "<|end_of_text|>"
LLAMA_SPECIALS = ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>")


def hunyuan_template() -> str:
    from diffusers.pipelines.hunyuan_video.pipeline_hunyuan_video import DEFAULT_PROMPT_TEMPLATE

    return DEFAULT_PROMPT_TEMPLATE["template"]


def build_llama_tokenizer():
    """Word-level fast tokenizer over WORDS and the words of HunyuanVideo's prompt template, with Llama 3's
    header tokens as special tokens and ``<|begin_of_text|>`` prepended like Llama's."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Whitespace()
    template = hunyuan_template()
    for special in LLAMA_SPECIALS:
        template = template.replace(special, " ")
    words = set(WORDS) | {w for w, _ in pre.pre_tokenize_str(template.replace("{}", " "))}
    specials = [PAD, LLAMA_BOS, LLAMA_EOS, UNK, *LLAMA_SPECIALS]
    vocab = {**{t: i for i, t in enumerate(specials)}, **{w: i + len(specials) for i, w in enumerate(sorted(words))}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.pre_tokenizer = pre
    core.add_special_tokens(list(LLAMA_SPECIALS))
    core.post_processor = processors.TemplateProcessing(single=f"{LLAMA_BOS} $A",
                                                        special_tokens=[(LLAMA_BOS, vocab[LLAMA_BOS])])
    return PreTrainedTokenizerFast(tokenizer_object=core, pad_token=PAD, bos_token=LLAMA_BOS, eos_token=LLAMA_EOS,
                                   unk_token=UNK, additional_special_tokens=list(LLAMA_SPECIALS),
                                   model_max_length=256)


def hunyuan_prompt_template(tokenizer) -> dict:
    """HunyuanVideoPipeline's own template with ``crop_start`` counted for ``tokenizer``: the pipeline's default
    (95) is the length of the template's head in the real Llama 3 tokenizer; the tiny tokenizer splits it into
    fewer tokens, so the default would crop the first words of the prompt away."""
    template = hunyuan_template()
    head = template[:template.index("{}")]
    return {"template": template, "crop_start": len(tokenizer(head)["input_ids"])}


def _hunyuanvideo(tokenizer):
    """HunyuanVideo's layout: a Llama text encoder (its third-to-last hidden state, after the prompt template's
    head is cropped off) and CLIP's pooled output, the x8 / x4 causal 3D VAE, a guidance-distilled transformer
    with 2 dual-stream and 2 single-stream blocks (and a token refiner), flow matching with shift 7."""
    from diffusers import (
        AutoencoderKLHunyuanVideo,
        FlowMatchEulerDiscreteScheduler,
        HunyuanVideoPipeline,
        HunyuanVideoTransformer3DModel,
    )
    from transformers import LlamaConfig, LlamaModel

    llama = build_llama_tokenizer()
    torch.manual_seed(0)
    text_encoder = LlamaModel(LlamaConfig(
        vocab_size=len(llama), hidden_size=16, intermediate_size=32, num_hidden_layers=3, num_attention_heads=2,
        num_key_value_heads=2, max_position_embeddings=256, pad_token_id=llama.pad_token_id,
        bos_token_id=llama.bos_token_id, eos_token_id=llama.eos_token_id))
    clip = build_clip_tokenizer()
    vae = seeded(AutoencoderKLHunyuanVideo, latent_channels=4, block_out_channels=(8,) * 4, layers_per_block=1,
                 norm_num_groups=4, spatial_compression_ratio=8, temporal_compression_ratio=4)
    # head dim 8 = the rope axes (t, h, w) 2 + 2 + 4; text_embed_dim = Llama's width, pooled = CLIP's
    transformer = seeded(HunyuanVideoTransformer3DModel, in_channels=4, out_channels=4, num_attention_heads=2,
                         attention_head_dim=8, num_layers=2, num_single_layers=2, num_refiner_layers=1,
                         patch_size=1, patch_size_t=1, text_embed_dim=16, pooled_projection_dim=8,
                         rope_axes_dim=(2, 2, 4))
    pipe = HunyuanVideoPipeline(
        tokenizer=llama, text_encoder=text_encoder, tokenizer_2=clip, text_encoder_2=build_clip_text_encoder(clip, 8),
        vae=vae, transformer=transformer, scheduler=FlowMatchEulerDiscreteScheduler(shift=7.0))
    # 16-pixel multiples (pipeline check), 1 + 4k frames
    return pipe, dict(height=32, width=32, num_frames=9, prompt_template=hunyuan_prompt_template(llama))


BUILDERS = {"wan": _wan, "cogvideox": _cogvideox, "ltx": _ltx, "wan22": _wan22, "flux": _flux,
            "hunyuanvideo": _hunyuanvideo}
WITH_CALL_DEFAULTS = ("wan22", "flux", "hunyuanvideo")  # saved with their sencache_call_defaults.json
CALL_DEFAULTS_FILE = "sencache_call_defaults.json"


def build_pipeline(kind: str):
    """``(pipe, call_kwargs)``: the tiny ``kind`` pipeline in memory (progress bar off) and the keyword arguments
    of a tiny call: height, width, num_frames (not for flux), max_sequence_length, and for hunyuanvideo the
    prompt_template whose crop_start fits the tiny tokenizer."""
    if kind not in BUILDERS:
        raise ValueError(f"unknown pipeline kind {kind!r}; expected one of {sorted(BUILDERS)}")
    pipe, call = BUILDERS[kind](build_tokenizer())
    pipe.set_progress_bar_config(disable=True)
    return pipe, {**call, "max_sequence_length": TEXT_LEN}


def save_tiny_pipeline(kind: str, folder, call_defaults: bool | None = None) -> dict:
    """Build the tiny ``kind`` pipeline (one of BUILDERS), save it to ``folder`` and return the call kwargs
    :func:`build_pipeline` gives (height, width, num_frames, max_sequence_length, ...).

    ``call_defaults`` writes them as the folder's ``sencache_call_defaults.json`` too, so that
    ``sencache.runtime.loading.load_pipeline`` (and the CLI) make a tiny call by default; None (the default) does
    it for the kinds in WITH_CALL_DEFAULTS only: the older kinds' tests write their own."""
    pipe, call = build_pipeline(kind)
    pipe.save_pretrained(str(folder))
    if call_defaults or (call_defaults is None and kind in WITH_CALL_DEFAULTS):
        (Path(folder) / CALL_DEFAULTS_FILE).write_text(json.dumps(call, indent=1))
    return call


CALIBRATION_PROMPTS = "a red circle\na blue square moving right\n"


def calibrate_saved(kind: str, root, steps: int, *flags: str) -> tuple:
    """Save the tiny ``kind`` pipeline under ``root`` and run ``sencache calibrate`` on it (2 samples of two
    prompts, ``steps`` steps, extra CLI ``flags``) into the folder's ``sencache_profile.json``: (folder, exit code)."""
    from sencache.cli import main

    root = Path(root)
    folder = root / kind
    save_tiny_pipeline(kind, folder)
    prompts = root / "calibration_prompts.txt"
    prompts.write_text(CALIBRATION_PROMPTS)
    code = main(["calibrate", "--model", str(folder), "--prompts", str(prompts), "--samples", "2", "--steps",
                 str(steps), "--no-progress", "--out", str(folder / "sencache_profile.json"), *flags])
    return folder, code
