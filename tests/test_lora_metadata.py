"""The LoRA file's metadata reads like sd-scripts': tag frequency, A1111's hashes, the
base model's hashes, bucket aspect error, dataset records and the model spec."""
import hashlib
import json
import struct

import torch

from engine.config.schema import config_from_dict
from engine.dataset.folders import scan_dataset
from engine.network.lora import read_lora_file, save_lora_file
from engine.network.metadata import base_model_hashes, training_metadata, with_file_hashes
from engine.plan.training_plan import make_plan
from tests.datasets import write_caption, write_image
from tests.test_kohya_dataset_toml import write_toml_dataset


def metadata_for(config, root):
    dataset = scan_dataset(config, root)
    return training_metadata(config, make_plan(config, root, dataset), dataset, model_name="m", session_id="s",
                             started_at=0.0, epoch=1, step=1, optimizer_name="AdamW", scheduler_name="constant")


def test_tag_frequency_counts_like_sd_scripts(tmp_path):
    image = write_image(tmp_path / "img" / "2_dog" / "a.png", (64, 64))
    write_caption(image, "Dog, park, dog, SUNNY day")
    write_caption(write_image(tmp_path / "img" / "2_dog" / "b.png", (64, 64)), "dog, Park")
    config = config_from_dict({"model": {"pretrained_model": "tiny"}})
    frequency = json.loads(metadata_for(config, tmp_path)["ss_tag_frequency"])
    assert frequency == {"2_dog": {"dog": 3, "park": 2, "sunny day": 1}}


def test_bucket_aspect_error_is_the_real_mean(tmp_path):
    write_image(tmp_path / "img" / "1_x" / "square.png", (512, 512))
    write_image(tmp_path / "img" / "1_x" / "wide.png", (700, 400))
    config = config_from_dict({"model": {"pretrained_model": "tiny"}})
    dataset = scan_dataset(config, tmp_path)
    wide = next(item for item in dataset.items if item.path.name == "wide.png")
    expected = abs(wide.bucket[0] / wide.bucket[1] - 700 / 400) / 2  # the square fits its bucket exactly
    info = json.loads(metadata_for(config, tmp_path)["ss_bucket_info"])
    assert expected > 0 and abs(info["mean_img_ar_error"] - expected) < 1e-12


def test_model_spec_and_always_written_keys(tmp_path):
    write_image(tmp_path / "img" / "1_x" / "a.png", (64, 64))
    config = config_from_dict({"model": {"pretrained_model": "tiny", "family": "sd2", "v_parameterization": True},
                               "training": {"multires_noise_iterations": 6}})
    metadata = metadata_for(config, tmp_path)
    assert metadata["modelspec.prediction_type"] == "v"
    assert (metadata["ss_base_model_version"], metadata["ss_v2"]) == ("sd_v2", "True")
    assert metadata["modelspec.architecture"] == "stable-diffusion-v2-768-v/lora"  # sd-scripts' sai_model_spec
    assert metadata["modelspec.implementation_version"].count(".") >= 1
    assert metadata["ss_multires_noise_iterations"] == "6" and metadata["ss_multires_noise_discount"] == "0.3"
    for key in ("ss_training_comment", "ss_network_dropout", "ss_prior_loss_weight", "ss_loss_type",
                "ss_ip_noise_gamma", "ss_adaptive_noise_scale", "ss_caption_dropout_every_n_epochs"):
        assert key in metadata
    # a hub id: no hashes (for a diffusers folder sd-scripts writes "IsADirectory"; loradeck leaves them out)
    assert "ss_datasets" not in metadata and "ss_sd_model_hash" not in metadata


def test_dataset_toml_runs_get_ss_datasets(tmp_path):
    write_toml_dataset(tmp_path)
    config = config_from_dict({"model": {"pretrained_model": "tiny"}, "dataset": {"dataset_config": "dataset.toml"},
                               "captions": {"shuffle_caption": True, "keep_tokens": 1}, "training": {"batch_size": 2}})
    [record] = json.loads(metadata_for(config, tmp_path)["ss_datasets"])
    assert record["is_dreambooth"] and record["num_train_images"] == 46 and record["batch_size_per_device"] == 2
    subsets = {subset["image_dir"]: subset for subset in record["subsets"]}
    assert subsets["city"]["num_repeats"] == 10 and subsets["city"]["class_tokens"] == "cty city"
    assert subsets["reg"]["is_reg"] and subsets["night"]["img_count"] == 2


def test_file_hashes_are_a1111s(tmp_path):
    tensors = {"lora_unet_a.lora_down.weight": torch.arange(700_000, dtype=torch.float32).reshape(700, 1000),
               "lora_unet_a.alpha": torch.tensor(4.0)}
    metadata = with_file_hashes(tensors, {"ss_network_dim": "4", "modelspec.title": "x"})
    save_lora_file(tmp_path / "l.safetensors", tensors, metadata)
    data = (tmp_path / "l.safetensors").read_bytes()
    header = struct.unpack("<Q", data[:8])[0]
    _, stored = read_lora_file(tmp_path / "l.safetensors")
    assert stored["sshs_model_hash"] == hashlib.sha256(data[8 + header:]).hexdigest()
    # the legacy hash is of the file holding only the ss_* keys, as sd-scripts computes it
    from safetensors.torch import save

    training_only = save(tensors, {"ss_network_dim": "4"})
    assert stored["sshs_legacy_hash"] == hashlib.sha256(training_only[0x100000:0x110000]).hexdigest()[:8]


def test_base_model_hashes_of_a_single_file(tmp_path):
    model = tmp_path / "base.safetensors"
    model.write_bytes(bytes(range(256)) * 10_000)
    data = model.read_bytes()
    assert base_model_hashes(str(model)) == {
        "ss_sd_model_hash": hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8],
        "ss_new_sd_model_hash": hashlib.sha256(data).hexdigest(),
    }
    assert base_model_hashes(str(tmp_path)) == {} and base_model_hashes("someone/model") == {}


def test_values_and_keys_as_sd_scripts_writes_them(tmp_path):
    """train_network.py's metadata, rewritten: None for unset arguments, the optimizer's class
    path and its keyword arguments joined by commas, the VAE's keys only with a VAE, the
    validation and Huber keys, and model spec 1.0.1 filled from the [metadata] settings."""
    from engine.network.metadata import optimizer_class_path

    write_image(tmp_path / "img" / "1_x" / "a.png", (64, 64))
    vae = tmp_path / "vae.safetensors"
    vae.write_bytes(bytes(range(256)) * 5000)
    config = config_from_dict({
        "model": {"pretrained_model": "tiny", "vae": str(vae)},
        "optimizer": {"optimizer": "AdamW", "optimizer_args": "weight_decay=0.1 betas=0.9,0.99"},
        "metadata": {"title": "City", "author": "me", "description": "a city", "license": "CreativeML OpenRAIL-M",
                     "tags": "city, night", "trigger_phrase": "cty city", "usage_hint": "weight 0.8",
                     "training_comment": "v2"},
    })
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.ones(1))], weight_decay=0.1, betas=(0.9, 0.99))
    assert optimizer_class_path(optimizer) == "torch.optim.adamw.AdamW"  # sd-scripts: __module__ + "." + __name__
    dataset = scan_dataset(config, tmp_path)
    metadata = training_metadata(config, make_plan(config, tmp_path, dataset), dataset, model_name="m",
                                 session_id="s", started_at=0.0, epoch=1, step=1,
                                 optimizer_name=optimizer_class_path(optimizer), scheduler_name="cosine")
    assert metadata["ss_optimizer"] == "torch.optim.adamw.AdamW(weight_decay=0.1,betas=(0.9, 0.99))"
    for key in ("ss_clip_skip", "ss_max_token_length", "ss_min_snr_gamma", "ss_network_dropout",
                "ss_validation_seed", "ss_max_validation_steps", "ss_resize_interpolation"):
        assert metadata[key] == "None", key
    assert metadata["ss_num_validation_images"] == "0" and metadata["ss_validation_split"] == "0.0"
    assert metadata["ss_huber_scale"] == "1.0" and metadata["ss_training_comment"] == "v2"
    assert metadata["ss_vae_name"] == "vae.safetensors"
    data = vae.read_bytes()
    assert metadata["ss_vae_hash"] == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert metadata["ss_new_vae_hash"] == hashlib.sha256(data).hexdigest()
    assert metadata["modelspec.sai_model_spec"] == "1.0.1"
    assert {key: metadata[f"modelspec.{key}"] for key in ("title", "author", "description", "license", "tags",
                                                          "trigger_phrase", "usage_hint")} == {
        "title": "City", "author": "me", "description": "a city", "license": "CreativeML OpenRAIL-M",
        "tags": "city, night", "trigger_phrase": "cty city", "usage_hint": "weight 0.8"}
    # unset: sd-scripts leaves the keys out, the title falls back to the output name
    plain = metadata_for(config_from_dict({"model": {"pretrained_model": "tiny", "clip_skip": 2},
                                           "captions": {"max_token_length": 225}}), tmp_path)
    assert "ss_vae_name" not in plain and "modelspec.author" not in plain and plain["modelspec.title"] == "lora"
    assert plain["ss_clip_skip"] == "2" and plain["modelspec.encoder_layer"] == "2"
    assert plain["ss_max_token_length"] == "225"
    # relative-step Adafactor: sd-scripts fills in relative_step and names the schedule adafactor:<lr>
    adafactor = config_from_dict({"model": {"pretrained_model": "tiny"}, "optimizer": {"optimizer": "Adafactor"}})
    dataset = scan_dataset(adafactor, tmp_path)
    written = training_metadata(adafactor, make_plan(adafactor, tmp_path, dataset), dataset, model_name="m",
                                session_id="s", started_at=0.0, epoch=1, step=1,
                                optimizer_name="transformers.optimization.Adafactor", scheduler_name="adafactor")
    assert written["ss_optimizer"] == "transformers.optimization.Adafactor(relative_step=True)"
    assert written["ss_lr_scheduler"] == "adafactor:0.0001"
