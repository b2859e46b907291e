"""Flux.1's packed latents, positions, guidance and text conditioning, against sd-scripts'
formulas (flux_utils.pack_latents / prepare_img_ids, rewritten here) and diffusers'
FluxPipeline, which packs and encodes prompts on its own."""
from __future__ import annotations

import pytest
import torch

from engine.model.families.flux import latents as flux_latents
from engine.model.families.flux import text as flux_text


@pytest.fixture(scope="module")
def pipeline(tiny_flux_dir):
    from diffusers import FluxPipeline

    return FluxPipeline.from_pretrained(tiny_flux_dir, local_files_only=True)


def sd_scripts_pack(x):  # einops "b c (h ph) (w pw) -> b (h w) (c ph pw)", ph=pw=2, by hand
    b, c, h, w = x.shape
    out = torch.empty(b, (h // 2) * (w // 2), c * 4)
    for row in range(h // 2):
        for column in range(w // 2):
            patch = x[:, :, 2 * row:2 * row + 2, 2 * column:2 * column + 2]  # b c 2 2
            out[:, row * (w // 2) + column] = patch.reshape(b, c * 4)
    return out


def sd_scripts_img_ids(batch, height, width):
    ids = torch.zeros(height, width, 3)
    ids[..., 1] = ids[..., 1] + torch.arange(height)[:, None]
    ids[..., 2] = ids[..., 2] + torch.arange(width)[None, :]
    return ids.reshape(1, height * width, 3).repeat(batch, 1, 1)


@pytest.mark.parametrize("size", [(8, 8), (12, 8), (6, 10)])
def test_packing_and_positions(size, pipeline):
    height, width = size
    latents = torch.randn(2, 16, height, width, generator=torch.Generator().manual_seed(0))
    packed = flux_latents.pack(latents)
    torch.testing.assert_close(packed, sd_scripts_pack(latents))
    torch.testing.assert_close(packed, pipeline._pack_latents(latents, 2, 16, height, width))
    assert torch.equal(flux_latents.unpack(packed, height, width), latents)
    # diffusers unpacks by pixel size (vae scale factor 8)
    torch.testing.assert_close(pipeline._unpack_latents(packed, height * 8, width * 8, 8), latents)
    ids = flux_latents.image_ids(height, width)
    torch.testing.assert_close(ids, sd_scripts_img_ids(2, height // 2, width // 2)[0])
    torch.testing.assert_close(ids, pipeline._prepare_latent_image_ids(2, height // 2, width // 2, "cpu", torch.float32))
    assert flux_latents.text_ids(5).abs().sum() == 0


def test_guidance_vector():
    assert torch.equal(flux_latents.guidance_vector(1.0, 3, True), torch.ones(3))
    assert flux_latents.guidance_vector(3.5, 3, False) is None


def test_latents_shift_and_scale(pipeline):
    vae = pipeline.vae
    pixels = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        latents = flux_latents.encode_latents(vae, pixels)
        raw = vae.encode(pixels).latent_dist.mode()
        torch.testing.assert_close(latents, (raw - 0.1159) * 0.3611)
        decoded = flux_latents.decode_latents(vae, latents)
        torch.testing.assert_close(decoded, vae.decode(raw).sample)  # FluxPipeline's decode, by hand
    assert latents.shape == (1, 16, 8, 8)


def test_text_conditioning_matches_the_pipeline(pipeline):
    captions = ["sks dog, red, outdoors", "a photo of a cat"]
    tokens = flux_text.tokenize((pipeline.tokenizer, pipeline.tokenizer_2), captions, 32)
    assert tokens["input_ids"].shape == (2, 77) and tokens["input_ids_2"].shape == (2, 32)
    with torch.no_grad():
        pooled, states = flux_text.encode((pipeline.text_encoder, pipeline.text_encoder_2), tokens)
        expected_states, expected_pooled, text_ids = pipeline.encode_prompt(captions, None, max_sequence_length=32)
    torch.testing.assert_close(pooled, expected_pooled)
    torch.testing.assert_close(states, expected_states)
    assert text_ids.shape == (32, 3)


def test_t5_mask_hides_padding_from_the_transformer(pipeline):
    """With apply_t5_attn_mask, what T5 puts on padding positions does not reach the image."""
    tokens = flux_text.tokenize((pipeline.tokenizer, pipeline.tokenizer_2), ["sks dog"], 16)
    mask = tokens["attention_mask_2"]
    assert mask.sum() < 16
    with torch.no_grad():
        pooled, states = flux_text.encode((pipeline.text_encoder, pipeline.text_encoder_2), tokens, apply_t5_mask=True)
        latents = torch.randn(1, 16, 8, 8, generator=torch.Generator().manual_seed(2))
        packed = flux_latents.pack(latents)
        attention = flux_text.joint_attention_mask(mask, packed.shape[1])

        def run(text_states):
            return pipeline.transformer(
                hidden_states=packed, encoder_hidden_states=text_states, pooled_projections=pooled,
                timestep=torch.tensor([0.5]), img_ids=flux_latents.image_ids(8, 8), txt_ids=flux_latents.text_ids(16),
                guidance=torch.tensor([1.0]), joint_attention_kwargs={"attention_mask": attention},
            ).sample

        changed = states.clone()
        changed[:, ~mask[0].bool()] += 5.0
        torch.testing.assert_close(run(states), run(changed))
        assert not torch.allclose(run(states), run(states + 5.0))
