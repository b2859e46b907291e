"""`loradeck prepare SOURCE [IMAGE_DIR] --subject S --class C --repeats N [--move]`.

Builds the Kohya folder `IMAGE_DIR/<repeats>_<subject> <class>/` from a flat folder of
images with their captions (engine.dataset.prepare): links by default, `--move` moves;
nothing is ever overwritten.
"""
from __future__ import annotations

import sys
from pathlib import Path



def add_arguments(parser) -> None:
    parser.add_argument("source", type=Path, help="a flat folder of images, captions beside them")
    parser.add_argument("image_dir", type=Path, nargs="?", default=Path("img"),
                        help="the workspace's image folder to build it in (default: ./img)")
    parser.add_argument("--subject", default="", help="the trigger word, e.g. ohwx")
    parser.add_argument("--class", dest="class_name", default="", help="the class, e.g. cat or photo of a man")
    parser.add_argument("--repeats", type=int, default=10, help="repeats per epoch (default 10)")
    parser.add_argument("--move", action="store_true", help="move the files (default: symbolic links to them)")
    parser.add_argument("--caption-extension", default=".txt", help="caption files' extension (default .txt)")


def run(args) -> int:
    from engine.dataset.prepare import prepare_folder

    prepared = prepare_folder(args.source, args.image_dir, subject=args.subject, class_name=args.class_name,
                              repeats=args.repeats, mode="move" if args.move else "link",
                              caption_extension=args.caption_extension)
    for name, why in prepared.skipped:
        print(f"skipped {name}: {why}", file=sys.stderr)
    print(prepared.summary())
    return 1 if prepared.skipped else 0
