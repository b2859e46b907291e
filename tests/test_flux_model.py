"""Flux.1's model files: the tiny model's layout, BFL's single files (bf16, fp8 e4m3fn,
ComfyUI's prefix) loading into diffusers' classes with the same weights, detection from
keys and configs, and the BFL <-> diffusers table checked against diffusers' own converter
at Flux.1's full width."""
from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import LoradeckError
from engine.model.families import flux
from engine.model.families.flux import layout, loading, single_files


def same_weights(model, reference) -> None:
    expected = reference.state_dict()
    got = model.state_dict()
    assert got.keys() == expected.keys()
    for key, value in got.items():
        assert torch.equal(value.float(), expected[key].to(value.dtype).float()), key


def test_tiny_flux_has_flux_layout(tiny_flux_dir):
    from diffusers import FluxPipeline

    pipeline = FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)
    transformer = pipeline.transformer
    assert transformer.config.guidance_embeds and transformer.config.in_channels == 64
    assert len(transformer.transformer_blocks) == 2 and len(transformer.single_transformer_blocks) == 2
    assert pipeline.vae.config.latent_channels == 16
    assert (pipeline.vae.config.scaling_factor, pipeline.vae.config.shift_factor) == (0.3611, 0.1159)
    assert type(pipeline.text_encoder_2).__name__ == "T5EncoderModel"
    ids = pipeline.tokenizer_2("a photo of a dog", return_tensors="pt").input_ids[0].tolist()
    assert ids[-1] == 1 and 2 not in ids  # </s> closes it, no <unk>
    assert flux.folder_variant(tiny_flux_dir) == "dev"


def test_single_files_load_as_the_folder(tiny_flux_dir, tiny_flux_files):
    from diffusers import AutoencoderKL, FluxTransformer2DModel
    from transformers import CLIPTextModel, T5EncoderModel

    parts = loading.load_single_files(tiny_flux_files["transformer"], clip_l=tiny_flux_files["clip_l"],
                                      t5xxl=tiny_flux_files["t5xxl"], ae=tiny_flux_files["ae"],
                                      config_dir=tiny_flux_dir, dtype=torch.float32)
    assert parts["variant"] == "dev" and parts["scheduler"].config.use_dynamic_shifting
    same_weights(parts["transformer"], FluxTransformer2DModel.from_pretrained(tiny_flux_dir, subfolder="transformer")
                 .to(torch.bfloat16))
    same_weights(parts["text_encoder"], CLIPTextModel.from_pretrained(tiny_flux_dir / "text_encoder").half())
    same_weights(parts["text_encoder_2"], T5EncoderModel.from_pretrained(tiny_flux_dir / "text_encoder_2").half())
    same_weights(parts["vae"], AutoencoderKL.from_pretrained(tiny_flux_dir, subfolder="vae"))
    assert parts["tokenizer_2"]("red dog").input_ids == [parts["tokenizer_2"].convert_tokens_to_ids("▁red"),
                                                         parts["tokenizer_2"].convert_tokens_to_ids("▁dog"), 1]


def test_fp8_and_comfyui_prefix_and_schnell(tiny_flux_dir, tiny_flux_files, tmp_path):
    from diffusers import FluxTransformer2DModel

    reference = FluxTransformer2DModel.from_pretrained(tiny_flux_dir, subfolder="transformer")
    state = load_file(str(tiny_flux_files["transformer"]))
    # fp8 e4m3fn, under ComfyUI's prefix, and named like an SDXL checkpoint: the keys decide
    fp8_file = tmp_path / "sd_xl_base_1.0.safetensors"
    save_file({"model.diffusion_model." + k: v.to(torch.float8_e4m3fn) for k, v in state.items()}, str(fp8_file))
    assert flux.keys_variant(load_file(str(fp8_file)).keys()) == "dev"
    kept = single_files.load_transformer(fp8_file, config_dir=tiny_flux_dir)
    assert kept.x_embedder.weight.dtype == torch.float8_e4m3fn  # stays fp8 until asked
    same_weights(kept, reference.to(torch.bfloat16).to(torch.float8_e4m3fn))  # as the file was made
    # [schnell]: no guidance embedding
    schnell_file = tmp_path / "flux1-dev.safetensors"
    save_file({k: v for k, v in state.items() if not k.startswith("guidance_in.")}, str(schnell_file))
    assert flux.keys_variant(load_file(str(schnell_file)).keys()) == "schnell"
    schnell = single_files.load_transformer(schnell_file, dtype=torch.float32)
    assert not schnell.config.guidance_embeds and schnell.config.axes_dims_rope == [4, 14, 14]
    assert loading.scheduler_for("schnell").config.shift == 1.0


def test_wrong_files_are_one_line(tiny_flux_dir, tiny_flux_files, tmp_path):
    with pytest.raises(LoradeckError, match="not a Flux.1 transformer"):
        single_files.load_transformer(tiny_flux_files["ae"])
    with pytest.raises(LoradeckError, match="not a T5 encoder"):
        single_files.load_t5xxl(tiny_flux_files["clip_l"])
    with pytest.raises(LoradeckError, match="not a CLIP-L"):
        single_files.load_clip_l(tiny_flux_files["t5xxl"])
    scaled = tmp_path / "flux1-dev-fp8-scaled.safetensors"
    state = load_file(str(tiny_flux_files["transformer"]))
    save_file({**state, "scaled_fp8": torch.zeros(0)}, str(scaled))
    with pytest.raises(LoradeckError, match="scaled fp8"):
        single_files.load_transformer(scaled)
    with pytest.raises(LoradeckError, match="clip_l file"):
        loading.load_single_files(tiny_flux_files["transformer"], clip_l="", t5xxl="x", ae="y")
    # CLIP-L of the real width against the tiny file: named in one line
    with pytest.raises(LoradeckError, match="does not fit the CLIP-L config"):
        single_files.load_clip_l(tiny_flux_files["clip_l"])
    # no T5 vocabulary in the shipped configs and no network in tests
    with pytest.raises(LoradeckError, match="T5's tokenizer is not on this machine"):
        loading.load_t5_tokenizer(None, local_only=True)
    copy = tmp_path / "config"
    shutil.copytree(tiny_flux_dir, copy)
    assert loading.load_t5_tokenizer(copy, local_only=True)("dog").input_ids[-1] == 1


def row_tagged(shapes: dict[str, tuple]) -> dict[str, torch.Tensor]:
    """A tensor per key whose rows hold (key number, row): stride-0 columns, so Flux.1's full
    width costs a vector per weight."""
    tensors = {}
    for number, (key, shape) in enumerate(sorted(shapes.items())):
        rows = torch.arange(shape[0], dtype=torch.int32) + number * 100_000
        tensors[key] = rows if len(shape) == 1 else rows[:, None].expand(*shape)
    return tensors


def test_layout_matches_diffusers_converter_at_full_width():
    """diffusers' converter only takes Flux.1's real widths (3072 is a constant in it): run it
    and ours on a BFL state of the real shapes (two blocks of each kind) and compare."""
    from accelerate import init_empty_weights
    from diffusers import FluxTransformer2DModel
    from diffusers.loaders.single_file_utils import convert_flux_transformer_checkpoint_to_diffusers

    config = single_files.read_config(flux.ASSETS, "transformer")
    with init_empty_weights():
        real = FluxTransformer2DModel.from_config({**config, "num_layers": 2, "num_single_layers": 2})
    bfl_shapes = {key: tuple(value.shape) for key, value in single_files.transformer_to_bfl(real.state_dict()).items()}
    assert bfl_shapes["single_blocks.1.linear1.weight"] == (3072 * 3 + 12288, 3072)
    assert bfl_shapes["double_blocks.0.img_attn.qkv.weight"] == (9216, 3072)
    state = row_tagged(bfl_shapes)
    ours = single_files.bfl_to_diffusers(state)
    theirs = convert_flux_transformer_checkpoint_to_diffusers(dict(state))
    assert ours.keys() == theirs.keys() == real.state_dict().keys()
    for key in ours:
        assert ours[key].shape == theirs[key].shape == real.state_dict()[key].shape, key
        column = (lambda t: t if t.dim() == 1 else t[:, 0])
        assert torch.equal(column(ours[key]), column(theirs[key])), key
    # and back: BFL's layout again, tensor for tensor
    back = single_files.transformer_to_bfl(ours)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[key][..., 0] if back[key].dim() > 1 else back[key],
                           state[key][..., 0] if state[key].dim() > 1 else state[key]) for key in state)
    assert layout.block_counts(state) == (2, 2)


def test_system_ram_estimate():
    """A loader that reads the release files first holds 12 B bf16 weights and T5 at once;
    loradeck's streaming load holds the process and, at most, the text encoders."""
    bf16 = flux.system_ram_gib("dev", fp8_base=False, text_encoders_in_ram=False)
    assert 34 < bf16["read_all_first"] < 35.5 and bf16["loradeck"] < 4
    fp8 = flux.system_ram_gib("dev", fp8_base=True, text_encoders_in_ram=True)
    assert fp8["read_all_first"] < bf16["read_all_first"] - 15 and 8 < fp8["loradeck"] < 9
