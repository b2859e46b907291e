"""Loss masks: per pixel, how much of an image the loss trains on (sd-scripts' masked loss).

    loss_mask(item, alpha=..., crop_seed=..., flip=...) -> (H, W) float32 in [0, 1]

A mask comes from the image's conditioning image (a dataset TOML subset's
`conditioning_data_dir`, matched by file name: its red channel, white 1, black 0, as
sd-scripts' `apply_masked_loss` reads a conditioning image), else from the image's own
alpha (`dataset.alpha_mask`: opaque 1, transparent 0; no alpha trains everywhere), else it
is all ones. It is framed as the image is: scaled to cover the bucket and cut at the same
place (the same crop draw), mirrored with it. sd-scripts stretches a conditioning image to
the bucket and centres it whatever the crop (its "TODO support random crop"); that is the
same frame whenever the bucket has the image's aspect ratio and the crop is centred, and
here the mask stays on its pixels otherwise. Resampling as sd-scripts' `resize_image`:
area averaging when shrinking, Lanczos when enlarging.

The objective multiplies its per-element loss by the mask, area-averaged to the latent
grid (engine.model.objectives.apply_loss_mask).
"""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps


def _upright(path: Path) -> Image.Image:
    with Image.open(path) as opened:
        image = ImageOps.exif_transpose(opened)
        image.load()
    return image


def conditioning_mask(path: Path) -> Image.Image:
    """The red channel of a conditioning image (a grey or palette image's grey level)."""
    return _upright(path).convert("RGB").getchannel("R")


def alpha_channel(path: Path) -> Image.Image | None:
    """The image's transparency as 8-bit levels, or None when it has none."""
    image = _upright(path)
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return image.convert("RGBA").getchannel("A")
    return None


def framed(mask: Image.Image, item, crop_seed: float | None, flip: bool) -> torch.Tensor:
    """`mask` (the image's size) scaled and cut to the item's bucket as its image is, in [0, 1]."""
    from engine.train.data import bucket_crop

    width, height = item.bucket
    size, left, top = bucket_crop(mask.size, item.bucket, random.Random(crop_seed) if crop_seed is not None else None,
                                  getattr(item, "resized", None))
    if size != mask.size:
        shrinking = size[0] <= mask.size[0] and size[1] <= mask.size[1]
        mask = mask.resize(size, Image.Resampling.BOX if shrinking else Image.Resampling.LANCZOS)
    mask = mask.crop((left, top, left + width, top + height))
    if flip:
        mask = ImageOps.mirror(mask)
    return torch.from_numpy(np.asarray(mask, dtype=np.float32) / 255.0)


def loss_mask(item, *, alpha: bool, crop_seed: float | None, flip: bool) -> torch.Tensor:
    """The item's mask at its bucket's size: its conditioning image's, else its alpha (when
    `alpha`), else ones."""
    mask_path = getattr(item, "mask_path", None)
    mask = conditioning_mask(mask_path) if mask_path is not None else alpha_channel(item.path) if alpha else None
    if mask is None:
        width, height = item.bucket
        return torch.ones((height, width), dtype=torch.float32)
    if mask.size != (item.width, item.height):
        raise ValueError(f"its mask is {mask.size[0]}x{mask.size[1]}, the image {item.width}x{item.height}")
    return framed(mask, item, crop_seed, flip)
