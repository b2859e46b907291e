"""Do two versions of the health scan report the same findings? Before/after a speed-up.

    python bench/scan_findings_compare.py [--before REV] [--workers N] [--keep]

Writes the test corpora once (tests/health_corpus.build_corpus, the fuzzed files of
tests/test_health.py, the silently damaged JPEGs of tests/test_health_damage.py and a
set of 1024x768 photos, some damaged), then scans them with the engine of git revision
REV (default: the main branch) and with this working tree, each in its own process,
and compares every finding: path, code, severity and message. Prints the differences
and exits 1 when there are any. Not a test (it needs git history); the tests check
each case's codes.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Run in the child process, with PYTHONPATH at the tree under test: every finding as JSON.
SCAN_SCRIPT = """
import json, sys
from engine.health.scan import scan, target_for
result = {}
for folder in sys.argv[2:]:
    report = scan(target_for(folder), workers=int(sys.argv[1]))
    result[folder] = [[item.path, item.code, item.severity, item.message] for item in report.findings]
print(json.dumps(result))
"""


def write_corpora(base: Path) -> list[Path]:
    from PIL import ImageFilter

    from tests.health_corpus import build_corpus, damage_scan, jpeg_bytes, photo, write_fuzzed_files

    build_corpus(base / "corpus")
    folders = [base / "corpus"]

    write_fuzzed_files(base / "fuzz")  # as tests/test_health.py's never-crash test
    folders.append(base / "fuzz")

    damage = base / "damage"  # as tests/test_health_damage.py: silent damage at several depths
    damage.mkdir()
    for seed in range(40):
        data = jpeg_bytes(photo(seed))
        kind = ("zeroed", "dropped", "flipped")[seed % 3]
        (damage / f"d{seed:03d}.jpg").write_bytes(damage_scan(data, kind, 0.2 + 0.6 * (seed % 7) / 6))
        (damage / f"c{seed:03d}.jpg").write_bytes(data)
    folders.append(damage)

    photos = base / "photos"  # what the speed bench scans: 1024x768 photos, some damaged,
    photos.mkdir()           # blurred, copied or recompressed
    for seed in range(48):
        image = photo(1000 + seed, (1024, 768))
        if seed % 8 == 7:
            image = image.filter(ImageFilter.GaussianBlur(3))
        if seed % 12 == 4:
            image = photo(1000 + seed - 1, (1024, 768)).resize((800, 600)).resize((1024, 768))
        data = jpeg_bytes(image, quality=70 if seed % 12 == 4 else 90)
        if seed % 16 == 9:
            data = (photos / f"p{seed - 1:03d}.jpg").read_bytes()
        if seed % 6 == 5:
            data = damage_scan(data, "zeroed", 0.5)
        (photos / f"p{seed:03d}.jpg").write_bytes(data)
        (photos / f"p{seed:03d}.txt").write_text("a photo", encoding="utf-8")
    folders.append(photos)
    return folders


def findings_of(tree: Path, folders: list[Path], workers: int) -> dict[str, list]:
    for folder in folders:  # each version starts cold: no cache of the other's
        for cache in folder.rglob("*"):
            if cache.name in (".loradeck-scan-cache", "health-cache.json"):
                cache.unlink()
    environment = dict(os.environ, PYTHONPATH=str(tree))
    result = subprocess.run([sys.executable, "-c", SCAN_SCRIPT, str(workers), *map(str, folders)],
                            cwd=tree, env=environment, capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", default="main", help="git revision to compare with (default: main)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the corpora and the exported tree")
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="loradeck-findings-"))
    try:
        before_tree = base / "before"
        before_tree.mkdir()
        archive = subprocess.run(["git", "archive", args.before], cwd=ROOT, capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(before_tree)], input=archive, check=True)
        folders = write_corpora(base / "data")
        before = findings_of(before_tree, folders, args.workers)
        after = findings_of(ROOT, folders, args.workers)
        differences = 0
        for folder in map(str, folders):
            old, new = {tuple(item) for item in before[folder]}, {tuple(item) for item in after[folder]}
            for item in sorted(old - new):
                print(f"only before: {item}")
            for item in sorted(new - old):
                print(f"only after:  {item}")
            differences += len(old ^ new)
            print(f"{Path(folder).name:8} {len(new):4} findings, {len(old ^ new)} different")
        print("identical" if not differences else f"{differences} findings differ")
        return 1 if differences else 0
    finally:
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
