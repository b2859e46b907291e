r"""What a health scan reports: the finding codes, a finding, the report, the rules it
checks against and the files it saw. Shared by the scan and the dataset-wide checks.

Paths are relative to the scanned root, as Python reads file names: a name that is not
valid UTF-8 keeps each undecodable byte as a lone surrogate (U+DC80..U+DCFF, Python's
"surrogateescape"), so `os.fsencode(path)` gives the exact bytes back. Text output shows
such a byte as `\xNN` (`display`); JSON output (`json_text`) writes it as the escape
`\udcNN`, which Python's json module reads back to the same string, and adds
`"path_bytes"`: the name's bytes in hex, for readers that replace lone surrogates.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the config schema is read when settings are made, not to read a report
    from engine.config.schema import TrainConfig

# Pillow's own decompression-bomb threshold (its Image.MAX_IMAGE_PIXELS, 1024³ / 4 / 3; a
# test holds the two equal): above it, a trainer using Pillow warns, at twice it refuses,
# and an RGB decode needs more than 250 MB per image. Written out, not read from Pillow,
# so that reading a report, as the health screen's first frame does, imports no Pillow
# (11 ms) and no numpy.
MAX_PIXELS = 89_478_485

ERROR, WARNING, INFO = "error", "warning", "info"
SEVERITIES = (ERROR, WARNING, INFO)


@dataclass(frozen=True)
class Check:
    code: str
    severity: str
    title: str


# Every finding code, in the order reports list them.
CHECKS: dict[str, Check] = {check.code: check for check in (
    Check("corrupt", ERROR, "Corrupt or truncated"),
    Check("unreadable", ERROR, "Not a usable image"),
    Check("too_large", ERROR, "Too large to decode"),
    Check("unreadable_caption", ERROR, "Caption cannot be read"),
    Check("unreadable_folder", ERROR, "Folder cannot be read"),
    Check("bad_folder_name", ERROR, "Folder without <repeats>_"),
    Check("exif_rotated", WARNING, "EXIF-rotated"),
    Check("low_resolution", WARNING, "Low resolution"),
    Check("duplicate", WARNING, "Duplicate"),
    Check("animated", WARNING, "Animated"),
    Check("missing_caption", WARNING, "Missing caption"),
    Check("empty_caption", WARNING, "Empty caption"),
    Check("near_duplicate", INFO, "Near-duplicate"),
    Check("blurry", INFO, "Blurry"),
    Check("color_mode", INFO, "Unusual colour mode"),
    Check("alpha", INFO, "Transparency"),
    Check("orphan_caption", INFO, "Caption without image"),
)}
CODE_ORDER = {code: index for index, code in enumerate(CHECKS)}


@dataclass(frozen=True)
class Finding:
    path: str  # relative to the scanned root, with forward slashes
    code: str
    severity: str
    message: str
    damaged_row: int = -1  # corrupt: the first pixel row of damage the decoder did not report

    def as_json(self) -> dict[str, str]:
        # The row is in the message; the JSON keeps its four keys (five for a name that
        # is not UTF-8: path_bytes).
        return with_path_bytes(
            {"path": self.path, "code": self.code, "severity": self.severity, "message": self.message})


@dataclass(frozen=True)
class Skipped:
    """An entry the scan could not look at and the trainer would not load (a looping
    or dangling link without an image or caption name), with why."""

    path: str
    reason: str

    def as_json(self) -> dict[str, str]:
        return with_path_bytes({"path": self.path, "reason": self.reason})


def with_path_bytes(item: dict[str, str]) -> dict[str, str]:
    if _SURROGATE.search(item["path"]):
        item["path_bytes"] = os.fsencode(item["path"]).hex()
    return item


_SURROGATE = re.compile("[\ud800-\udfff]")
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f\ud800-\udfff]")


def display(text: str) -> str:
    """Text for a terminal: an undecodable byte of a file name as \\xNN, a control
    character (a newline in a name) as its escape, so every report line stays one line."""
    return _UNPRINTABLE.sub(_escape, text)


def _escape(match: re.Match) -> str:
    character = match.group()
    if "\ud800" <= character <= "\udfff":
        return f"\\x{os.fsencode(character)[0]:02x}" if character >= "\udc80" else f"\\u{ord(character):04x}"
    return repr(character)[1:-1]


def json_text(data, **options) -> str:
    """json.dumps with non-ASCII text as is, and lone surrogates (the undecodable bytes
    of a file name) as \\udcNN escapes, so the output is valid UTF-8."""
    text = json.dumps(data, ensure_ascii=False, **options)
    return _SURROGATE.sub(lambda match: f"\\u{ord(match.group()):04x}", text)


def finding(path: str, code: str, message: str, damaged_row: int = -1) -> Finding:
    return Finding(path, code, CHECKS[code].severity, message, damaged_row)


@dataclass
class ScanReport:
    root: Path
    images: int
    findings: list[Finding] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    @property
    def summary(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for item in self.findings:
            counts[item.code] = counts.get(item.code, 0) + 1
        return {code: counts[code] for code in CHECKS if code in counts}

    @property
    def errors(self) -> list[Finding]:
        return [item for item in self.findings if item.severity == ERROR]

    def as_json(self) -> dict[str, Any]:
        document = {
            "root": str(self.root),
            "images": self.images,
            "findings": [item.as_json() for item in self.findings],
            "summary": self.summary,
        }
        if self.skipped:  # only then: a clean dataset's report keeps its four keys
            document["skipped"] = [item.as_json() for item in self.skipped]
        return document


@dataclass(frozen=True)
class ScanSettings:
    resolution: tuple[int, int] = (512, 512)
    enable_buckets: bool = True
    min_bucket_side: int = 256
    caption_extension: str = ".txt"
    kohya_layout: bool = True  # subfolders must be named <repeats>_<class tokens>
    max_pixels: int = MAX_PIXELS

    @classmethod
    def from_config(cls, config: TrainConfig, *, kohya_layout: bool) -> "ScanSettings":
        from engine.config.schema import TrainConfig, parse_resolution

        data = config.dataset
        try:
            resolution = parse_resolution(data.resolution)
        except ValueError:
            resolution = parse_resolution(TrainConfig().dataset.resolution)
        return cls(
            resolution=resolution,
            enable_buckets=data.enable_buckets,
            min_bucket_side=data.min_bucket_resolution,
            caption_extension=config.captions.caption_extension,
            kohya_layout=kohya_layout,
        )


@dataclass
class DatasetFiles:
    images: list[str] = field(default_factory=list)  # relative paths, sorted
    captions: list[str] = field(default_factory=list)
    folders: list[str] = field(default_factory=list)  # direct subfolders of the root
    stats: dict[str, tuple[int, int]] = field(default_factory=dict)  # path -> (size, mtime_ns)
    # image or caption -> why it is not a readable regular file (never opened, never decoded)
    problems: dict[str, str] = field(default_factory=dict)
    unreadable_folders: dict[str, str] = field(default_factory=dict)  # folder -> why
    skipped: dict[str, str] = field(default_factory=dict)  # any other entry stat could not read -> why
