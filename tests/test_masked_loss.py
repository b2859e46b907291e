"""sd-scripts' masked loss: the loss weighted per pixel by each image's conditioning image
(a dataset TOML subset's conditioning_data_dir) or alpha (dataset.alpha_mask). The
objective's part is checked per family against sd-scripts' apply_masked_loss and
conditional_loss rewritten below; the masks the data gives, their pairing and refusals, a
run, and the import from the Kohya GUI's own masked-loss config."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.schema import config_from_dict
from tests.conftest import small_run_settings
from tests.datasets import write_caption
from tests.test_objective_loss_settings import Args, flow_matching, objective_of, sd_scripts_all_snr

GUI_CONFIGS = Path(__file__).parent / "fixtures" / "kohya_gui" / "test" / "config"


# ------------------------------------------------------------------ sd-scripts, rewritten


def sd_scripts_apply_masked_loss(loss, batch):
    """custom_train_functions.apply_masked_loss."""
    if "conditioning_images" in batch:
        mask_image = batch["conditioning_images"].to(dtype=loss.dtype)[:, 0].unsqueeze(1)  # the red channel
        mask_image = mask_image / 2 + 0.5  # from [-1, 1]
    elif batch.get("alpha_masks") is not None:
        mask_image = batch["alpha_masks"].to(dtype=loss.dtype).unsqueeze(1)
    else:
        return loss
    mask_image = torch.nn.functional.interpolate(mask_image, size=loss.shape[2:], mode="area")
    return loss * mask_image


def sd_scripts_masked_step_loss(args, scheduler, prediction, target, timesteps, batch, min_snr=True):
    """train_network.process_batch: conditional_loss (l2 / huber with a constant threshold),
    the mask, the mean per example, min-SNR (post_process_loss), the batch mean."""
    if args.loss_type == "huber":
        c = torch.full((timesteps.shape[0],), args.huber_c * args.huber_scale).view(-1, 1, 1, 1)
        loss = 2 * c * (torch.sqrt((prediction - target) ** 2 + c ** 2) - c)
    else:
        loss = torch.nn.functional.mse_loss(prediction, target, reduction="none")
    loss = sd_scripts_apply_masked_loss(loss, batch)
    loss = loss.mean([1, 2, 3])
    if args.min_snr_gamma and min_snr:  # FluxNetworkTrainer.post_process_loss leaves it out
        snr = torch.stack([sd_scripts_all_snr(scheduler)[t] for t in timesteps])
        loss = loss * torch.minimum(snr, torch.full_like(snr, args.min_snr_gamma)) / snr
    return loss.mean()


@pytest.mark.parametrize("settings", [{}, {"loss_type": "huber", "huber_schedule": "constant", "huber_c": 0.3,
                                           "min_snr_gamma": 5.0}], ids=["l2", "huber-min-snr"])
@pytest.mark.parametrize("source", ["conditioning", "alpha"])
def test_masked_loss_is_sd_scripts(family, family_model_dir, settings, source):
    objective, config = objective_of(family, family_model_dir, masked_loss=True, **settings)
    generator = torch.Generator().manual_seed(3)
    prediction, target = torch.randn(3, 4, 8, 8, generator=generator), torch.randn(3, 4, 8, 8, generator=generator)
    timesteps = torch.tensor([5, 400, 990])
    # pixel masks at 8x the latent size (uneven, so the area average matters); one all ones
    mask = torch.rand(3, 64, 64, generator=generator)
    mask[2] = 1.0
    theirs_batch = ({"conditioning_images": (mask * 2 - 1).unsqueeze(1).expand(-1, 3, -1, -1)}
                    if source == "conditioning" else {"alpha_masks": mask})
    if flow_matching(objective):  # sigmas; sd-scripts' Flux loss has no min-SNR weighting
        timesteps = timesteps / 1000
    ours = objective.loss(prediction, target, timesteps, {"loss_mask": mask})
    theirs = sd_scripts_masked_step_loss(Args(config.training), getattr(objective, "scheduler", None), prediction,
                                         target, timesteps, theirs_batch, min_snr=not flow_matching(objective))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=1e-7)
    unmasked = objective.loss(prediction, target, timesteps, {})
    assert not torch.isclose(ours, unmasked)
    ones = objective.loss(prediction, target, timesteps, {"loss_mask": torch.ones(3, 64, 64)})
    torch.testing.assert_close(ones, unmasked)


# ------------------------------------------------------------------ the masks the data gives


def gradient(size, *, alpha=None) -> Image.Image:
    """A smooth image (so that resampling filters barely differ): red across, green down."""
    width, height = size
    x = np.linspace(0, 255, width)[None, :].repeat(height, 0)
    y = np.linspace(0, 255, height)[:, None].repeat(width, 1)
    rgb = np.stack([x, y, np.full_like(x, 90)], axis=-1).astype(np.uint8)
    if alpha is None:
        return Image.fromarray(rgb, "RGB")
    return Image.fromarray(np.concatenate([rgb, alpha[..., None]], axis=-1).astype(np.uint8), "RGBA")


def toml_dataset(root: Path, sizes: dict[str, tuple[int, int]], masks: dict[str, Image.Image],
                 **dataset) -> dict:
    """A dataset TOML with one subset whose conditioning folder holds `masks`; the config."""
    for name, size in sizes.items():
        path = root / "img" / f"{name}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        gradient(size).save(path)
        write_caption(path, "sks")
    (root / "masks").mkdir(exist_ok=True)
    for name, mask in masks.items():
        mask.save(root / "masks" / name)
    (root / "data.toml").write_text('[[datasets]]\n[[datasets.subsets]]\nimage_dir = "img"\nnum_repeats = 1\n'
                                    'conditioning_data_dir = "masks"\n')
    data = small_run_settings(root)
    # 96² area: the wide image is scaled and cropped to its bucket, the small square keeps its own size
    data["dataset"] = {"dataset_config": "data.toml", "resolution": "96", "min_bucket_resolution": 64,
                       "max_bucket_resolution": 128, "bucket_step": 16, "bucket_no_upscale": True, **dataset}
    data["training"]["masked_loss"] = True
    return data


def examples(config, root, epochs=6):
    from engine.dataset.folders import scan_dataset
    from engine.train.data import ExampleRules, TrainingImages

    class NoText:
        def example(self, caption):
            return {}

    dataset = scan_dataset(config, root)
    images = TrainingImages(dataset.training_instances(), ExampleRules.from_config(config), NoText())
    return dataset, [images[(epoch, index)] for epoch in range(epochs) for index in range(len(images))]


def test_conditioning_masks_pair_by_name_and_follow_their_image(tmp_path):
    # each image's conditioning image is the image itself: its mask is its own red channel
    sizes = {"wide": (160, 96), "square": (64, 64)}
    data = toml_dataset(tmp_path, sizes, {f"{name}.png": gradient(size) for name, size in sizes.items()})
    data["augmentation"] = {"flip": True, "random_crop": True}
    config = config_from_dict(data)
    dataset, made = examples(config, tmp_path)
    assert {item.path.name: item.mask_path.name for item in dataset.items} == {"wide.png": "wide.png",
                                                                              "square.png": "square.png"}
    flipped_seen = set()
    for example in made:
        mask, pixels = example["loss_mask"], example["pixels"]
        assert mask.shape == pixels.shape[1:] and mask.dtype == torch.float32
        # the mask stays on its pixels through the scale, the crop and the flip
        torch.testing.assert_close(mask, (pixels[0] + 1) / 2, atol=0.03, rtol=0)
        flipped_seen.add(bool(mask[0, 0] > mask[0, -1]))
    assert flipped_seen == {True, False}
    square = next(example for example in made if example["path"].endswith("square.png"))
    exact = torch.from_numpy(np.asarray(gradient((64, 64)).getchannel("R"), dtype=np.float32) / 255)
    assert torch.equal(square["loss_mask"], exact) or torch.equal(square["loss_mask"], exact.flip(1))


def test_alpha_masks_are_the_images_transparency(tmp_path):
    alpha = np.zeros((64, 64), dtype=np.uint8)
    alpha[:, :40] = 255
    alpha[:, 40:48] = 128
    folder = tmp_path / "img" / "1_sks"
    folder.mkdir(parents=True)
    gradient((64, 64), alpha=alpha).save(folder / "cut.png")
    gradient((64, 64)).save(folder / "plain.png")
    data = small_run_settings(tmp_path)
    data["dataset"]["alpha_mask"] = True
    config = config_from_dict(data)
    _, made = examples(config, tmp_path, epochs=1)
    by_name = {Path(example["path"]).name: example for example in made}
    assert torch.equal(by_name["cut.png"]["loss_mask"], torch.from_numpy(alpha.astype(np.float32) / 255))
    assert torch.equal(by_name["plain.png"]["loss_mask"], torch.ones(64, 64))
    # the picture itself is composited onto white, as loradeck always shows a transparent image
    assert float(by_name["cut.png"]["pixels"][:, :, 50:].min()) == 1.0
    data["dataset"]["alpha_mask"] = False
    _, made = examples(config_from_dict(data), tmp_path, epochs=1)
    assert all("loss_mask" not in example for example in made)  # no masks: nothing extra per example


@pytest.mark.parametrize("case", ["missing", "extra", "size", "switch off"])
def test_conditioning_folders_are_refused_in_one_line(tmp_path, case, capsys, tiny_model_dir):
    from engine.config.schema import save_config
    from tui.cli import main

    sizes = {"a": (64, 64), "b": (64, 64)}
    masks = {"a.png": gradient((64, 64)), "b.jpg": gradient((64, 64)).convert("L")}
    if case == "missing":
        del masks["b.jpg"]
    elif case == "extra":
        masks["c.png"] = gradient((64, 64))
    elif case == "size":
        masks["b.jpg"] = gradient((64, 48))
    data = toml_dataset(tmp_path, sizes, masks)
    data["model"]["pretrained_model"] = str(tiny_model_dir)
    data["training"]["masked_loss"] = case != "switch off"
    save_config(config_from_dict(data), tmp_path / "run.toml")
    assert main(["plan", str(tmp_path / "run.toml")]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "Traceback" not in error
    expected = {"missing": "no conditioning image for 1 image(s) of the subset (b.png)",
                "extra": "1 conditioning image(s) with no image of the same name (c.png)",
                "size": "b.jpg: 64x48, its image b.png 64x64",
                "switch off": "is read for the masked loss only: turn on training.masked_loss"}[case]
    assert expected in error


def test_plan_says_when_a_masked_loss_has_no_mask(tmp_path, tiny_dataset, tiny_model_dir):
    from engine.plan.training_plan import make_plan

    data = small_run_settings(tiny_model_dir)
    data["training"]["masked_loss"] = True
    notes = make_plan(config_from_dict(data), tiny_dataset).problems
    assert any("training.masked_loss is on but no image has a mask" in note for note in notes)
    data["dataset"]["alpha_mask"] = True
    assert not any("masked_loss" in note for note in make_plan(config_from_dict(data), tiny_dataset).problems)


def test_a_run_on_fully_masked_images_learns_nothing(tmp_path, family_run):
    """Every pixel transparent: the masked loss is 0 at every step, so nothing moves."""
    from engine.network.lora import read_lora_file
    from engine.run.events import read_events
    from engine.train.loop import train

    for index in range(2):
        path = tmp_path / "img" / "2_sks" / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        gradient((64, 64), alpha=np.zeros((64, 64), dtype=np.uint8)).save(path)
    run = family_run(tmp_path, "masked", training={"epochs": 1, "masked_loss": True},
                     dataset={"alpha_mask": True})
    assert train(run.path) == 0
    steps = [event for event in read_events(run.events) if event["type"] == "step"]
    assert steps and all(event["loss"] == 0.0 for event in steps)
    tensors, metadata = read_lora_file(run.checkpoints / "masked.safetensors")
    ups = [value for key, value in tensors.items() if key.endswith("lora_up.weight")]
    assert ups and all(not value.any() for value in ups)  # B stays at its zeros: the LoRA changes nothing
    assert metadata["ss_masked_loss"] == "True"


# ------------------------------------------------------------------ the Kohya GUI


def test_the_guis_masked_loss_config_imports_and_exports(tmp_path):
    from engine.config.kohya_export import export_kohya
    from engine.config.kohya_import import import_kohya, import_kohya_file

    result = import_kohya_file(GUI_CONFIGS / "locon-AdamW8bit-masked_loss-toml.json")
    assert result.config.training.masked_loss
    assert not any(note.startswith("masked_loss") for note in result.notes) and "masked_loss" not in result.ignored
    exported = export_kohya(result.config, tmp_path)
    assert exported.gui["masked_loss"] is True and "--masked_loss" in exported.command_line

    data = json.loads((GUI_CONFIGS / "locon-AdamW8bit-masked_loss-toml.json").read_text())
    data.update(additional_parameters="--alpha_mask", dataset_config="")
    config = import_kohya(data).config
    assert config.dataset.alpha_mask
    exported = export_kohya(config, tmp_path)
    assert exported.gui["additional_parameters"] == "--alpha_mask" and "--alpha_mask" in exported.command_line
    assert import_kohya(exported.gui).config.dataset.alpha_mask


def test_masks_are_a_dataset_toml_setting(tmp_path):
    from engine.dataset.kohya_toml import read_dataset_toml

    (tmp_path / "data.toml").write_text('[general]\nalpha_mask = true\n[[datasets]]\n[[datasets.subsets]]\n'
                                        'image_dir = "img"\nconditioning_data_dir = \'.\\masks\'\n')
    toml = read_dataset_toml(tmp_path / "data.toml")
    assert toml.settings["dataset.alpha_mask"] is True
    assert toml.subsets[0].conditioning_data_dir == tmp_path / "masks"  # the GUI's Windows-style path too
