"""Auto-captioning a dataset folder: BLIP, Florence-2 and WD14-style ONNX taggers.

    captioner = load_captioner("SmilingWolf/wd-vit-tagger-v3")     # kind from the model
    report = caption_folder(root, captioner, CaptionRun(prefix="ohwx"))

Each captioner turns a batch of upright RGB images into caption text. `caption_folder`
walks the dataset (engine.dataset.caption_files), skips / appends to / overwrites existing
captions, adds the prefix (trigger word) and suffix, writes every file atomically and
never over a caption someone edited while the job ran. Images are decoded and
EXIF-transposed in a background thread while the model works on the previous batch.

Models come from a local folder or a hub id. transformers, torch and onnxruntime are
imported only when a captioner is loaded.
"""
from __future__ import annotations

import csv
import json
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

from engine.dataset.caption_files import CaptionChanged, list_caption_files, read_caption, write_caption
from engine.errors import LoradeckError, UsageError
from engine.dataset.tags import parse_caption

KINDS = ("blip", "florence2", "wd14")
EXISTING_MODES = ("skip", "append", "overwrite")
FLORENCE_TASKS = {
    "caption": "<CAPTION>",
    "detailed": "<DETAILED_CAPTION>",
    "more-detailed": "<MORE_DETAILED_CAPTION>",
}
# Tags made of underscores and symbols are faces (^_^); their underscores are the tag.
KAOMOJI = {"0_0", "(o)_(o)", "+_+", "+_-", "._.", "<o>_<o>", "<|>_<|>", "=_=", ">_<", "3_3", "6_9",
           ">_o", "@_@", "^_^", "o_o", "u_u", "x_x", "|_|", "||_||"}
WD14_RATING, WD14_GENERAL, WD14_CHARACTER = 9, 0, 4


class Captioner(Protocol):
    name: str

    def caption(self, images: Sequence[Any]) -> list[str]:
        """Caption text for each image (PIL, RGB, upright)."""


@dataclass(frozen=True)
class CaptionerOptions:
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    batch_size: int = 8
    max_new_tokens: int = 75
    num_beams: int = 3
    florence_task: str = "caption"
    general_threshold: float = 0.35
    character_threshold: float = 0.85
    undesired_tags: tuple[str, ...] = ()
    underscores_to_spaces: bool = True


@dataclass(frozen=True)
class CaptionRun:
    prefix: str = ""
    suffix: str = ""
    existing: str = "skip"  # skip | append | overwrite
    caption_extension: str = ".txt"


@dataclass
class CaptionReport:
    total: int = 0
    written: int = 0
    skipped: int = 0
    failed: list[tuple[Path, str]] = field(default_factory=list)


# ---- choosing and loading a model


def _local(model: str) -> Path | None:
    path = Path(model).expanduser()
    return path if path.exists() else None


def detect_kind(model: str) -> str:
    """The captioner kind of a local folder (its files) or hub id (its name)."""
    folder = _local(model)
    if folder is not None:
        if folder.is_file() and folder.suffix == ".onnx":
            return "wd14"
        if (folder / "model.onnx").exists() and (folder / "selected_tags.csv").exists():
            return "wd14"
        try:
            model_type = json.loads((folder / "config.json").read_text(encoding="utf-8")).get("model_type", "")
        except (OSError, ValueError):
            model_type = ""
        if model_type in ("blip", "florence2"):
            return model_type
        raise UsageError(f"{model}: not a BLIP, Florence-2 or WD14 tagger folder; say which with --kind")
    lowered = model.lower()
    if "florence" in lowered:
        return "florence2"
    if "blip" in lowered:
        return "blip"
    if "tagger" in lowered or "wd14" in lowered or "/wd-" in lowered:
        return "wd14"
    raise UsageError(f"{model}: cannot tell the captioner from the name; say which with --kind")


def load_captioner(model: str, kind: str | None = None, options: CaptionerOptions | None = None) -> Captioner:
    options = options or CaptionerOptions()
    kind = kind or detect_kind(model)
    if kind not in KINDS:
        raise UsageError(f"--kind {kind}: choose one of {', '.join(KINDS)}")
    if kind == "wd14":
        return WD14Tagger(model, options)
    if kind == "blip":
        return BlipCaptioner(model, options)
    return FlorenceCaptioner(model, options)


def _torch_device(device: str):
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UsageError(f"--device {device}: no CUDA GPU is available")
    dtype = torch.float16 if device.startswith("cuda") else torch.float32
    return torch.device(device), dtype


def _from_pretrained(loader, model: str, **kwargs):
    """from_pretrained with a one-line error for a missing folder or an offline hub id."""
    try:
        return loader.from_pretrained(model, **kwargs)
    except (OSError, ValueError) as error:  # ValueError: a folder without the model's processor files
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise LoradeckError(f"{model}: cannot load ({first})") from error


class BlipCaptioner:
    """BLIP image captioning, e.g. Salesforce/blip-image-captioning-large."""

    def __init__(self, model: str, options: CaptionerOptions):
        from transformers import BlipForConditionalGeneration, BlipProcessor

        self.name = f"BLIP {model}"
        self.options = options
        self.device, self.dtype = _torch_device(options.device)
        self.processor = _from_pretrained(BlipProcessor, model)
        self.model = _from_pretrained(BlipForConditionalGeneration, model, dtype=self.dtype)
        self.model.to(self.device).eval()

    def caption(self, images: Sequence[Any]) -> list[str]:
        import torch

        inputs = self.processor(images=list(images), return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens,
                                         num_beams=self.options.num_beams)
        return [text.strip() for text in self.processor.batch_decode(output, skip_special_tokens=True)]


class FlorenceCaptioner:
    """Florence-2 (transformers' native class), e.g. florence-community/Florence-2-large."""

    def __init__(self, model: str, options: CaptionerOptions):
        from transformers import AutoProcessor, Florence2ForConditionalGeneration

        if options.florence_task not in FLORENCE_TASKS:
            raise UsageError(f"--task {options.florence_task}: choose one of {', '.join(FLORENCE_TASKS)}")
        self.name = f"Florence-2 {model}"
        self.options = options
        self.task = FLORENCE_TASKS[options.florence_task]
        self.device, self.dtype = _torch_device(options.device)
        self.processor = _from_pretrained(AutoProcessor, model)
        self.model = _from_pretrained(Florence2ForConditionalGeneration, model, dtype=self.dtype)
        self.model.to(self.device).eval()

    def caption(self, images: Sequence[Any]) -> list[str]:
        import torch

        inputs = self.processor(text=[self.task] * len(images), images=list(images),
                                return_tensors="pt").to(self.device)
        inputs["pixel_values"] = inputs["pixel_values"].to(self.dtype)
        with torch.inference_mode():
            output = self.model.generate(**inputs, max_new_tokens=self.options.max_new_tokens,
                                         num_beams=self.options.num_beams, do_sample=False)
        # Caption tasks answer plain text: the decoded tokens without <s></s><pad>.
        return [text.strip() for text in self.processor.batch_decode(output, skip_special_tokens=True)]


@dataclass(frozen=True)
class TaggerLabel:
    name: str
    category: int


def read_selected_tags(path: Path) -> list[TaggerLabel]:
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
    except OSError as error:
        raise LoradeckError(f"{path}: cannot read ({error.strerror})") from error
    try:
        return [TaggerLabel(row["name"], int(row["category"])) for row in rows]
    except (KeyError, ValueError) as error:
        raise LoradeckError(f"{path}: expected columns tag_id,name,category,count") from error


class WD14Tagger:
    """A WD14-style booru tagger: model.onnx (NHWC, BGR, 0-255) + selected_tags.csv."""

    def __init__(self, model: str, options: CaptionerOptions):
        import onnxruntime

        model_file, tags_file = self._files(model)
        self.name = f"WD14 tagger {model}"
        self.options = options
        self.labels = read_selected_tags(tags_file)
        providers = ["CPUExecutionProvider"]
        if options.device != "cpu" and "CUDAExecutionProvider" in onnxruntime.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        try:
            self.session = onnxruntime.InferenceSession(str(model_file), providers=providers)
        except Exception as error:  # onnxruntime raises its own exception types
            raise LoradeckError(f"{model_file}: cannot load the ONNX model ({error})") from error
        model_input = self.session.get_inputs()[0]
        self.input_name = model_input.name
        self.size = int(model_input.shape[1])  # NHWC: [batch, height, width, 3]
        outputs = self.session.get_outputs()[0].shape
        if isinstance(outputs[-1], int) and outputs[-1] != len(self.labels):
            raise LoradeckError(f"{tags_file}: {len(self.labels)} tags but the model outputs {outputs[-1]}")
        undesired = set()
        for tag in options.undesired_tags:
            undesired.update({tag.strip(), tag.strip().replace(" ", "_"), tag.strip().replace("_", " ")})
        self.undesired = undesired

    @staticmethod
    def _files(model: str) -> tuple[Path, Path]:
        local = _local(model)
        if local is not None:
            folder = local.parent if local.is_file() else local
            model_file = local if local.is_file() else folder / "model.onnx"
            tags_file = folder / "selected_tags.csv"
            for needed in (model_file, tags_file):
                if not needed.exists():
                    raise LoradeckError(f"{model}: {needed.name} is missing")
            return model_file, tags_file
        try:
            from huggingface_hub import hf_hub_download

            return (Path(hf_hub_download(model, "model.onnx")), Path(hf_hub_download(model, "selected_tags.csv")))
        except Exception as error:  # offline, unknown repo, no access: one line
            first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise LoradeckError(f"{model}: cannot download the tagger ({first})") from error

    def _prepare(self, image) -> Any:
        import numpy
        from PIL import Image

        # Pad to a white square (the taggers were trained that way), then resize.
        side = max(image.size)
        square = Image.new("RGB", (side, side), (255, 255, 255))
        square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
        if side != self.size:
            square = square.resize((self.size, self.size), Image.Resampling.BICUBIC)
        pixels = numpy.asarray(square, dtype=numpy.float32)
        return pixels[:, :, ::-1]  # RGB -> BGR

    def _tag_name(self, name: str) -> str:
        if self.options.underscores_to_spaces and name not in KAOMOJI:
            return name.replace("_", " ")
        return name

    def caption(self, images: Sequence[Any]) -> list[str]:
        import numpy

        batch = numpy.ascontiguousarray(numpy.stack([self._prepare(image) for image in images]))
        probabilities = self.session.run(None, {self.input_name: batch})[0]
        captions = []
        for row in probabilities:
            characters, general = [], []
            for label, score in zip(self.labels, row):
                if label.category == WD14_CHARACTER and score >= self.options.character_threshold:
                    characters.append((float(score), label.name))
                elif label.category == WD14_GENERAL and score >= self.options.general_threshold:
                    general.append((float(score), label.name))
            # Characters first, then general tags, each most confident first.
            ordered = sorted(characters, key=lambda item: -item[0]) + sorted(general, key=lambda item: -item[0])
            names = [self._tag_name(name) for _score, name in ordered
                     if name not in self.undesired and self._tag_name(name) not in self.undesired]
            captions.append(", ".join(names))
        return captions


# ---- captioning a folder


def open_upright(path: Path):
    """The image as RGB, turned the way EXIF says; transparency over white."""
    from PIL import Image, ImageOps

    with Image.open(path) as image:
        image = ImageOps.exif_transpose(image)
        if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
            rgba = image.convert("RGBA")
            background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
            return Image.alpha_composite(background, rgba).convert("RGB")
        return image.convert("RGB")


def compose_caption(generated: str, prefix: str = "", suffix: str = "") -> str:
    """prefix, generated, suffix as one caption; a prefix tag the model also produced
    is kept once, in front (the trigger word stays first)."""
    parts = [part.strip() for part in (prefix, generated, suffix) if part and part.strip()]
    return parse_caption(", ".join(parts)).dedupe().render()


def append_caption(existing: str, generated: str, prefix: str = "", suffix: str = "") -> str:
    """The existing caption with the prefix tags put in front and the generated and
    suffix tags added at the end, each only when not there already."""
    caption = parse_caption(existing)
    for position, tag in enumerate(parse_caption(prefix).tags):
        caption = caption.add(tag.raw, position)
    for tag in parse_caption(generated).tags + parse_caption(suffix).tags:
        caption = caption.add(tag.raw)
    return caption.render()


def _load_batch(paths: list[Path]) -> list[tuple[Path, Any, str]]:
    loaded = []
    for path in paths:
        try:
            loaded.append((path, open_upright(path), ""))
        except Exception as error:  # a corrupt file fails alone, the job goes on
            loaded.append((path, None, str(error).splitlines()[0] if str(error) else type(error).__name__))
    return loaded


ProgressCallback = Callable[[int, int, str, str], None]  # done, total, relative path, caption


def caption_folder(root: str | Path, captioner: Captioner, run: CaptionRun | None = None, *,
                   batch_size: int = 8, progress: ProgressCallback | None = None,
                   should_stop: Callable[[], bool] | None = None) -> CaptionReport:
    run = run or CaptionRun()
    if run.existing not in EXISTING_MODES:
        raise UsageError(f"existing captions: choose one of {', '.join(EXISTING_MODES)}")
    root = Path(root)
    files = list_caption_files(root, run.caption_extension)
    report = CaptionReport(total=len(files))
    # Decide what to caption from the caption files now; remember each file's stamp so
    # an edit made in the editor while the job runs is never overwritten.
    todo = []
    for item in files:
        text, stamp = read_caption(item.caption)
        if run.existing == "skip" and text is not None and text.strip():
            report.skipped += 1
            continue
        todo.append((item, text, stamp))
    done = report.skipped
    if progress:
        progress(done, report.total, "", "")
    batches = [todo[start:start + max(1, batch_size)] for start in range(0, len(todo), max(1, batch_size))]
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="caption-decode") as decoder:
        upcoming: Future | None = decoder.submit(_load_batch, [item.image for item, _t, _s in batches[0]]) if batches else None
        for number, batch in enumerate(batches):
            loaded = upcoming.result()
            # Decode the next batch while the model works on this one.
            upcoming = (decoder.submit(_load_batch, [item.image for item, _t, _s in batches[number + 1]])
                        if number + 1 < len(batches) else None)
            images = [image for _path, image, _error in loaded if image is not None]
            generated = iter(captioner.caption(images) if images else [])
            for (item, old_text, stamp), (_path, image, error) in zip(batch, loaded):
                done += 1
                if image is None:
                    report.failed.append((item.image, f"cannot read the image: {error}"))
                    continue
                generated_text = next(generated)
                if run.existing == "append" and old_text and old_text.strip():
                    text = append_caption(old_text, generated_text, run.prefix, run.suffix)
                else:
                    text = compose_caption(generated_text, run.prefix, run.suffix) + "\n"
                try:
                    write_caption(item.caption, text, stamp)
                except CaptionChanged:
                    report.failed.append((item.caption, "changed on disk while captioning; left as it is"))
                    continue
                report.written += 1
                if progress:
                    progress(done, report.total, item.relative, text.strip())
            if should_stop and should_stop():
                break
    return report
