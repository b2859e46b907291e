"""Plan numbers against hand-computed values (see tests/datasets.py: plan_dataset)."""
import json


from engine.dataset.buckets import BucketAssigner, BucketRules, bucket_resolutions
from engine.config.schema import TrainConfig, config_from_dict
from engine.dataset.folders import parse_folder_name, scan_dataset, upright_size
from engine.plan.training_plan import make_plan
from tests.datasets import plan_dataset, write_image
from tui.cli import main


def config_for(**sections) -> TrainConfig:
    data = {"model": {"pretrained_model": "tiny"}, "dataset": {"image_dir": "img"}}
    for key, values in sections.items():
        data.setdefault(key, {}).update(values)
    return config_from_dict(data)


def test_folder_names():
    assert parse_folder_name("10_city photo") == (10, "city photo")
    assert parse_folder_name("3_archway") == (3, "archway")
    assert parse_folder_name("city") is None
    assert parse_folder_name("_x") is None


def test_bucket_resolutions_match_sd_scripts():
    sizes = bucket_resolutions((512, 512), 256, 1024, 64)
    assert (512, 512) in sizes
    assert (640, 384) in sizes and (384, 640) in sizes
    assert (576, 448) in sizes and (1024, 256) in sizes
    assert all(w % 64 == 0 and h % 64 == 0 and w * h <= 512 * 512 for w, h in sizes)


def test_bucket_choice_by_closest_ratio():
    assigner = BucketAssigner(BucketRules((512, 512)))
    assert assigner.bucket_for(768, 512) == (640, 384)
    assert assigner.bucket_for(512, 768) == (384, 640)
    assert assigner.bucket_for(640, 480) == (576, 448)
    assert assigner.bucket_for(480, 640) == (448, 576)
    assert assigner.bucket_for(1000, 1000) == (512, 512)


def test_no_upscale_keeps_small_images_and_shrinks_large_ones():
    assigner = BucketAssigner(BucketRules((512, 512), no_upscale=True))
    assert assigner.bucket_for(300, 200) == (256, 192)
    width, height = assigner.bucket_for(2000, 1000)
    assert width * height <= 512 * 512 and width % 64 == 0 and height % 64 == 0
    assert abs(width / height - 2.0) < 0.25


def test_buckets_off_uses_the_resolution():
    assigner = BucketAssigner(BucketRules((512, 768), enabled=False))
    assert assigner.bucket_for(100, 5000) == (512, 768)


def test_exif_rotated_image_is_bucketed_upright(tmp_path):
    path = write_image(tmp_path / "phone.jpg", (640, 480), orientation=6)
    assert upright_size(path) == (480, 640)
    for orientation, expected in [(1, (640, 480)), (3, (640, 480)), (5, (480, 640)), (8, (480, 640))]:
        other = write_image(tmp_path / f"o{orientation}.jpg", (640, 480), orientation=orientation)
        assert upright_size(other) == expected


def test_plan_with_repeats_buckets_and_regularisation(tmp_path):
    plan_dataset(tmp_path)
    config = config_for(dataset={"reg_dir": "reg"}, training={"batch_size": 2, "epochs": 4})
    plan = make_plan(config, tmp_path)
    assert plan.images == 5
    assert plan.image_repeats == 36  # 3 x 10 + 2 x 3
    assert plan.reg_images == 2 and plan.reg_instances == 36  # balanced to the training count
    buckets = {(b.width, b.height): (b.count, b.batches) for b in plan.buckets}
    assert buckets == {
        (384, 640): (10, 5),
        (448, 576): (3, 2),  # the EXIF-rotated JPEG is portrait
        (512, 512): (46, 23),
        (576, 448): (3, 2),
        (640, 384): (10, 5),
    }
    assert plan.steps_per_epoch == 37
    assert plan.total_steps == 148 and plan.epochs == 4
    assert [c["step"] for c in plan.checkpoints] == [37, 74, 111, 148]
    assert any("misc" in problem and "prefix" in problem for problem in plan.problems)


def test_plan_with_accumulation_and_max_steps(tmp_path):
    plan_dataset(tmp_path)
    config = config_for(training={"batch_size": 2, "gradient_accumulation_steps": 2, "epochs": 3})
    plan = make_plan(config, tmp_path)
    assert plan.batches_per_epoch == 19  # 5 + 2 + 5 + 2 + 5
    assert plan.steps_per_epoch == 10
    assert plan.total_steps == 30
    capped = make_plan(config_for(training={"batch_size": 2, "gradient_accumulation_steps": 2, "max_steps": 25}), tmp_path)
    assert capped.total_steps == 25 and capped.epochs == 3
    assert capped.checkpoints[-1] == {"epoch": 3, "step": 25}


def test_captions_fall_back_to_class_tokens(tmp_path):
    plan_dataset(tmp_path)
    dataset = scan_dataset(config_for(), tmp_path)
    captions = {item.path.name: item.caption for item in dataset.items}
    assert captions["a.png"] == "city, street, night"
    assert captions["b.png"] == "city photo"
    assert captions["d.png"] == "archway"


def test_lora_file_size_for_sd15_rank(tmp_path):
    plan_dataset(tmp_path)
    plan = make_plan(config_for(network={"rank": 32, "alpha": 16.0}), tmp_path)
    # SD1.5 at rank 32: 25.5M-parameter LoRA files are the well-known ~38 MB (fp16) size
    assert 35_000_000 < plan.lora_file_bytes < 41_000_000


def test_plan_command_json(tmp_path, capsys):
    plan_dataset(tmp_path)
    config_path = tmp_path / "loradeck.toml"
    config_path.write_text('[model]\npretrained_model = "someone/tiny"\n[training]\nbatch_size = 2\nepochs = 2\n')
    assert main(["plan", str(config_path), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["images"] == 5 and data["image_repeats"] == 36
    assert data["steps_per_epoch"] == 19 and data["total_steps"] == 38 and data["epochs"] == 2
    assert {"width": 512, "height": 512, "count": 10, "batches": 5} in data["buckets"]


def test_plan_command_bad_config_is_one_line(tmp_path, capsys):
    config_path = tmp_path / "bad.toml"
    config_path.write_text('[model]\npretrained_model = "x"\n[network]\nrank = 8\nalpha = 16\n')
    assert main(["plan", str(config_path)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "network.alpha" in err and "above rank 8" in err


def test_ten_thousand_images_plan_without_decoding(tmp_path):
    folder = tmp_path / "img" / "1_many"
    source = write_image(tmp_path / "src.png", (96, 64))
    folder.mkdir(parents=True)
    data = source.read_bytes()
    for index in range(2000):
        (folder / f"{index:05}.png").write_bytes(data)
    plan = make_plan(config_for(dataset={"min_bucket_resolution": 64, "resolution": "512"}), tmp_path)
    assert plan.images == 2000


def test_dotfiles_are_not_images(tmp_path):
    plan_dataset(tmp_path)
    (tmp_path / "img" / "3_archway" / "._d.png").write_bytes(b"\x00\x05\x16\x07 resource fork")
    dataset = scan_dataset(config_for(), tmp_path)
    assert dataset.unreadable == []
    assert len(dataset.train_items) == 5


def test_no_upscale_small_image_is_cropped_at_native_size_like_sd_scripts(tmp_path):
    """sd-scripts' no-upscale bucket: an image within the area is not resized, only centre-
    cropped to its bucket (sides rounded down to the step), so the same pixels train."""
    import numpy as np
    from PIL import Image

    from engine.train.data import prepare_pixels, to_tensor

    pixels = np.random.default_rng(0).integers(0, 256, (200, 300, 3), dtype=np.uint8)
    (tmp_path / "img" / "1_x").mkdir(parents=True)
    Image.fromarray(pixels).save(tmp_path / "img" / "1_x" / "small.png")
    config = config_for(dataset={"bucket_no_upscale": True})
    [item] = scan_dataset(config, tmp_path).items
    assert item.bucket == (256, 192) and item.resized == (300, 200)
    expected = to_tensor(Image.fromarray(pixels).crop((22, 4, 22 + 256, 4 + 192)))  # (300-256)//2, (200-192)//2
    assert np.array_equal(prepare_pixels(item, flip=False, hue_shift=0, rng_crop=None).numpy(), expected.numpy())
    # without no-upscale the image is scaled to cover its bucket as before
    [plain] = scan_dataset(config_for(), tmp_path).items
    assert plain.resized is None
