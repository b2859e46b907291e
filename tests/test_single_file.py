"""Single-file checkpoints: offline loading, export, weights-only .ckpt, clear refusals."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine.errors import LoradeckError
from engine.model.families import family_named
from tests.conftest import pipelines_of
from engine.model.ldm_checkpoints import text_encoder_to_ldm, unet_to_ldm, vae_to_ldm
from engine.model.single_file import export_single_file, load_single_file, load_single_file_vae, load_tokenizer


def shipped_configs(family: str) -> Path:
    return family_named(family).config_folder


@pytest.fixture(scope="module")
def tiny(tiny_model_dir) -> Path:
    return tiny_model_dir


@pytest.fixture(scope="module")
def tiny_file(tiny, tmp_path_factory) -> Path:
    return export_single_file(tiny, tmp_path_factory.mktemp("single") / "tiny.safetensors")


@pytest.fixture(scope="module")
def reference(tiny):
    from diffusers import StableDiffusionPipeline

    return StableDiffusionPipeline.from_pretrained(tiny, local_files_only=True)


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection fails the test: loading must be fully offline."""
    import socket

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)


def assert_same_weights(expected, actual):
    expected_state, actual_state = expected.state_dict(), actual.state_dict()
    assert expected_state.keys() == actual_state.keys()
    for key, value in expected_state.items():
        assert torch.equal(value, actual_state[key]), key


def assert_same_output(expected, actual):
    """Same weights loaded through another code path: equal up to float op order (~1e-6).

    A real conversion bug (a transposed, swapped or missing tensor) moves outputs by ~1e-1.
    """
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)


def unet_output(unet, seed=0):
    generator = torch.Generator().manual_seed(seed)
    config = unet.config
    latents = torch.randn(1, config.in_channels, 8, 8, generator=generator)
    context = torch.randn(1, 77, config.cross_attention_dim, generator=generator)
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), encoder_hidden_states=context).sample


# ---------------------------------------------------------------- round trip


def test_round_trip_gives_identical_weights_and_unet_output(tiny_file, tiny, reference, no_network):
    components = load_single_file(tiny_file, config_dir=tiny)

    assert set(components) == {"unet", "vae", "text_encoder", "tokenizer", "scheduler"}
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(reference, name), components[name])
        assert all(p.device.type == "cpu" and p.dtype == torch.float32 for p in components[name].parameters())
    assert_same_output(unet_output(reference.unet), unet_output(components["unet"]))
    ids = reference.tokenizer("a photo of a cat", return_tensors="pt").input_ids
    assert ids.tolist() == components["tokenizer"]("a photo of a cat", return_tensors="pt").input_ids.tolist()
    with torch.no_grad():
        assert_same_output(reference.text_encoder(ids)[0], components["text_encoder"](ids)[0])
    assert components["scheduler"].config == reference.scheduler.config


def test_exported_file_is_the_original_layout_diffusers_reads(tiny_file, tiny, reference):
    from diffusers import UNet2DConditionModel

    keys = load_file(tiny_file).keys()
    prefixes = {key.split(".")[0] for key in keys}
    assert prefixes == {"model", "first_stage_model", "cond_stage_model"}
    assert "model.diffusion_model.input_blocks.0.0.weight" in keys
    assert "model.diffusion_model.output_blocks.2.1.conv.weight" in keys  # up block 0's upsampler
    assert "model.diffusion_model.input_blocks.1.0.in_layers.0.weight" in keys
    assert "first_stage_model.encoder.mid.attn_1.q.weight" in keys
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in keys
    # diffusers' own public single-file loader agrees with ours.
    unet = UNet2DConditionModel.from_single_file(
        str(tiny_file), config=str(tiny), subfolder="unet", local_files_only=True
    )
    assert_same_weights(reference.unet, unet)


def test_export_in_half_precision_loads_as_float32(tiny, tmp_path, reference):
    path = export_single_file(tiny, tmp_path / "half.safetensors", dtype=torch.float16)
    assert {tensor.dtype for tensor in load_file(path).values()} == {torch.float16}
    unet = load_single_file(path, config_dir=tiny)["unet"]
    assert next(unet.parameters()).dtype == torch.float32
    expected = reference.unet.state_dict()["conv_in.weight"].half().float()
    assert torch.equal(unet.state_dict()["conv_in.weight"], expected)


def test_prediction_type_override(tiny_file, tiny):
    scheduler = load_single_file(tiny_file, config_dir=tiny, prediction_type="v_prediction")["scheduler"]
    assert scheduler.config.prediction_type == "v_prediction"


def make_tiny_sd2(folder: Path) -> Path:
    """SD 2.x's distinguishing parts at toy width: linear projections, GELU OpenCLIP text encoder."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(1)
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        cross_attention_dim=48,
        attention_head_dim=(2, 4),
        use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        layers_per_block=1,
        norm_num_groups=8,
    )
    tokenizer = load_tokenizer(shipped_configs("sd2"))
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer), hidden_size=48, intermediate_size=96, num_hidden_layers=2,
            num_attention_heads=4, hidden_act="gelu", max_position_embeddings=77,
        )
    )
    pipeline = StableDiffusionPipeline(
        unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler=DDIMScheduler(prediction_type="v_prediction", steps_offset=1, clip_sample=False), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    return folder


def test_sd2_round_trip_through_the_open_clip_layout(tmp_path):
    from diffusers import StableDiffusionPipeline

    folder = make_tiny_sd2(tmp_path / "sd2")
    path = export_single_file(folder, tmp_path / "sd2.safetensors")
    keys = load_file(path).keys()
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    assert "cond_stage_model.model.positional_embedding" in keys
    assert not any(key.startswith("cond_stage_model.transformer.") for key in keys)

    components = load_single_file(path, config_dir=folder)
    reference = StableDiffusionPipeline.from_pretrained(folder, local_files_only=True)
    for name in ("unet", "vae", "text_encoder"):
        assert_same_weights(getattr(reference, name), components[name])
    assert_same_output(unet_output(reference.unet), unet_output(components["unet"]))
    assert components["tokenizer"].pad_token == "!"


def test_text_encoder_saved_without_the_text_model_level(tiny_file, tiny, tmp_path, reference):
    # Some SD 1.x merges carry `cond_stage_model.transformer.embeddings.*` (old transformers).
    state = {key.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): value
             for key, value in ldm_state(tiny_file).items()}
    path = tmp_path / "old-clip.safetensors"
    save_file(state, path)
    assert_same_weights(reference.text_encoder, load_single_file(path, config_dir=tiny)["text_encoder"])


# ---------------------------------------------------------------- .ckpt: weights only


def ldm_state(tiny_file):
    return load_file(tiny_file)


def test_ckpt_is_refused_unless_allowed(tiny_file, tmp_path):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_state(tiny_file)}, path)
    with pytest.raises(LoradeckError, match=r"model\.ckpt.*allow_ckpt"):
        load_single_file(path)


def test_ckpt_loads_weights_only_when_allowed(tiny_file, tiny, tmp_path, reference):
    path = tmp_path / "model.ckpt"
    torch.save({"state_dict": ldm_state(tiny_file), "global_step": 470000}, path)
    components = load_single_file(path, allow_ckpt=True, config_dir=tiny)
    assert_same_weights(reference.unet, components["unet"])


UNPICKLED = []


class Payload:
    """Unpickling this runs code: the weights-only loader must refuse, not run it."""

    def __reduce__(self):
        return (UNPICKLED.append, ("ran",))


def test_ckpt_with_python_objects_is_refused_without_running_them(tiny_file, tmp_path):
    path = tmp_path / "trojan.ckpt"
    torch.save({"state_dict": ldm_state(tiny_file), "callbacks": Payload()}, path)
    with pytest.raises(LoradeckError, match=r"trojan\.ckpt.*weights-only"):
        load_single_file(path, allow_ckpt=True)
    assert UNPICKLED == []


# ---------------------------------------------------------------- refusals name the file


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message
    return message


def test_missing_file(tmp_path):
    with pytest.raises(LoradeckError) as error:
        load_single_file(tmp_path / "nope.safetensors")
    assert "nope.safetensors" in one_line(error) and "no such" in one_line(error)


@pytest.mark.parametrize("content", [b"", b"not a safetensors file at all", b"\xff" * 64])
def test_corrupt_safetensors(tmp_path, content):
    path = tmp_path / "broken.safetensors"
    path.write_bytes(content)
    with pytest.raises(LoradeckError) as error:
        load_single_file(path)
    assert "broken.safetensors" in one_line(error) and "not a readable" in one_line(error)


def test_truncated_safetensors(tiny_file, tmp_path):
    path = tmp_path / "truncated.safetensors"
    path.write_bytes(tiny_file.read_bytes()[: tiny_file.stat().st_size // 2])
    with pytest.raises(LoradeckError, match=r"truncated\.safetensors: not a readable"):
        load_single_file(path)


def test_corrupt_ckpt(tmp_path):
    path = tmp_path / "broken.ckpt"
    path.write_bytes(b"PK\x03\x04 garbage")
    with pytest.raises(LoradeckError) as error:
        load_single_file(path, allow_ckpt=True)
    assert "broken.ckpt" in one_line(error)


def test_unknown_extension(tmp_path):
    path = tmp_path / "model.onnx"
    path.write_bytes(b"x")
    with pytest.raises(LoradeckError, match=r"model\.onnx: not a checkpoint file"):
        load_single_file(path)


def test_file_that_is_not_stable_diffusion(tmp_path):
    path = tmp_path / "lora.safetensors"
    save_file({"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, path)
    with pytest.raises(LoradeckError, match=r"lora\.safetensors: not a Stable Diffusion checkpoint"):
        load_single_file(path)


def test_another_familys_file_and_inpainting_are_refused_by_name(tiny_file, tmp_path):
    state = ldm_state(tiny_file)
    sdxl = tmp_path / "xl.safetensors"
    save_file({**state, "conditioner.embedders.0.transformer.text_model.final_layer_norm.weight": torch.ones(4)}, sdxl)
    with pytest.raises(LoradeckError, match=r"xl\.safetensors: is an SDXL model, not SD 1\.x"):
        load_single_file(sdxl, family="sd15")
    with pytest.raises(LoradeckError, match=r"xl\.safetensors: not an SD 1\.x/2\.x checkpoint: its text encoders are "
                                            r"conditioner\.embedders"):
        family_named("sd15").runtime().load_single_file(sdxl, allow_ckpt=False, config_dir=None,
                                                        prediction_type=None, dtype=None)
    conv_in = state["model.diffusion_model.input_blocks.0.0.weight"]
    inpainting = tmp_path / "inpaint.safetensors"
    wide = torch.zeros(conv_in.shape[0], 9, *conv_in.shape[2:])
    save_file({**state, "model.diffusion_model.input_blocks.0.0.weight": wide}, inpainting)
    with pytest.raises(LoradeckError, match=r"inpaint\.safetensors: its U-Net takes 9 input channels"):
        load_single_file(inpainting)


def test_a_single_file_of_each_family_is_that_family_whatever_its_name(tmp_path, family, family_model_dir,
                                                                       monkeypatch, no_network):
    """Exported through its family, a tiny model's single file is recognised (by its keys,
    never its name) by that family alone, loads as it, and is refused as any other family."""
    import torch

    from engine.config.schema import config_from_dict
    from engine.model.families import FAMILIES, file_family, safetensors_keys
    from engine.model.loading import load_base_model

    descriptor = family_named(family)
    others = [other for other in FAMILIES if other.runtime_path != descriptor.runtime_path]
    path = export_single_file(family_model_dir, tmp_path / f"{others[0].name}-base.safetensors", family=family)
    shapes = {key: entry["shape"] for key, entry in safetensors_keys(path).items()}
    assert [other for other in FAMILIES if other.recognizes_checkpoint(shapes)] == [descriptor]
    assert file_family(path) is descriptor
    for other in others:
        with pytest.raises(LoradeckError, match=f"is an {descriptor.label} model, not {other.label}"):
            export_single_file(family_model_dir, tmp_path / "wrong.safetensors", family=other.name)
        with pytest.raises(LoradeckError, match=f"is an {descriptor.label} model, not {other.label}"):
            load_single_file(path, family=other.name)
    assert not (tmp_path / "wrong.safetensors").exists()

    # trained from: the family's loader with its offline configs (the tiny model's, here)
    monkeypatch.setitem(descriptor.__dict__, "config_folder", family_model_dir)
    model_settings = {"pretrained_model": str(path), **companion_files(family, family_model_dir, tmp_path)}
    model = load_base_model(config_from_dict({"model": model_settings}), ".", device="cpu", dtype=torch.float32)
    assert model.family is descriptor and model.name == f"{others[0].name}-base"
    reference = pipelines_of(family_model_dir)()
    for part in (descriptor.denoiser, *descriptor.text_encoders, "vae"):
        assert_same_weights(getattr(reference, part), model.parts[part])


def companion_files(family: str, model_dir, folder) -> dict[str, str]:
    """Flux.1's transformer file comes with three more (model.clip_l, t5xxl, ae), as BFL ships it."""
    if family != "flux":
        return {}
    import torch
    from diffusers import AutoencoderKL
    from transformers import CLIPTextModel, T5EncoderModel

    from engine.model.families.flux import single_files

    parts = {"clip_l": single_files.clip_l_state(CLIPTextModel.from_pretrained(model_dir / "text_encoder")),
             "t5xxl": single_files.t5xxl_state(T5EncoderModel.from_pretrained(model_dir / "text_encoder_2")),
             "ae": single_files.vae_to_bfl(AutoencoderKL.from_pretrained(model_dir, subfolder="vae"))}
    return {name: str(single_files.save_file(state, folder / f"{name}.safetensors", torch.float32))
            for name, state in parts.items()}


def test_incomplete_checkpoint_names_the_missing_weight(tiny_file, tiny, tmp_path):
    state = ldm_state(tiny_file)
    del state["model.diffusion_model.middle_block.1.proj_out.weight"]
    path = tmp_path / "partial.safetensors"
    save_file(state, path)
    with pytest.raises(LoradeckError) as error:
        load_single_file(path, config_dir=tiny)
    assert "partial.safetensors" in one_line(error)
    assert "mid_block.attentions.0.proj_out.weight" in one_line(error)


def test_checkpoint_that_does_not_fit_the_config(tiny_file, tiny, tmp_path, no_network):
    # The tiny file against the shipped real-size SD1.5 configs.
    with pytest.raises(LoradeckError) as error:
        load_single_file(tiny_file)
    assert "tiny.safetensors" in one_line(error) and "another architecture" in one_line(error)
    # Same blocks, other widths: the message names the weight and both shapes.
    other = tmp_path / "other"
    shutil.copytree(tiny, other)
    config_file = other / "unet" / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "cross_attention_dim": 16}))
    with pytest.raises(LoradeckError) as error:
        load_single_file(tiny_file, config_dir=other)
    assert "attn2.to_k.weight has shape (32, 32)" in one_line(error) and "expects (32, 16)" in one_line(error)


# ---------------------------------------------------------------- VAE override files


def test_vae_file_in_original_layout_without_prefix(tiny_file, tiny, tmp_path, reference):
    prefix = "first_stage_model."
    vae_only = {key[len(prefix):]: value for key, value in ldm_state(tiny_file).items() if key.startswith(prefix)}
    path = tmp_path / "vae-ft-mse.safetensors"
    save_file(vae_only, path)
    assert_same_weights(reference.vae, load_single_file_vae(path, config_dir=tiny))


def test_vae_file_in_diffusers_layout(tiny, reference):
    path = tiny / "vae" / "diffusion_pytorch_model.safetensors"
    assert_same_weights(reference.vae, load_single_file_vae(path, config_dir=tiny))


def test_vae_override_refuses_other_files(tmp_path):
    path = tmp_path / "notvae.safetensors"
    save_file({"something.weight": torch.zeros(2)}, path)
    with pytest.raises(LoradeckError, match=r"notvae\.safetensors: not a VAE"):
        load_single_file_vae(path)


# ---------------------------------------------------------------- shipped configs and tokenizer


def meta_models(family):
    from accelerate import init_empty_weights
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    folder = shipped_configs(family)
    read = lambda name: json.loads((folder / name / "config.json").read_text())  # noqa: E731
    with init_empty_weights():
        return (
            UNet2DConditionModel.from_config(read("unet")),
            AutoencoderKL.from_config(read("vae")),
            CLIPTextModel(CLIPTextConfig.from_dict(read("text_encoder"))),
        )


@pytest.mark.parametrize(
    "family, counts",
    [
        ("sd15", (859_520_964, 83_653_863, 123_060_480)),
        ("sd2", (865_910_724, 83_653_863, 340_387_840)),
    ],
)
def test_shipped_configs_build_the_published_architectures_on_meta(family, counts):
    models = meta_models(family)
    for model, expected in zip(models, counts):
        parameters = list(model.parameters())
        assert sum(p.numel() for p in parameters) == expected
        assert {p.device.type for p in parameters} == {"meta"}  # nothing allocated


def test_shipped_sd15_config_maps_to_the_real_checkpoint_keys():
    unet, vae, text_encoder = meta_models("sd15")
    keys = {
        **unet_to_ldm(unet.state_dict(), unet.config),
        **vae_to_ldm(vae.state_dict(), vae.config),
        **text_encoder_to_ldm(text_encoder.state_dict(), text_encoder.config.hidden_act),
    }
    # 686 U-Net + 248 VAE + 196 text-encoder tensors, as in v1-5-pruned.safetensors.
    assert len(keys) == 1130
    for key, shape in {
        "model.diffusion_model.input_blocks.3.0.op.weight": (320, 320, 3, 3),
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight": (640, 320, 1, 1),
        "model.diffusion_model.middle_block.1.proj_in.weight": (1280, 1280, 1, 1),
        "model.diffusion_model.output_blocks.2.1.conv.weight": (1280, 1280, 3, 3),
        "model.diffusion_model.output_blocks.8.2.conv.weight": (640, 640, 3, 3),
        "model.diffusion_model.output_blocks.11.1.transformer_blocks.0.attn2.to_k.weight": (320, 768),
        "model.diffusion_model.out.2.weight": (4, 320, 3, 3),
        "first_stage_model.encoder.mid.attn_1.proj_out.weight": (512, 512, 1, 1),
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight": (128, 256, 1, 1),
        "first_stage_model.decoder.up.3.upsample.conv.weight": (512, 512, 3, 3),
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight": (49408, 768),
        "cond_stage_model.transformer.text_model.encoder.layers.11.mlp.fc2.weight": (768, 3072),
    }.items():
        assert tuple(keys[key].shape) == shape, key


def test_sd15_tokenizer_matches_clip_bpe(no_network):
    tokenizer = load_tokenizer(shipped_configs("sd15"))
    assert len(tokenizer) == 49408
    assert tokenizer.convert_tokens_to_ids(["<|startoftext|>", "<|endoftext|>"]) == [49406, 49407]
    assert tokenizer("a photo of a cat").input_ids == [49406, 320, 1125, 539, 320, 2368, 49407]
    # Lower-cased, punctuation split off, "</w>" word ends: the same ids as SD's tokenizer.
    assert tokenizer("A Photo of a CAT!").input_ids == [49406, 320, 1125, 539, 320, 2368, 256, 49407]
    assert tokenizer("masterpiece, best quality").input_ids == [49406, 12066, 267, 949, 3027, 49407]
    padded = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert len(padded) == 77 and padded[-1] == 49407


def test_sd2_tokenizer_pads_with_exclamation_mark(no_network):
    tokenizer = load_tokenizer(shipped_configs("sd2"))
    padded = tokenizer("a cat", padding="max_length", max_length=8).input_ids
    assert padded == [49406, 320, 2368, 49407, 0, 0, 0, 0]
