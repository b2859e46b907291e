"""A Kohya dataset TOML (sd-scripts' --dataset_config) defines the same images and repeats in
loradeck, and the plan's numbers are sd-scripts' for it."""
import json
import math

import pytest

from engine.config.kohya_import import import_kohya
from engine.config.schema import config_from_dict
from engine.dataset.folders import scan_dataset
from engine.errors import LoradeckError
from engine.plan.training_plan import make_plan
from tests.datasets import write_caption, write_image
from tui.cli import main

DATASET_TOML = """
[general]
shuffle_caption = true
keep_tokens = 1
caption_extension = ".txt"

[[datasets]]
resolution = 512
batch_size = 2
enable_bucket = true

  [[datasets.subsets]]
  image_dir = "photos/city"
  num_repeats = 10
  class_tokens = "cty city"

  [[datasets.subsets]]
  image_dir = "photos/night"
  num_repeats = 3
  caption_extension = ".caption"

  [[datasets.subsets]]
  image_dir = "reg"
  is_reg = true
  class_tokens = "city"
"""


def write_toml_dataset(root):
    for index in range(4):  # 4 square city photos, two with captions
        image = write_image(root / "photos" / "city" / f"{index}.png", (512, 512))
        if index < 2:
            write_caption(image, "cty city, street")
    for index in range(2):  # 2 wide night photos with .caption files (a .txt beside must not be read)
        image = write_image(root / "photos" / "night" / f"{index}.jpg", (768, 512))
        write_caption(image, "night, neon", extension=".caption")
        write_caption(image, "wrong caption")
    for index in range(5):
        write_image(root / "reg" / f"{index}.png", (512, 512))
    (root / "dataset.toml").write_text(DATASET_TOML)
    return root / "dataset.toml"


def sd_scripts_numbers(batch_size):
    """sd-scripts' DreamBooth dataset for DATASET_TOML: images x num_repeats per subset; the 5
    regularisation images (1 repeat each) get one more repeat at a time, stopping as soon as
    their count reaches the training count; each bucket is batched on its own."""
    square = 4 * 10
    wide = 2 * 3
    train = square + wide
    reg = train
    batches = math.ceil((square + reg) / batch_size) + math.ceil(wide / batch_size)
    return train, reg, batches


def config_with_toml(**dataset):
    return config_from_dict({"model": {"pretrained_model": "x"},
                             "dataset": {"dataset_config": "dataset.toml", **dataset},
                             "captions": {"shuffle_caption": True, "keep_tokens": 1},
                             "training": {"batch_size": 2, "epochs": 3}})


def test_subsets_train_their_images_with_their_repeats_and_captions(tmp_path):
    write_toml_dataset(tmp_path)
    config = config_with_toml()
    dataset = scan_dataset(config, tmp_path)
    by_folder = {folder.name: folder for folder in dataset.folders}
    assert (by_folder["city"].repeats, by_folder["city"].images, by_folder["city"].class_tokens) == (10, 4, "cty city")
    assert (by_folder["night"].repeats, by_folder["night"].captioned) == (3, 2)
    assert by_folder["reg"].is_reg and by_folder["reg"].repeats == 1
    captions = {item.path.name: item.caption for item in dataset.items if item.folder != "reg"}
    assert captions["0.png"] == "cty city, street" and captions["3.png"] == "cty city"  # class tokens
    assert captions["0.jpg"] == "night, neon"  # the subset's own caption extension

    plan = make_plan(config, tmp_path, dataset)
    train, reg, batches = sd_scripts_numbers(batch_size=2)
    assert (plan.images, plan.image_repeats, plan.reg_images, plan.reg_instances) == (6, train, 5, reg)
    assert plan.batches_per_epoch == batches and plan.steps_per_epoch == batches
    assert plan.total_steps == 3 * batches


def test_a_setting_that_differs_from_the_config_is_refused_in_one_line(tmp_path, capsys):
    write_toml_dataset(tmp_path)
    with pytest.raises(LoradeckError, match="dataset.toml sets batch_size = 2 but training.batch_size is 1"):
        scan_dataset(config_from_dict({"model": {"pretrained_model": "x"},
                                       "dataset": {"dataset_config": "dataset.toml"},
                                       "captions": {"shuffle_caption": True, "keep_tokens": 1}}), tmp_path)
    (tmp_path / "bad.toml").write_text(DATASET_TOML.replace('  num_repeats = 3\n', '  num_repeats = 3\n  flip_aug = true\n')
                                       .replace("[general]", "[general]\nflip_aug = false"))
    with pytest.raises(LoradeckError, match="flip_aug = True differs from False"):
        scan_dataset(config_with_toml(dataset_config="bad.toml"), tmp_path)
    (tmp_path / "odd.toml").write_text(DATASET_TOML.replace("[general]", "[general]\ncaption_prefix = 'x'"))
    config = tmp_path / "c.toml"
    config.write_text('[model]\npretrained_model = "someone/x"\n[dataset]\ndataset_config = "odd.toml"\n')
    assert main(["plan", str(config)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "caption_prefix cannot be trained by loradeck" in err


def test_import_reads_the_toml_and_plans_sd_scripts_numbers(tmp_path, capsys):
    write_toml_dataset(tmp_path)
    gui = {"LoRA_type": "Standard", "pretrained_model_name_or_path": "someone/x", "dataset_config": "dataset.toml",
           "train_data_dir": "", "train_batch_size": 1, "shuffle_caption": False, "epoch": 3,
           "max_resolution": "768,768", "network_dim": 8, "network_alpha": 8}
    result = import_kohya(gui, json_folder=tmp_path)
    config = result.config
    assert config.dataset.dataset_config == str(tmp_path / "dataset.toml")  # found beside the JSON: the GUI's folder
    assert config.training.batch_size == 2 and config.captions.shuffle_caption and config.captions.keep_tokens == 1
    assert config.resolution_size == (512, 512)
    assert any(note.startswith("dataset_config dataset.toml: 3 subsets") for note in result.notes)
    assert ("dataset_config batch_size", "training.batch_size") in result.mapped
    (tmp_path / "kohya.json").write_text(json.dumps(gui))
    assert main(["import-kohya", str(tmp_path / "kohya.json"), "-o", str(tmp_path / "loradeck.toml")]) == 0
    capsys.readouterr()
    assert main(["plan", str(tmp_path / "loradeck.toml"), "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    train, reg, batches = sd_scripts_numbers(batch_size=2)
    assert (plan["image_repeats"], plan["reg_instances"], plan["steps_per_epoch"]) == (train, reg, batches)
