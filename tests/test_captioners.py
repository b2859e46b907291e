"""Auto-captioning end to end on tiny models: a WD14-style ONNX tagger built here with
the onnx package, and randomly initialised BLIP and Florence-2 saved to local folders."""
from __future__ import annotations

import json
from pathlib import Path

import numpy
import pytest
from PIL import Image

from engine.captioning.captioners import (
    CaptionerOptions,
    CaptionRun,
    append_caption,
    caption_folder,
    compose_caption,
    detect_kind,
    load_captioner,
)
from tui.cli import main as loradeck

# ---- a tiny WD14-style tagger
#
# Input NHWC BGR 0-255 (16x16). Logits come from the mean colour of the whole image
# and of its top half, so the tags say both what colour an image is and which way up
# it was given to the model (EXIF transposing matters).
TAGS = [  # name, category, (weights on B,G,R of the whole image, then of the top half), bias
    ("general", 9, (0, 0, 8, 0, 0, 0), -4),  # a rating: never written
    ("red_hair", 0, (0, 0, 8, 0, 0, 0), -4),  # red image: 0.98
    ("^_^", 0, (0, 0, 6, 0, 0, 0), -4),  # red image: 0.88, underscores kept
    ("watermark", 0, (0, 0, 7, 0, 0, 0), -4),  # red image: 0.95, made undesired in a test
    ("blue_sky", 0, (8, 0, 0, 0, 0, 0), -4),
    ("hatsune_miku", 4, (0, 9, 0, 0, 0, 0), -4),  # green image: 0.993 (a character)
    ("green_theme", 0, (0, 5, 0, 0, 0, 0), -4),  # green image: 0.73
    ("red_on_top", 0, (0, 0, -8, 0, 0, 8), -1),  # upright half-red image: 0.95; sideways or solid: 0.27
]
SIZE = 16


def make_tiny_tagger(folder: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weights = numpy.array([tag[2] for tag in TAGS], dtype=numpy.float32).T / 255.0  # [6, T]
    bias = numpy.array([tag[3] for tag in TAGS], dtype=numpy.float32)
    nodes = [
        helper.make_node("Slice", ["input", "start", "end", "axis"], ["top"]),
        helper.make_node("ReduceMean", ["input"], ["mean_all"], axes=[1, 2], keepdims=0),
        helper.make_node("ReduceMean", ["top"], ["mean_top"], axes=[1, 2], keepdims=0),
        helper.make_node("Concat", ["mean_all", "mean_top"], ["features"], axis=1),
        helper.make_node("MatMul", ["features", "weights"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], ["logits"]),
        helper.make_node("Sigmoid", ["logits"], ["output"]),
    ]
    initializers = [
        numpy_helper.from_array(weights, "weights"),
        numpy_helper.from_array(bias, "bias"),
        numpy_helper.from_array(numpy.array([0], dtype=numpy.int64), "start"),
        numpy_helper.from_array(numpy.array([SIZE // 2], dtype=numpy.int64), "end"),
        numpy_helper.from_array(numpy.array([1], dtype=numpy.int64), "axis"),
    ]
    graph = helper.make_graph(
        nodes, "tiny_tagger",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["batch", SIZE, SIZE, 3])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["batch", len(TAGS)])],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    folder.mkdir(parents=True, exist_ok=True)
    onnx.save(model, folder / "model.onnx")
    rows = ["tag_id,name,category,count"] + [f"{i},{name},{category},100" for i, (name, category, _w, _b) in
                                             enumerate(TAGS)]
    (folder / "selected_tags.csv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    return folder


@pytest.fixture(scope="module")
def tagger_dir(tmp_path_factory) -> Path:
    return make_tiny_tagger(tmp_path_factory.mktemp("models") / "tagger")


def solid(path: Path, colour, size=(SIZE, SIZE)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def half_red_sideways(path: Path) -> Path:
    """Upright (after EXIF orientation 6, "rotate 90° clockwise") the top half is red;
    the stored pixels have the red half on the left."""
    stored = Image.new("RGB", (SIZE, SIZE), (0, 0, 0))
    stored.paste((255, 0, 0), (0, 0, SIZE // 2, SIZE))
    exif = stored.getexif()
    exif[0x0112] = 6
    path.parent.mkdir(parents=True, exist_ok=True)
    stored.save(path, exif=exif.tobytes())
    return path


def read(path: Path) -> bytes:
    return path.read_bytes()


# ---- WD14 tagger


def test_tagger_writes_thresholded_tags_with_prefix_and_suffix(tmp_path, tagger_dir):
    data = tmp_path / "img" / "5_red"
    solid(data / "red.png", (255, 0, 0))
    solid(data / "green.png", (0, 255, 0))
    solid(data / "black.jpg", (0, 0, 0))
    captioner = load_captioner(str(tagger_dir), options=CaptionerOptions(undesired_tags=("watermark",)))
    report = caption_folder(tmp_path / "img", captioner, CaptionRun(prefix="ohwx", suffix="best quality"),
                            batch_size=2)
    assert (report.total, report.written, report.skipped, report.failed) == (3, 3, 0, [])
    # red: general tags most confident first, underscores to spaces except the kaomoji,
    # the rating and the undesired tag left out
    assert read(data / "red.txt") == b"ohwx, red hair, ^_^, best quality\n"
    # green: the character first, then general tags
    assert read(data / "green.txt") == b"ohwx, hatsune miku, green theme, best quality\n"
    assert read(data / "black.txt") == b"ohwx, best quality\n"


def test_tagger_thresholds_and_underscores_are_options(tmp_path, tagger_dir):
    solid(tmp_path / "green.png", (0, 255, 0))
    options = CaptionerOptions(general_threshold=0.8, character_threshold=0.999, underscores_to_spaces=False)
    caption_folder(tmp_path, load_captioner(str(tagger_dir), "wd14", options))
    assert read(tmp_path / "green.txt") == b"\n"  # miku 0.993 < 0.999, green_theme 0.73 < 0.8
    solid(tmp_path / "red.png", (255, 0, 0))
    caption_folder(tmp_path, load_captioner(str(tagger_dir), "wd14", CaptionerOptions(underscores_to_spaces=False)),
                   CaptionRun(existing="overwrite"))
    assert read(tmp_path / "red.txt") == b"red_hair, watermark, ^_^\n"


def test_images_are_exif_transposed_before_captioning(tmp_path, tagger_dir):
    half_red_sideways(tmp_path / "photo.jpg")
    caption_folder(tmp_path, load_captioner(str(tagger_dir)))
    assert b"red_on_top" not in read(tmp_path / "photo.txt")
    assert "red on top" in read(tmp_path / "photo.txt").decode()


def test_skip_append_and_overwrite_existing_captions(tmp_path, tagger_dir):
    solid(tmp_path / "a.png", (255, 0, 0))
    solid(tmp_path / "b.png", (255, 0, 0))
    solid(tmp_path / "c.png", (255, 0, 0))
    (tmp_path / "a.txt").write_bytes(b"my own words, red hair\r\n")
    (tmp_path / "b.txt").write_bytes(b"")  # empty: counts as uncaptioned
    captioner = load_captioner(str(tagger_dir), options=CaptionerOptions(undesired_tags=("watermark", "^_^")))

    report = caption_folder(tmp_path, captioner, CaptionRun(prefix="ohwx"))
    assert (report.written, report.skipped) == (2, 1)
    assert read(tmp_path / "a.txt") == b"my own words, red hair\r\n"
    assert read(tmp_path / "b.txt") == b"ohwx, red hair\n"
    assert read(tmp_path / "c.txt") == b"ohwx, red hair\n"

    report = caption_folder(tmp_path, captioner, CaptionRun(prefix="ohwx", suffix="solo", existing="append"))
    assert report.written == 3
    # the prefix goes in front, new tags at the end, nothing twice, line ending kept
    assert read(tmp_path / "a.txt") == b"ohwx, my own words, red hair, solo\r\n"
    assert read(tmp_path / "b.txt") == b"ohwx, red hair, solo\n"

    caption_folder(tmp_path, captioner, CaptionRun(existing="overwrite", caption_extension=".caption"))
    assert read(tmp_path / "a.caption") == b"red hair\n"
    assert read(tmp_path / "a.txt") == b"ohwx, my own words, red hair, solo\r\n"


def test_corrupt_image_fails_alone(tmp_path, tagger_dir):
    solid(tmp_path / "good.png", (255, 0, 0))
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    report = caption_folder(tmp_path, load_captioner(str(tagger_dir)))
    assert report.written == 1
    assert [path.name for path, _reason in report.failed] == ["bad.jpg"]
    assert not (tmp_path / "bad.txt").exists()


def test_caption_edited_during_the_job_is_not_overwritten(tmp_path, tagger_dir):
    solid(tmp_path / "a.png", (255, 0, 0))
    solid(tmp_path / "b.png", (255, 0, 0))
    tagger = load_captioner(str(tagger_dir))

    class EditsWhileRunning:
        name = "tagger, while the user edits b.txt"

        def caption(self, images):
            (tmp_path / "b.txt").write_bytes(b"typed by the user\n")
            return tagger.caption(images)

    report = caption_folder(tmp_path, EditsWhileRunning())
    assert report.written == 1
    assert read(tmp_path / "b.txt") == b"typed by the user\n"
    assert [path.name for path, _reason in report.failed] == ["b.txt"]


def test_compose_and_append_keep_the_trigger_first():
    assert compose_caption("a man, ohwx, street", "ohwx", "") == "ohwx, a man, street"
    assert compose_caption("", "", "") == ""
    assert append_caption("ohwx ||| city\n", "street, city", "ohwx", "") == "ohwx ||| city, street\n"


def test_kind_is_told_from_folder_or_name(tagger_dir, tmp_path):
    assert detect_kind(str(tagger_dir)) == "wd14"
    assert detect_kind("SmilingWolf/wd-vit-tagger-v3") == "wd14"
    assert detect_kind("Salesforce/blip-image-captioning-large") == "blip"
    assert detect_kind("florence-community/Florence-2-large") == "florence2"
    from engine.errors import UsageError

    with pytest.raises(UsageError):
        detect_kind("someone/mystery-model")
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(UsageError):
        detect_kind(str(tmp_path))


def test_cli_caption_with_progress_json(tmp_path, tagger_dir, capsys):
    solid(tmp_path / "img" / "1_x" / "red.png", (255, 0, 0))
    solid(tmp_path / "img" / "1_x" / "_quarantine" / "hidden.png", (255, 0, 0))
    status = loradeck(["caption", str(tmp_path / "img"), "--model", str(tagger_dir), "--prefix", "ohwx",
                       "--undesired-tags", "watermark, ^_^", "--progress-json"])
    assert status == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [event["type"] for event in events] == ["caption_start", "caption_progress", "caption_progress",
                                                   "caption_done"]
    assert [event["seq"] for event in events] == [0, 1, 2, 3]
    done = {key: value for key, value in events[-1].items() if key not in ("v", "seq", "time", "type")}
    assert done == {"total": 1, "written": 1, "skipped": 0, "failed": 0}
    assert events[2]["path"] == "1_x/red.png" and events[2]["caption"] == "ohwx, red hair"
    assert read(tmp_path / "img" / "1_x" / "red.txt") == b"ohwx, red hair\n"
    assert not (tmp_path / "img" / "1_x" / "_quarantine" / "hidden.txt").exists()


def test_cli_caption_reports_a_missing_model_in_one_line(tmp_path, capsys):
    solid(tmp_path / "red.png", (255, 0, 0))
    status = loradeck(["caption", str(tmp_path), "--model", str(tmp_path / "nope"), "--kind", "wd14"])
    assert status == 1
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and "nope" in error


# ---- BLIP and Florence-2, tiny and random


@pytest.fixture(scope="module")
def blip_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BertTokenizer, BlipConfig, BlipForConditionalGeneration, BlipProcessor
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "photo", "of", "city", "street", "arch",
             "canal", "the", "man"]
    tokenizer = BertTokenizer(vocab={word: i for i, word in enumerate(words)})
    config = BlipConfig(
        text_config=dict(vocab_size=len(words), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                         intermediate_size=37, max_position_embeddings=64, encoder_hidden_size=32,
                         bos_token_id=tokenizer.cls_token_id, pad_token_id=0, sep_token_id=tokenizer.sep_token_id),
        vision_config=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=37,
                           image_size=32, patch_size=16),
        projection_dim=32,
    )
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "blip"
    BlipForConditionalGeneration(config).save_pretrained(folder)
    BlipProcessor(image_processor=BlipImageProcessorPil(size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def florence_dir(tmp_path_factory) -> Path:
    import torch
    from transformers import BartTokenizer, Florence2Config, Florence2ForConditionalGeneration, Florence2Processor
    from transformers.models.clip.image_processing_pil_clip import CLIPImageProcessorPil

    words = ["<s>", "<pad>", "</s>", "<unk>", "a", "Ġa", "Ġphoto", "Ġof", "Ġcity", "Ġstreet", "Ġarch", "Ġcanal",
             "What", "Ġdoes", "Ġthe", "Ġimage", "Ġdescribe", "?"]
    tokenizer = BartTokenizer(vocab={word: i for i, word in enumerate(words)}, merges=[],
                              extra_special_tokens={"image_token": "<image>"})
    # 64x64 pixels through the DaViT strides (4, 2, 2, 2) leave 2x2 features: 4 + 1 image tokens
    image_processor = CLIPImageProcessorPil(size={"height": 64, "width": 64}, do_center_crop=False,
                                            image_seq_length=5)
    text = dict(vocab_size=len(tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
                max_position_embeddings=64, pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                decoder_start_token_id=tokenizer.eos_token_id)
    vision = dict(depths=[1, 1, 1, 1], embed_dim=[8, 8, 16, 16], num_heads=[1, 1, 1, 1], num_groups=[1, 1, 1, 1],
                  window_size=2, projection_dim=16, max_position_embeddings=8, max_temporal_embeddings=4)
    torch.manual_seed(3)
    folder = tmp_path_factory.mktemp("models") / "florence2"
    config = Florence2Config(text_config=text, vision_config=vision, image_token_id=tokenizer.image_token_id)
    Florence2ForConditionalGeneration(config).save_pretrained(folder)
    Florence2Processor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.mark.parametrize("model_fixture, kind", [("blip_dir", "blip"), ("florence_dir", "florence2")])
def test_generative_captioners_write_prefix_model_text_suffix(request, tmp_path, model_fixture, kind):
    model = request.getfixturevalue(model_fixture)
    assert detect_kind(str(model)) == kind
    data = tmp_path / "img"
    solid(data / "a.png", (200, 30, 30), size=(48, 32))
    half_red_sideways(data / "b.jpg")
    (data / "c.txt").write_bytes(b"kept as it is\n")
    solid(data / "c.png", (0, 0, 200))
    options = CaptionerOptions(device="cpu", max_new_tokens=6, num_beams=2)
    captioner = load_captioner(str(model), options=options)
    from engine.captioning.captioners import open_upright

    # What the model says for each upright image, asked directly, one at a time.
    expected = {name: captioner.caption([open_upright(data / name)])[0] for name in ("a.png", "b.jpg")}

    report = caption_folder(data, captioner, CaptionRun(prefix="ohwx", suffix="photo"), batch_size=2)
    assert (report.written, report.skipped, report.failed) == (2, 1, [])
    for name, text in expected.items():
        assert read(data / (Path(name).stem + ".txt")) == (compose_caption(text, "ohwx", "photo") + "\n").encode()
        assert read(data / (Path(name).stem + ".txt")).startswith(b"ohwx")
    assert read(data / "c.txt") == b"kept as it is\n"


def test_cli_caption_runs_blip_from_a_local_folder(tmp_path, blip_dir, capsys):
    solid(tmp_path / "a.png", (10, 200, 30), size=(40, 40))
    status = loradeck(["caption", str(tmp_path), "--model", str(blip_dir), "--device", "cpu",
                       "--max-new-tokens", "4", "--num-beams", "1", "--prefix", "ohwx"])
    assert status == 0
    assert "1 captions written, 0 skipped, 0 failed" in capsys.readouterr().out
    assert read(tmp_path / "a.txt").startswith(b"ohwx")
