"""The tiny model: SD1.5's layout at toy width, loadable like SD1.5, built offline."""
from __future__ import annotations

import json

import torch

from tui.cli import main as loradeck


def test_layout_is_sd15(tiny_model_dir):
    from diffusers import StableDiffusionPipeline

    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["_class_name"] == "StableDiffusionPipeline"
    assert index["scheduler"] == ["diffusers", "PNDMScheduler"]
    assert index["tokenizer"][1] == "CLIPTokenizer" and index["text_encoder"][1] == "CLIPTextModel"
    for name in ("vocab.json", "merges.txt"):
        assert (tiny_model_dir / "tokenizer" / name).is_file()

    pipeline = StableDiffusionPipeline.from_pretrained(tiny_model_dir)
    unet = pipeline.unet.config
    assert list(unet.down_block_types) == ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"]
    assert list(unet.up_block_types) == ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3
    assert unet.mid_block_type == "UNetMidBlock2DCrossAttn" and unet.layers_per_block == 2
    assert unet.cross_attention_dim == pipeline.text_encoder.config.hidden_size
    assert not unet.use_linear_projection  # SD1.5's proj_in/proj_out are 1x1 convs
    assert pipeline.vae.config.scaling_factor == 0.18215 and len(pipeline.vae.config.block_out_channels) == 4
    scheduler = pipeline.scheduler.config
    assert (scheduler.beta_start, scheduler.beta_end, scheduler.beta_schedule) == (0.00085, 0.012, "scaled_linear")
    assert sum(p.numel() for p in pipeline.unet.parameters()) < 5_000_000

    # the same module names as SD1.5, down to the attention projections LoRA targets
    names = dict(pipeline.unet.named_modules())
    assert isinstance(names["down_blocks.0.attentions.1.transformer_blocks.0.attn2.to_k"], torch.nn.Linear)
    assert isinstance(names["mid_block.attentions.0.proj_in"], torch.nn.Conv2d)
    assert "up_blocks.3.attentions.2.transformer_blocks.0.ff.net.2" in names

    tokenizer = pipeline.tokenizer
    ids = tokenizer("a photo of a dog").input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[-1] == tokenizer.eos_token_id
    assert len(ids) == 7  # whole-word merges: one token per common word
    assert tokenizer.model_max_length == 77 and tokenizer.pad_token == "<|endoftext|>"

    image = pipeline("a photo", num_inference_steps=2, height=64, width=64, output_type="np").images[0]
    assert image.shape == (64, 64, 3)


def test_make_tiny_model_command(tmp_path, capsys):
    assert loradeck(["make-tiny-model", str(tmp_path / "tiny"), "--seed", "3"]) == 0
    assert capsys.readouterr().out.strip() == str(tmp_path / "tiny")
    assert (tmp_path / "tiny" / "unet" / "diffusion_pytorch_model.safetensors").is_file()


def test_every_family_has_a_tiny_model_that_is_recognised_as_it(tmp_path, family, capsys):
    """`loradeck make-tiny-model --family F` writes F's layout, which the registry finds to be
    F's and no other family's; it loads as F, with F's parts."""
    from engine.config.schema import config_from_dict
    from engine.model.families import FAMILIES, family_named, folder_family
    from engine.model.loading import load_base_model

    folder = tmp_path / f"tiny-{family}"
    assert loradeck(["make-tiny-model", str(folder), "--family", family]) == 0
    assert capsys.readouterr().out.strip() == str(folder)
    descriptor = family_named(family)
    assert [other for other in FAMILIES if other.recognizes_folder(folder)] == [descriptor]
    assert folder_family(folder) is descriptor
    model = load_base_model(config_from_dict({"model": {"pretrained_model": str(folder)}}), ".", device="cpu",
                            dtype=torch.float32)
    assert model.family is descriptor
    assert set(model.parts) == {descriptor.denoiser, "vae", *descriptor.text_encoders, *descriptor.tokenizers}
    assert not any(p.requires_grad for module in model.modules() for p in module.parameters())
