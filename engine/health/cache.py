"""The scan cache: what decoding each file told, keyed by path, size and mtime.

One JSON document (never pickle), written atomically, so a re-scan of an unchanged
10,000-image dataset reads one file instead of decoding 10,000. A cache written by
another version of the checks, for another root or another pixel limit is ignored.
"""
from __future__ import annotations

import json
from dataclasses import asdict, fields
from pathlib import Path

from engine.atomic import atomic_write_text
from engine.health.image_checks import ImageFacts

# Bump when ImageFacts or what a check measures changes: old entries are then re-decoded.
CACHE_VERSION = 8  # 3: cut PNGs carry the row their pixels end at; 4: the colour-offset seam test (other JPEG verdicts); 5: XXH3 pixel hashes; 6: MCU-grid seams (shifted damage from any MCU, restart strips) and no offset seam on flat areas (other JPEG verdicts); 7: strips that end with their restart interval, casts shared by two colours (other JPEG verdicts); 8: a picture that ends before its scan data, cast strips over one colour, damage in the first or last MCU row (other JPEG verdicts)
_DEFAULTS = {item.name: item.default for item in fields(ImageFacts)}

Entry = tuple[tuple[int, int], ImageFacts]  # ((size, mtime_ns), facts)


def load_cache(path: Path, root: Path, max_pixels: int) -> dict[str, Entry]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if (data.get("version"), data.get("root"), data.get("max_pixels")) != (
            CACHE_VERSION, str(root), max_pixels
        ):
            return {}
        return {
            relative: ((int(size), int(mtime)), ImageFacts(**facts))
            for relative, (size, mtime, facts) in data["files"].items()
        }
    except (OSError, ValueError, TypeError, KeyError, AttributeError):
        return {}  # missing or unreadable: decode again, which rewrites it


def save_cache(path: Path, root: Path, max_pixels: int, entries: dict[str, Entry]) -> None:
    files = {}
    for relative, ((size, mtime), facts) in sorted(entries.items()):
        # Only what differs from the defaults: a clean image's entry stays short.
        compact = {key: value for key, value in asdict(facts).items() if value != _DEFAULTS[key]}
        files[relative] = [size, mtime, compact]
    document = {"version": CACHE_VERSION, "root": str(root), "max_pixels": max_pixels, "files": files}
    try:
        atomic_write_text(path, json.dumps(document, separators=(",", ":")))
    except OSError:
        pass  # a read-only dataset still scans; it just decodes again next time
