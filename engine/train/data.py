"""Training examples: pixels (or cached latents) and caption tokens, one bucket per batch.

Every random choice an example makes (caption shuffle and dropout, flip, colour shift,
crop position) comes from a `random.Random` seeded by (seed, epoch, instance index), and
the batch order from one seeded by (seed, epoch). So a run is reproducible with any
number of loader workers, and a resumed run sees exactly the batches it would have seen.

    check_images(paths) -> [(path, message)]        the pre-flight refusal list
    load_rgb(path) -> PIL image                      upright, 8-bit RGB, whatever the file
    TrainingImages(instances, rules, captions, ...)  torch Dataset, index -> example dict
    EpochBatchSampler(instances, batch_size, seed)   batches of one bucket, per epoch
    make_loader(...) / collate_examples(...)
"""
from __future__ import annotations

import hashlib
import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps

from engine.dataset.buckets import epoch_batches
from engine.train.masks import loss_mask

HUE_SHIFT = 11  # of 256 hue steps, about ±16°, as sd-scripts' colour augmentation
PREFETCH_BATCHES = 4  # per loader worker: covers a slow image (a big PNG) without an empty queue


# --------------------------------------------------------------------------- pre-flight check


def _check_one(path: Path) -> str | None:
    try:
        with Image.open(path) as image:
            image.verify()  # structure and checksums (PNG CRCs), without decoding
        with Image.open(path) as image:
            if image.format == "JPEG":
                # JPEG has no checksums: decode at 1/8 scale (fast) to catch truncation
                image.draft("RGB", (max(1, image.width // 8), max(1, image.height // 8)))
            image.load()
    except Exception as error:  # PIL raises many types for damaged files; all mean "unreadable"
        return f"{path}: cannot read image ({error})"
    return None


def check_images(paths: Sequence[Path], workers: int = 4) -> list[tuple[Path, str]]:
    """Images that would fail during training, as (path, message); decoding runs in threads."""
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = list(pool.map(_check_one, paths))
    return [(path, message) for path, message in zip(paths, results) if message]


# --------------------------------------------------------------------------- pixels


def load_rgb(path: Path) -> Image.Image:
    """The image as every viewer shows it: EXIF orientation applied, 8-bit RGB.

    Transparency is composited onto white (not dropped, which turns it black), 16-bit
    images are scaled down (not clipped), CMYK goes through its ICC profile when it has one.
    """
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    mode = image.mode
    if mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if mode.startswith("I;16") or values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "F":
        values = np.asarray(image, dtype=np.float64)
        values = values * 255.0 if values.max() <= 1.0 else values
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
    elif mode == "CMYK" and image.info.get("icc_profile"):
        image = _cmyk_to_srgb(image)
    if image.mode == "P" or image.mode in ("LA", "La", "PA", "RGBa") or "transparency" in image.info:
        image = image.convert("RGBA")
    if image.mode == "RGBA":
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image)
    return image.convert("RGB") if image.mode != "RGB" else image


def _cmyk_to_srgb(image: Image.Image) -> Image.Image:
    import io

    from PIL import ImageCms

    try:
        source = ImageCms.ImageCmsProfile(io.BytesIO(image.info["icc_profile"]))
        return ImageCms.profileToProfile(image, source, ImageCms.createProfile("sRGB"), outputMode="RGB")
    except (ImageCms.PyCMSError, OSError):
        return image.convert("RGB")


def bucket_crop(image_size: tuple[int, int], bucket: tuple[int, int], rng: random.Random | None,
                resized: tuple[int, int] | None = None) -> tuple[tuple[int, int], int, int]:
    """(scaled size, left, top): the image scaled to cover the bucket keeping its aspect
    ratio (or to `resized`, sd-scripts' size for no-upscale buckets: an image smaller than
    the area is cropped at its native size), and where the bucket is cut from it (centre,
    or random with rng)."""
    (image_width, image_height), (width, height) = image_size, bucket
    if resized is not None and resized[0] >= width and resized[1] >= height:
        size = tuple(resized)
    else:
        scale = max(width / image_width, height / image_height)
        size = (max(width, round(image_width * scale)), max(height, round(image_height * scale)))
    spare_x, spare_y = size[0] - width, size[1] - height
    left = rng.randint(0, spare_x) if rng else spare_x // 2
    top = rng.randint(0, spare_y) if rng else spare_y // 2
    return size, left, top


def fit_to_bucket(image: Image.Image, bucket: tuple[int, int], rng: random.Random | None,
                  resized: tuple[int, int] | None = None) -> Image.Image:
    """Scale to cover the bucket keeping the aspect ratio (or to `resized`), then crop
    (centre, or random with rng), as `bucket_crop` places it."""
    width, height = bucket
    size, left, top = bucket_crop(image.size, bucket, rng, resized)
    if size != image.size:
        image = image.resize(size, Image.Resampling.LANCZOS)
    return image.crop((left, top, left + width, top + height))


def size_conditioning(item, crop_seed: float | None, flip: bool) -> dict[str, torch.Tensor]:
    """Per-image numbers for a family with size conditioning (SDXL's `time_ids`), each
    (height, width)-ordered: the image's own size, the
    top-left of the crop the bucket fit applies (mirrored with the image when flipped, as
    sd-scripts does) and the bucket's size. Computed from the image's header size and the
    same crop draw `prepare_pixels` makes, so cached latents get the same numbers."""
    width, height = item.bucket
    size, left, top = bucket_crop((item.width, item.height), item.bucket,
                                  random.Random(crop_seed) if crop_seed is not None else None,
                                  getattr(item, "resized", None))
    if flip:
        left = size[0] - left - width
    return {
        "original_size": torch.tensor([item.height, item.width], dtype=torch.float32),
        "crop_top_left": torch.tensor([top, left], dtype=torch.float32),
        "target_size": torch.tensor([height, width], dtype=torch.float32),
    }


def shift_hue(image: Image.Image, shift: int) -> Image.Image:
    hue, saturation, value = image.convert("HSV").split()
    hue = hue.point(lambda h: (h + shift) % 256)
    return Image.merge("HSV", (hue, saturation, value)).convert("RGB")


def to_tensor(image: Image.Image) -> torch.Tensor:
    """(3, H, W) float32 in [-1, 1], the VAE's input range."""
    array = np.asarray(image, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(array.transpose(2, 0, 1).copy())


def prepare_pixels(item, *, flip: bool, hue_shift: int, rng_crop: random.Random | None) -> torch.Tensor:
    image = fit_to_bucket(load_rgb(item.path), item.bucket, rng_crop, getattr(item, "resized", None))
    if hue_shift:
        image = shift_hue(image, hue_shift)
    if flip:
        image = ImageOps.mirror(image)
    return to_tensor(image)


# --------------------------------------------------------------------------- captions


def _tags(text: str) -> list[str]:
    """The non-empty comma-separated tags of `text`, stripped."""
    return [tag.strip() for tag in text.split(",") if tag.strip()]


def process_caption(caption: str, rng: random.Random, *, shuffle: bool, keep_tokens: int, dropout: float,
                    tag_dropout: float = 0.0, drop_this_epoch: bool = False, separator: str = "") -> str:
    """sd-scripts' process_caption (its random draws, in its order): drop the whole caption
    with probability `dropout` or in a dropped epoch; else its first line, and when shuffling
    or dropping tags, the comma-separated tags split into kept ones (the first `keep_tokens`,
    or those before `separator`, and after a second one) and the rest, which are shuffled,
    then each dropped with probability `tag_dropout`."""
    dropped = dropout > 0 and rng.random() < dropout
    if dropped or drop_this_epoch:
        return ""
    caption = caption.split("\n")[0]
    if not (shuffle or tag_dropout > 0):
        return caption
    suffix: list[str] = []
    if separator and separator in caption:
        fixed_part, flex_part = caption.split(separator, 1)
        if separator in flex_part:
            flex_part, suffix_part = flex_part.split(separator, 1)
            suffix = _tags(suffix_part)
        fixed, flex = _tags(fixed_part), _tags(flex_part)
    else:
        tags = [tag.strip() for tag in caption.strip().split(",")]
        fixed, flex = (tags[:keep_tokens], tags[keep_tokens:]) if keep_tokens > 0 else ([], tags)
    if shuffle:
        rng.shuffle(flex)
    if tag_dropout > 0:
        flex = [tag for tag in flex if rng.random() >= tag_dropout]
    return ", ".join(fixed + flex + suffix)


# --------------------------------------------------------------------------- latent cache


def latent_key(item, model_name: str) -> str:
    """Changes when the file, its bucket or the VAE changes, so a stale latent is never used."""
    stat = item.path.stat()
    text = f"{item.path.resolve()}|{stat.st_mtime_ns}|{stat.st_size}|{item.bucket}|{model_name}"
    resized = getattr(item, "resized", None)
    if resized is not None:
        text += f"|{resized}"  # no-upscale framing: other pixels in the same bucket
    return hashlib.sha1(text.encode()).hexdigest()


class LatentCache:
    """Scaled VAE latents per image (and of its mirror image when flip is on).

    In memory, or on disk as `<folder>/<key>.safetensors` so a resumed run reuses them.
    Latents are the posterior's mode (its mean), not a sample: cached and uncached
    training then see the same numbers.
    """

    def __init__(self, model_name: str, folder: Path | None = None):
        self.model_name = model_name
        self.folder = folder
        self.memory: dict[Path, dict[str, torch.Tensor]] = {}

    def _file(self, item) -> Path:
        return self.folder / f"{latent_key(item, self.model_name)}.safetensors"

    def get(self, item, flipped: bool) -> torch.Tensor:
        name = "flipped" if flipped else "latents"
        if self.folder is None:
            return self.memory[item.path][name]
        from safetensors.torch import load_file

        return load_file(str(self._file(item)))[name]

    def has(self, item) -> bool:
        return item.path in self.memory if self.folder is None else self._file(item).exists()

    def fill(
        self, items: Sequence, vae, *, batch_size: int, with_flipped: bool,
        on_failure: Callable[[Path, str], None], on_progress: Callable[[int, int], None] | None = None,
    ) -> set[Path]:
        """Encode every item not cached yet, batched by bucket; returns the paths that failed."""
        from engine.atomic import atomic_path

        todo = [item for item in items if not self.has(item)]
        failed: set[Path] = set()
        by_bucket: dict[tuple[int, int], list] = {}
        for item in todo:
            by_bucket.setdefault(item.bucket, []).append(item)
        done = 0
        for bucket_items in by_bucket.values():
            for start in range(0, len(bucket_items), batch_size):
                batch, pixels, mirrored = [], [], []
                for item in bucket_items[start : start + batch_size]:
                    try:
                        pixels.append(prepare_pixels(item, flip=False, hue_shift=0, rng_crop=None))
                        if with_flipped:
                            mirrored.append(torch.flip(pixels[-1], dims=[2]))
                        batch.append(item)
                    except Exception as error:  # one bad image must not stop the caching
                        failed.add(item.path)
                        on_failure(item.path, f"{item.path}: cannot read image ({error}); skipped")
                if batch:
                    latents = encode_pixels(vae, torch.stack(pixels))
                    flipped = encode_pixels(vae, torch.stack(mirrored)) if with_flipped else None
                    for index, item in enumerate(batch):
                        entry = {"latents": latents[index].float().cpu().contiguous()}
                        if flipped is not None:
                            entry["flipped"] = flipped[index].float().cpu().contiguous()
                        if self.folder is None:
                            self.memory[item.path] = entry
                        else:
                            from safetensors.torch import save_file

                            with atomic_path(self._file(item)) as temp:
                                save_file(entry, str(temp))
                done += len(bucket_items[start : start + batch_size])
                if on_progress:
                    on_progress(done, len(todo))
        return failed


@torch.no_grad()
def encode_pixels(vae, pixels: torch.Tensor) -> torch.Tensor:
    """Latents of a (B, 3, H, W) batch in [-1, 1], on the VAE's device: the posterior's mode,
    shifted and scaled as the VAE's config says (Flux's 16-channel VAE has a shift, SD's none)."""
    pixels = pixels.to(vae.device, dtype=vae.dtype)
    latents = vae.encode(pixels).latent_dist.mode()
    shift = getattr(vae.config, "shift_factor", None)
    if shift:
        latents = latents - shift
    return latents * vae.config.scaling_factor


# --------------------------------------------------------------------------- dataset and batches


@dataclass(frozen=True)
class ExampleRules:
    """What the dataset does to each example, from the config."""

    seed: int
    shuffle_caption: bool
    keep_tokens: int
    caption_dropout: float
    flip: bool
    color: bool
    random_crop: bool
    size_conditioning: bool = False  # the family's: each example carries its size and crop
    tag_dropout: float = 0.0
    dropout_every_n_epochs: int = 0
    keep_tokens_separator: str = ""
    loss_masks: bool = False  # each example carries its loss mask (engine.train.masks)
    alpha_mask: bool = False  # ... from the image's alpha when it has no conditioning image

    @classmethod
    def from_config(cls, config, size_conditioning: bool = False) -> "ExampleRules":
        return cls(
            seed=config.training.seed,
            shuffle_caption=config.captions.shuffle_caption,
            keep_tokens=config.captions.keep_tokens,
            caption_dropout=config.captions.caption_dropout_rate,
            flip=config.augmentation.flip,
            color=config.augmentation.color,
            random_crop=config.augmentation.random_crop,
            size_conditioning=size_conditioning,
            tag_dropout=config.captions.caption_tag_dropout_rate,
            dropout_every_n_epochs=config.captions.caption_dropout_every_n_epochs,
            keep_tokens_separator=config.captions.keep_tokens_separator,
            **mask_rules(config),
        )

    @classmethod
    def fixed(cls, config, size_conditioning: bool = False) -> "ExampleRules":
        """Every example as it is: captions whole and unshuffled, no flip, colour or random
        crop (validation scores the same images the same way every time)."""
        return cls(seed=config.training.seed, shuffle_caption=False, keep_tokens=0, caption_dropout=0.0, flip=False,
                   color=False, random_crop=False, size_conditioning=size_conditioning, **mask_rules(config))


def mask_rules(config) -> dict[str, bool]:
    """sd-scripts masks the loss with `masked_loss`, and with alpha masks whenever they are on."""
    return {"loss_masks": config.training.masked_loss or config.dataset.alpha_mask,
            "alpha_mask": config.dataset.alpha_mask}


class TrainingImages(torch.utils.data.Dataset):
    """One example per training instance (repeats included).

    An index is an instance number (the epoch is `self.epoch`) or an (epoch, instance)
    pair, which is what `EpochBatchSampler` yields: loader workers that live across
    epochs then still draw each epoch's augmentation, without being told the epoch.
    `captions` says what an example carries for its caption (the family's token ids, or
    its text encoders' cached outputs: engine.model.family.CaptionTensors).
    """

    def __init__(self, instances: Sequence, rules: ExampleRules, captions, latents: LatentCache | None = None,
                 skip: set[Path] | None = None):
        self.instances = list(instances)
        self.rules = rules
        self.captions = captions
        self.latents = latents
        self.skip = skip or set()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch  # accelerate's loader calls this before each pass

    def __len__(self) -> int:
        return len(self.instances)

    def __getitem__(self, index: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = index if isinstance(index, tuple) else (self.epoch, index)
        item = self.instances[index]
        rules = self.rules
        rng = random.Random(f"{rules.seed}:{epoch}:{index}")
        flip = rules.flip and rng.random() < 0.5
        hue_shift = rng.randint(-HUE_SHIFT, HUE_SHIFT) if rules.color else 0
        crop_seed = rng.random() if rules.random_crop else None
        crop_rng = random.Random(crop_seed) if crop_seed is not None else None
        every = rules.dropout_every_n_epochs
        caption = process_caption(
            item.caption, rng, shuffle=rules.shuffle_caption, keep_tokens=rules.keep_tokens,
            dropout=rules.caption_dropout, tag_dropout=rules.tag_dropout,
            drop_this_epoch=every > 0 and (epoch + 1) % every == 0,  # sd-scripts counts epochs from 1
            separator=rules.keep_tokens_separator,
        )
        if item.path in self.skip:
            return {"failed": (str(item.path), f"{item.path}: unreadable; skipped")}
        try:
            if self.latents is not None:
                image = {"latents": self.latents.get(item, flipped=flip)}
            else:
                image = {"pixels": prepare_pixels(item, flip=flip, hue_shift=hue_shift, rng_crop=crop_rng)}
        except Exception as error:  # the file changed or broke after the pre-flight check
            return {"failed": (str(item.path), f"{item.path}: cannot read image ({error}); skipped")}
        if rules.loss_masks:
            try:  # cached latents are of the centred crop
                image["loss_mask"] = loss_mask(item, alpha=rules.alpha_mask, flip=flip,
                                               crop_seed=crop_seed if self.latents is None else None)
            except Exception as error:
                return {"failed": (str(item.path), f"{item.path}: cannot read its loss mask ({error}); skipped")}
        text = self.captions.example(caption)
        if rules.size_conditioning:
            text.update(size_conditioning(item, crop_seed, flip))
        return {**image, **text, "caption": caption, "path": str(item.path)}


def collate_examples(examples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack the good examples; failed ones are listed so the trainer can warn about them."""
    good = [example for example in examples if "failed" not in example]
    batch: dict[str, Any] = {
        "failed": [example["failed"] for example in examples if "failed" in example],
        "count": len(good),
        "captions": [example["caption"] for example in good],
        "paths": [example["path"] for example in good],
    }
    if good:
        # every tensor an example carries, by name: latents or pixels, and what the family's
        # conditioning reads (token ids, cached states, size numbers)
        for key, value in good[0].items():
            if isinstance(value, torch.Tensor):
                batch[key] = torch.stack([example[key] for example in good])
    return batch


class EpochBatchSampler:
    """Index batches of one bucket each, in a seeded order that depends on the epoch.

    Under several processes each takes every n-th batch; the shorter shares are topped up
    from the start of the epoch so every process runs the same number of steps.
    """

    def __init__(self, instances: Sequence, batch_size: int, seed: int, num_processes: int = 1, process_index: int = 0):
        self.instances = list(instances)
        self.batch_size = batch_size
        self.seed = seed
        self.num_processes = num_processes
        self.process_index = process_index
        self.epoch = 0
        self._resume_epoch, self._resume_skip = -1, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def resume_at(self, epoch: int, batches_done: int) -> None:
        """In `epoch`, leave out the first `batches_done` batches (a run resumed mid-epoch)."""
        self._resume_epoch, self._resume_skip = epoch, batches_done

    def epoch_batches(self) -> list[list[int]]:
        batches = self._all_batches()
        return batches[self._resume_skip :] if self.epoch == self._resume_epoch else batches

    def _all_batches(self) -> list[list[int]]:
        rng = random.Random(f"batches:{self.seed}:{self.epoch}")
        indices = list(range(len(self.instances)))
        batches = epoch_batches(indices, self.batch_size, rng, bucket_of=lambda i: self.instances[i].bucket)
        if self.num_processes == 1:
            return batches
        per_process = -(-len(batches) // self.num_processes)
        padded = batches + batches[: per_process * self.num_processes - len(batches)]
        return padded[self.process_index :: self.num_processes]

    def __iter__(self):
        # (epoch, index) pairs: the dataset in a persistent worker does not know the epoch
        return iter([[(self.epoch, index) for index in batch] for batch in self.epoch_batches()])

    def __len__(self) -> int:
        return len(self.epoch_batches())


def make_loader(dataset: TrainingImages, sampler: EpochBatchSampler, *, workers: int, pin_memory: bool):
    """Batches decoded by `workers` processes that live for the whole run (no start-up
    pause at each epoch) and keep `PREFETCH_BATCHES` batches each ready; pinned memory lets
    the step copy a batch to the GPU without waiting for it.

    The loader draws a seed each time an epoch's pass starts; from its own generator, not
    torch's global one, which LoRA dropout draws from: a run resumed mid-epoch starts one
    pass more than the run it continues, and must not shift the dropout that follows.
    (Examples take their randomness from `ExampleRules.seed`, not from that seed.)"""
    return torch.utils.data.DataLoader(
        dataset,
        batch_sampler=sampler,
        collate_fn=collate_examples,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        prefetch_factor=PREFETCH_BATCHES if workers > 0 else None,
        generator=torch.Generator(),
    )
