"""From decoded facts to findings: per-file rules and the dataset-wide comparisons.

Pure functions over `ImageFacts`, caption texts and the file list; no decoding here,
so they are redone on every scan (a cached scan included) in well under a second.
"""
from __future__ import annotations

import posixpath
import statistics

import numpy as np

from engine.dataset.folders import parse_folder_name
from engine.health.report import CODE_ORDER, DatasetFiles, Finding, ScanSettings, finding
from engine.health.image_checks import ImageFacts

# Perceptual hashes this close (of 64 bits) are the same picture resized, recompressed
# or lightly edited; unrelated photos differ in about 32 bits.
NEAR_DUPLICATE_BITS = 6
# Blurry: sharpness below this share of the dataset's median, in a dataset big enough
# for a median to mean something.
BLUR_RATIO = 0.2
BLUR_MIN_IMAGES = 5

ORIENTATION_NAMES = {
    2: "mirrored", 3: "rotated 180°", 4: "flipped upside down", 5: "mirrored and rotated 90°",
    6: "rotated 90° clockwise", 7: "mirrored and rotated 90°", 8: "rotated 90° counter-clockwise",
}


def dataset_findings(files: DatasetFiles, facts: dict[str, ImageFacts], captions: dict[str, str],
                     settings: ScanSettings) -> list[Finding]:
    """`captions`: the text of every caption file that could be read (the others have
    a reason in `files.problems`)."""
    found: list[Finding] = []
    usable = [path for path in files.images if not facts[path].error_code]
    for path in files.images:
        found.extend(image_findings(path, facts[path], captions, settings, files.problems))
    duplicates = duplicate_findings(usable, facts)
    found.extend(duplicates)
    already = {item.path for item in duplicates}
    found.extend(near_duplicate_findings([path for path in usable if path not in already], facts))
    found.extend(blur_findings(usable, facts))
    found.extend(orphan_caption_findings(files, settings))
    if settings.kohya_layout:
        found.extend(folder_findings(files))
    found.extend(finding(folder, "unreadable_folder", f"{why}: its images are not checked, "
                         "and the trainer cannot list it either")
                 for folder, why in files.unreadable_folders.items())
    return sorted(found, key=lambda item: (item.path, CODE_ORDER[item.code]))


def image_findings(path: str, facts: ImageFacts, captions: dict[str, str], settings: ScanSettings,
                   problems: dict[str, str] | None = None) -> list[Finding]:
    """One image's own findings, from its decode and its caption; what needs the whole
    dataset (duplicates, blur, orphans, folders) aside."""
    found = file_findings(path, facts, settings)
    if not facts.error_code:
        found.extend(caption_findings(path, captions, settings, problems))
    return found


def caption_path_of(path: str, settings: ScanSettings) -> str:
    return posixpath.splitext(path)[0] + settings.caption_extension


def file_findings(path: str, facts: ImageFacts, settings: ScanSettings) -> list[Finding]:
    if facts.error_code:
        return [finding(path, facts.error_code, facts.error, facts.damaged_row)]  # nothing else matters for it
    found = []
    if facts.orientation != 1:
        found.append(finding(
            path, "exif_rotated",
            f"EXIF Orientation {facts.orientation} ({ORIENTATION_NAMES[facts.orientation]}): the trainer "
            "applies it, but tools that ignore the tag (sd-scripts among them) see the stored pixels",
        ))
    low = low_resolution_message(facts.upright_size, settings)
    if low:
        found.append(finding(path, "low_resolution", low))
    if facts.frames > 1:
        found.append(finding(path, "animated", f"animated, {facts.frames} frames: only the first frame is trained"))
    if facts.color_mode:
        found.append(finding(path, "color_mode", f"{facts.color_mode}: converted to 8-bit RGB for training"))
    if facts.transparent_fraction > 0:
        found.append(finding(
            path, "alpha",
            f"{facts.transparent_fraction:.0%} of the pixels are transparent: training drops the alpha "
            "channel and sees whatever colour lies under them",
        ))
    return found


def low_resolution_message(size: tuple[int, int], settings: ScanSettings) -> str:
    width, height = size
    train_width, train_height = settings.resolution
    if not settings.enable_buckets:
        if width < train_width or height < train_height:
            return f"{width}×{height} is smaller than the training resolution {train_width}×{train_height}: it is upscaled"
        return ""
    if min(width, height) < settings.min_bucket_side:
        return f"{width}×{height}: the shorter side is below the smallest bucket side {settings.min_bucket_side}"
    if width * height < train_width * train_height:
        return (f"{width}×{height} has fewer pixels than the training resolution "
                f"{train_width}×{train_height}: it is upscaled")
    return ""


def caption_findings(path: str, captions: dict[str, str], settings: ScanSettings,
                     problems: dict[str, str] | None = None) -> list[Finding]:
    caption_path = caption_path_of(path, settings)
    name = posixpath.basename(caption_path)
    if problems and caption_path in problems:
        return [finding(path, "unreadable_caption", f"{name} cannot be read: {problems[caption_path]}")]
    if caption_path not in captions:
        parts = path.split("/")
        parsed = parse_folder_name(parts[0]) if settings.kohya_layout and len(parts) > 1 else None
        fallback = f": trained with the folder's class tokens \"{parsed[1]}\" only" if parsed else ""
        return [finding(path, "missing_caption", f"no caption file {name}{fallback}")]
    if not captions[caption_path].strip():  # no line with a tag on it: the trainer's caption is ""
        return [finding(path, "empty_caption", f"{name} is empty")]
    return []


def orphan_caption_findings(files: DatasetFiles, settings: ScanSettings) -> list[Finding]:
    stems = {posixpath.splitext(path)[0] for path in files.images}
    return [
        finding(path, "orphan_caption", "no image with this name beside it")
        for path in files.captions
        if path[: -len(settings.caption_extension)] not in stems
    ]


def folder_findings(files: DatasetFiles) -> list[Finding]:
    found = []
    for folder in files.folders:
        if parse_folder_name(folder) is None:
            count = sum(1 for path in files.images if path.startswith(folder + "/"))
            found.append(finding(
                folder, "bad_folder_name",
                f"no <repeats>_ prefix (e.g. \"10_{folder}\"): the trainer skips "
                f"{_count(count, 'image')} in it; rename it",
            ))
    return found


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}" if number == 1 else f"{number} {noun}s"


def duplicate_findings(paths: list[str], facts: dict[str, ImageFacts]) -> list[Finding]:
    """Every copy after the first (in path order) of the same pixels."""
    first: dict[str, str] = {}
    found = []
    for path in paths:
        key = facts[path].pixel_hash
        if key in first:
            found.append(finding(path, "duplicate", f"same pixels as {first[key]}"))
        else:
            first[key] = path
    return found


def near_duplicate_findings(paths: list[str], facts: dict[str, ImageFacts]) -> list[Finding]:
    """Each image that looks like an earlier one (in path order), naming the closest."""
    if len(paths) < 2:
        return []
    hashes = np.array([int(facts[path].perceptual_hash, 16) for path in paths], dtype=np.uint64)
    found = []
    chunk = 1024
    for start in range(1, len(paths), chunk):
        stop = min(start + chunk, len(paths))
        # rows: images start..stop-1; columns: every earlier image
        distances = _popcount(hashes[start:stop, None] ^ hashes[None, :stop])
        distances[np.arange(stop)[None, :] >= np.arange(start, stop)[:, None]] = 255  # itself and later
        for row in np.flatnonzero(distances.min(axis=1) <= NEAR_DUPLICATE_BITS):
            column = int(distances[row].argmin())
            found.append(finding(
                paths[start + row], "near_duplicate",
                f"looks like {paths[column]} (perceptual hash {distances[row, column]} bits apart)",
            ))
    return found


def _popcount(values: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):  # numpy 2
        return np.bitwise_count(values).astype(np.uint8)
    table = np.array([bin(byte).count("1") for byte in range(256)], dtype=np.uint8)
    return table[values.view(np.uint8).reshape(*values.shape, 8)].sum(axis=-1, dtype=np.uint8)


def blur_findings(paths: list[str], facts: dict[str, ImageFacts]) -> list[Finding]:
    scores = {path: facts[path].sharpness for path in paths if facts[path].sharpness >= 0}
    if len(scores) < BLUR_MIN_IMAGES:
        return []
    median = statistics.median(scores.values())
    if median <= 0:
        return []
    return [
        finding(path, "blurry", f"sharpness {score:.0f} is {score / median:.0%} of this dataset's median {median:.0f}")
        for path, score in scores.items()
        if score < BLUR_RATIO * median
    ]
