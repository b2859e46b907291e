"""A tiny Flux.1 made offline: diffusers' real classes at toy width, random weights.

    make_tiny_flux_pipeline(seed, schnell=False) -> FluxPipeline
    write_tiny_single_files(folder, out_dir, fp8=False) -> {"transformer", "clip_l", "t5xxl", "ae"} paths

The layout is Flux.1's: `FluxTransformer2DModel` with two double and two single blocks
(the real one has 19 and 38) and the guidance embedding of [dev] (none for [schnell]), a
CLIP-L-shaped `CLIPTextModel` whose pooled output conditions the modulation, a
`T5EncoderModel` (gated GELU, relative attention) whose states are the text tokens, and a
16-channel `AutoencoderKL` without quant convs, with Flux's shift and scale factors. T5's
tokenizer is a SentencePiece-style Unigram vocabulary built here, CLIP's the tiny BPE of
engine.model.tiny. The single files are what Flux users download: BFL's transformer
(bf16, or fp8 e4m3fn), `clip_l`, `t5xxl` and `ae` (engine.model.families.flux.single_files).
"""
from __future__ import annotations

from pathlib import Path

from engine.atomic import ensure_folder
from engine.model.tiny_parts import _COMMON_WORDS, tiny_tokenizer

WIDTH = 64  # 2 heads of 32; Flux.1: 24 heads of 128
HEAD = 32
ROPE_AXES = (4, 14, 14)  # Flux's (16, 56, 56) split of a head, at this head width
TEXT_WIDTH = 32  # CLIP-L 768, T5-XXL 4096
LATENT_CHANNELS = 16
FLUX_VAE_FACTORS = {"scaling_factor": 0.3611, "shift_factor": 0.1159}  # FLUX.1's ae
# FLUX.1 [dev]'s and [schnell]'s schedulers (scheduler/scheduler_config.json of each)
DEV_SCHEDULE = {"base_image_seq_len": 256, "base_shift": 0.5, "max_image_seq_len": 4096, "max_shift": 1.15,
                "num_train_timesteps": 1000, "shift": 3.0, "use_dynamic_shifting": True}
SCHNELL_SCHEDULE = {**DEV_SCHEDULE, "shift": 1.0, "use_dynamic_shifting": False}


def tiny_t5_tokenizer():
    """A T5Tokenizer (Unigram, as T5's SentencePiece model) over a few hundred pieces:
    whole common words and single characters, with T5's <pad> 0, </s> 1, <unk> 2."""
    from transformers import T5Tokenizer

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -3.0)]
    pieces += [("▁" + word, -2.0) for word in _COMMON_WORDS]
    characters = "abcdefghijklmnopqrstuvwxyz0123456789,.:;!?'()-"
    pieces += [(character, -6.0) for character in characters] + [("▁" + character, -6.5) for character in characters]
    return T5Tokenizer(vocab=pieces, extra_ids=0, model_max_length=512)


def make_tiny_flux_pipeline(seed: int = 0, schnell: bool = False):
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, FluxPipeline, FluxTransformer2DModel
    from transformers import CLIPTextConfig, CLIPTextModel, T5Config, T5EncoderModel

    torch.manual_seed(seed)
    transformer = FluxTransformer2DModel(
        patch_size=1, in_channels=4 * LATENT_CHANNELS, num_layers=2, num_single_layers=2,
        attention_head_dim=HEAD, num_attention_heads=WIDTH // HEAD, joint_attention_dim=TEXT_WIDTH,
        pooled_projection_dim=TEXT_WIDTH, guidance_embeds=not schnell, axes_dims_rope=ROPE_AXES,
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 16, 16), down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4, latent_channels=LATENT_CHANNELS, layers_per_block=1,
        norm_num_groups=8, sample_size=64, use_quant_conv=False, use_post_quant_conv=False, force_upcast=True,
        **FLUX_VAE_FACTORS,
    )
    tokenizer = tiny_tokenizer()
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=TEXT_WIDTH, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    ))
    tokenizer_2 = tiny_t5_tokenizer()
    text_encoder_2 = T5EncoderModel(T5Config(
        vocab_size=len(tokenizer_2), d_model=TEXT_WIDTH, d_kv=8, d_ff=64, num_layers=2, num_heads=4,
        feed_forward_proj="gated-gelu", relative_attention_num_buckets=8, relative_attention_max_distance=32,
        dropout_rate=0.0, is_encoder_decoder=False, pad_token_id=0, eos_token_id=1,
    ))
    scheduler = FlowMatchEulerDiscreteScheduler(**(SCHNELL_SCHEDULE if schnell else DEV_SCHEDULE))
    return FluxPipeline(scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, transformer=transformer)


def write_tiny_single_files(folder: str | Path, out_dir: str | Path, *, fp8: bool = False) -> dict[str, Path]:
    """The diffusers folder's parts as the single files Flux users have: BFL's transformer
    (bf16, or fp8 e4m3fn with `fp8`), clip_l and t5xxl in transformers' layout, ae in BFL's."""
    import torch
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    from engine.model.families.flux import single_files

    folder, out = Path(folder), Path(out_dir)
    ensure_folder(out)
    dtype = torch.float8_e4m3fn if fp8 else torch.bfloat16
    suffix = "fp8_e4m3fn" if fp8 else "bf16"
    transformer = FluxTransformer2DModel.from_pretrained(folder, subfolder="transformer", local_files_only=True)
    vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", local_files_only=True)
    clip = CLIPTextModel.from_pretrained(folder / "text_encoder", local_files_only=True)
    t5 = T5EncoderModel.from_pretrained(folder / "text_encoder_2", local_files_only=True)
    paths = {
        "transformer": out / f"flux1-tiny-{suffix}.safetensors",
        "clip_l": out / "clip_l.safetensors",
        "t5xxl": out / f"t5xxl_{'fp8_e4m3fn' if fp8 else 'fp16'}.safetensors",
        "ae": out / "ae.safetensors",
    }
    single_files.save_file(single_files.transformer_to_bfl(transformer.state_dict()), paths["transformer"], dtype)
    single_files.save_file(single_files.clip_l_state(clip), paths["clip_l"], torch.float16)
    single_files.save_file(single_files.t5xxl_state(t5), paths["t5xxl"], dtype if fp8 else torch.float16)
    single_files.save_file(single_files.vae_to_bfl(vae), paths["ae"], torch.float32)
    return paths
