"""`loradeck grid`: every prompt × every checkpoint × every weight, labelled, on the tiny models
(of every family)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from engine.config.schema import TrainConfig, replace_setting, save_config, with_absolute_paths
from engine.errors import LoradeckError
from engine.run.events import EventWriter
from engine.sampling.grid import GRID_TEXT_KEY, compose_grid, find_checkpoints, parse_weights
from engine.network.lora import LoraNetwork, save_lora_file
from engine.model.loading import load_base_model
from engine.run.folder import RunDir
from tui.cli import main



def finished_run(tmp_path, tiny_model_dir, prompts: str) -> RunDir:
    """A finished run's folder: frozen config, two LoRA files with Kohya metadata, a sample event."""
    config = replace_setting(TrainConfig(), "model.pretrained_model", str(tiny_model_dir))
    config = replace_setting(config, "sampling.prompts", prompts)
    config = replace_setting(config, "saving.output_name", "tiny-lora")
    run = RunDir(tmp_path / "runs" / "tiny-lora")
    run.create()
    save_config(with_absolute_paths(config, tmp_path), run.config)
    model = load_base_model(config, tmp_path, device="cpu", dtype=torch.float32)
    network = LoraNetwork.attach(model.family, model, rank=4, alpha=4.0)
    generator = torch.Generator().manual_seed(0)
    # written out of order on purpose: the grid orders columns by the step in the metadata
    for name, epoch, step in (("tiny-lora", 2, 16), ("tiny-lora-000001", 1, 8)):
        with torch.no_grad():
            for parameter in network.parameters():
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
        save_lora_file(
            run.checkpoints / f"{name}.safetensors",
            network.state_dict(torch.float16),
            {"ss_epoch": epoch, "ss_steps": step, "ss_network_dim": 4},
        )
    with EventWriter(run.path, fsync=False) as events:
        events.emit("sample", path="samples/e0001-s000008-p00.png", epoch=1, step=8, prompt_index=0,
                    prompt="a red house", negative_prompt="", seed=777, width=64, height=64, steps=2,
                    cfg=7.5, sampler="euler_a")
    return run


def test_grid_rows_columns_and_labels(tmp_path, family_model_dir, capsys):
    run = finished_run(tmp_path, family_model_dir, "a red house --w 64 --h 64 --s 1\na city street --w 64 --h 96 --s 1 --d 5 --ss ddim")
    out = tmp_path / "compare.png"
    assert main(["grid", str(run.path), "--weights", "0,1.0", "-o", str(out)]) == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == str(out)

    grid = Image.open(out)
    layout = json.loads(grid.text[GRID_TEXT_KEY])
    assert layout["checkpoints"] == ["tiny-lora-000001.safetensors", "tiny-lora.safetensors"]
    assert layout["columns"] == ["tiny-lora-000001\nepoch 1, step 8", "tiny-lora\nepoch 2, step 16"]
    assert layout["weights"] == [0.0, 1.0]
    rows = layout["rows"]
    assert len(rows) == 4  # 2 prompts x 2 weights
    assert [row.split("\n")[0] for row in rows] == ["a red house", "a red house", "a city street", "a city street"]
    # the unseeded prompt takes the seed the trainer wrote down for it
    assert [row.split("\n")[1] for row in rows] == [
        "weight 0 | seed 777", "weight 1 | seed 777", "weight 0 | seed 5", "weight 1 | seed 5"
    ]
    assert "ddim 1 step | CFG 7.5 | 64x96" in rows[2]

    cells = layout["cells"]
    assert [len(row) for row in cells] == [2, 2, 2, 2]
    assert [box[2:] for box in cells[0]] == [[64, 64], [64, 64]]
    assert [box[2:] for box in cells[3]] == [[64, 96], [64, 96]]
    # rows top to bottom, columns left to right, all inside the image, none overlapping
    for row in cells:
        assert len({box[1] for box in row}) == 1
        assert row[0][0] + row[0][2] < row[1][0]
    tops = [row[0][1] for row in cells]
    assert all(tops[i] + cells[i][0][3] <= tops[i + 1] for i in range(3))
    assert tops[0] >= layout["header_height"] and cells[0][0][0] >= layout["label_width"]
    assert cells[3][1][0] + 64 <= grid.width and tops[3] + 96 <= grid.height

    pixels = np.asarray(grid.convert("RGB")).astype(int)

    def cell(row: int, column: int) -> np.ndarray:
        x, y, w, h = cells[row][column]
        return pixels[y : y + h, x : x + w]

    # weight 0 is the base model: the same image in every column; weight 1 shows each LoRA
    assert np.array_equal(cell(0, 0), cell(0, 1)) and np.array_equal(cell(2, 0), cell(2, 1))
    assert not np.array_equal(cell(1, 0), cell(1, 1))
    assert not np.array_equal(cell(0, 0), cell(1, 0))
    # labels are drawn: dark ink in the header above each column and left of each row
    header = layout["header_height"]
    for x, _, w, _ in cells[0]:
        assert (pixels[:header, x : x + w] < 128).any()
    for row in cells:
        _, y, _, h = row[0]
        assert (pixels[y : y + h, : layout["label_width"]] < 128).any()


def test_grid_with_a_prompts_file_and_default_output(tmp_path, tiny_model_dir, capsys):
    run = finished_run(tmp_path, tiny_model_dir, "")
    prompts = tmp_path / "grid-prompts.txt"
    prompts.write_text("# one prompt\na dog --w 64 --h 64 --s 1 --d 3 --frames 4\n", encoding="utf-8")
    assert main(["grid", str(run.path), "--prompts", str(prompts)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(run.path / "grid.png")
    assert "unknown flag --frames" in captured.err
    layout = json.loads(Image.open(run.path / "grid.png").text[GRID_TEXT_KEY])
    assert len(layout["rows"]) == 1 and len(layout["columns"]) == 2


def test_grid_refuses_clearly(tmp_path, tiny_model_dir, capsys):
    assert main(["grid", str(tmp_path / "nowhere")]) == 1
    assert "not a run folder" in capsys.readouterr().err
    run = finished_run(tmp_path, tiny_model_dir, "")
    assert main(["grid", str(run.path)]) == 1
    assert "no sample prompts" in capsys.readouterr().err
    assert main(["grid", str(run.path), "--weights", "0.5,x"]) == 2  # usage: exit status 2
    assert "--weights: 'x' is not a number" in capsys.readouterr().err
    for path in run.checkpoints.iterdir():
        path.unlink()
    assert main(["grid", str(run.path)]) == 1
    assert "no LoRA files" in capsys.readouterr().err


def test_parse_weights():
    assert parse_weights("0.6, 0.8,1.0") == [0.6, 0.8, 1.0]
    with pytest.raises(LoradeckError):
        parse_weights(" , ")


def test_find_checkpoints_orders_by_step(tmp_path, tiny_model_dir):
    run = finished_run(tmp_path, tiny_model_dir, "")
    assert [(c.epoch, c.step) for c in find_checkpoints(run)] == [(1, 8), (2, 16)]


def test_compose_grid_sizes_mixed_rows():
    red = Image.new("RGB", (64, 32), (255, 0, 0))
    blue = Image.new("RGB", (48, 80), (0, 0, 255))
    grid, layout = compose_grid([[red, red, red], [blue, blue, blue]], ["r0", "r1"], ["a", "b", "c"])
    gutter = 4
    assert grid.size == (layout["label_width"] + 3 * 64 + 2 * gutter, layout["header_height"] + 32 + 80 + gutter)
    x, y, w, h = layout["cells"][1][2]
    assert (w, h) == (48, 80)
    assert grid.getpixel((x + 1, y + 1)) == (0, 0, 255)


def test_compose_grid_rows_grow_to_fit_their_labels():
    small = Image.new("RGB", (64, 16), (255, 0, 0))
    label = "a very long prompt " * 30 + "\nweight 1 | seed 5\neuler_a 30 steps | CFG 7.5 | 64x16"
    grid, layout = compose_grid([[small], [small]], [label, "short"], ["only column"])
    first_top, second_top = layout["cells"][0][0][1], layout["cells"][1][0][1]
    assert second_top - first_top > 16 + 4  # the first row is as tall as its label, not its image
    pixels = np.asarray(grid.convert("L"))
    label_band = pixels[first_top:second_top, : layout["label_width"]]
    assert (label_band[-30:] < 128).any()  # the last label line (sampler, size) is drawn
