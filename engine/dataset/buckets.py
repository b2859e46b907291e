"""Aspect-ratio buckets, the way sd-scripts makes and assigns them.

Bucket resolutions keep the area of the training resolution with sides in steps of the
bucket step; an image goes to the bucket whose aspect ratio is closest to its own. In
no-upscale mode an image smaller than the area keeps its own size, rounded down to the
step. A batch always holds images of one bucket, so nothing is padded.

Light module.
"""
from __future__ import annotations

import bisect
import math
import random
from dataclasses import dataclass
from typing import Sequence, TypeVar

Item = TypeVar("Item")


def bucket_resolutions(
    resolution: tuple[int, int], min_side: int, max_side: int, step: int
) -> list[tuple[int, int]]:
    """Every (width, height) bucket for a training resolution (sd-scripts' make_bucket_resolutions)."""
    max_area = resolution[0] * resolution[1]
    sizes = set()
    square = int(math.sqrt(max_area) // step) * step
    sizes.add((square, square))
    width = min_side
    while width <= max_side:
        height = min(max_side, int((max_area // width) // step) * step)
        if height >= min_side:
            sizes.add((width, height))
            sizes.add((height, width))
        width += step
    return sorted(sizes)


@dataclass(frozen=True)
class BucketRules:
    resolution: tuple[int, int]
    enabled: bool = True
    min_side: int = 256
    max_side: int = 1024
    step: int = 64
    no_upscale: bool = False

    @classmethod
    def from_config(cls, config) -> "BucketRules":
        data = config.dataset
        return cls(
            resolution=config.resolution_size,
            enabled=data.enable_buckets,
            min_side=data.min_bucket_resolution,
            max_side=data.max_bucket_resolution,
            step=data.bucket_step,
            no_upscale=data.bucket_no_upscale,
        )


class BucketAssigner:
    """Picks the bucket of an image from its upright size."""

    def __init__(self, rules: BucketRules):
        self.rules = rules
        self.max_area = rules.resolution[0] * rules.resolution[1]
        self.sizes = bucket_resolutions(rules.resolution, rules.min_side, rules.max_side, rules.step)
        ordered = sorted(self.sizes, key=lambda size: size[0] / size[1])
        self._ordered = ordered
        self._ratios = [w / h for w, h in ordered]

    def bucket_for(self, width: int, height: int) -> tuple[int, int]:
        rules = self.rules
        if not rules.enabled:
            return rules.resolution
        if rules.no_upscale:
            return self._no_upscale_bucket(width, height)[0]
        return self._closest_ratio(width / height)

    def resized_size(self, width: int, height: int) -> tuple[int, int] | None:
        """The size sd-scripts resizes an image to before cropping it to its bucket, where that
        is not simply "cover the bucket": with no upscale, an image within the area keeps its
        own size (it is cropped at native size) and a larger one is shrunk to the area."""
        if not (self.rules.enabled and self.rules.no_upscale):
            return None
        return self._no_upscale_bucket(width, height)[1]

    def _closest_ratio(self, ratio: float) -> tuple[int, int]:
        index = bisect.bisect_left(self._ratios, ratio)
        candidates = [i for i in (index - 1, index) if 0 <= i < len(self._ratios)]
        best = min(candidates, key=lambda i: (abs(self._ratios[i] - ratio), i))
        return self._ordered[best]

    def _round(self, value: float) -> int:
        value = int(value + 0.5)
        return value - value % self.rules.step

    def _no_upscale_bucket(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int]]:
        """(bucket, the size the image is resized to before the crop to the bucket)."""
        ratio = width / height
        step = self.rules.step
        if width * height > self.max_area:
            # too large: shrink to the area, keeping the aspect ratio as well as steps allow
            resized_width = math.sqrt(self.max_area * ratio)
            resized_height = self.max_area / resized_width
            width_rounded = self._round(resized_width)
            height_for_width = self._round(width_rounded / ratio)
            height_rounded = self._round(resized_height)
            width_for_height = self._round(height_rounded * ratio)
            error_by_width = abs(width_rounded / max(height_for_width, 1) - ratio)
            error_by_height = abs(width_for_height / max(height_rounded, 1) - ratio)
            if error_by_width < error_by_height:
                width, height = width_rounded, int(width_rounded / ratio + 0.5)
            else:
                width, height = int(height_rounded * ratio + 0.5), height_rounded
        bucket = (width - width % step, height - height % step)
        return (max(bucket[0], step), max(bucket[1], step)), (width, height)


def epoch_batches(
    instances: Sequence[Item], batch_size: int, rng: random.Random, bucket_of=lambda item: item.bucket
) -> list[list[Item]]:
    """One epoch's batches: instances grouped by bucket, shuffled, cut into batches.

    Every batch holds one bucket; the last batch of a bucket may be short. The batch
    order is shuffled too, so buckets interleave over the epoch.
    """
    by_bucket: dict[tuple[int, int], list[Item]] = {}
    for item in instances:
        by_bucket.setdefault(bucket_of(item), []).append(item)
    batches: list[list[Item]] = []
    for bucket in sorted(by_bucket):
        members = list(by_bucket[bucket])
        rng.shuffle(members)
        batches.extend(members[i : i + batch_size] for i in range(0, len(members), batch_size))
    rng.shuffle(batches)
    return batches


def batches_in_bucket(count: int, batch_size: int) -> int:
    return -(-count // batch_size)
