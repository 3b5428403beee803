"""The `imagine` command line as a user runs it."""

from __future__ import annotations

import pytest
from PIL import Image

from engine.cli import main
from engine.metadata import read_parameters

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fp32(monkeypatch):
    monkeypatch.setenv("IMAGINE_DTYPE", "fp32")


def test_generate_grid_and_single(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "fox.png"
    assert main(["generate", "a fox --seed 7 --steps 2", "-o", str(out), "--model", str(tiny_model_dir)]) == 0
    grid = Image.open(out)
    assert grid.size == (128, 128)
    assert "Seed: 7" in read_parameters(out.read_bytes())
    assert "seeds 7, 8, 9, 10" in capsys.readouterr().out

    single = tmp_path / "one.png"
    assert main(["generate", "a fox --seed 7 --steps 2", "-o", str(single), "--single", "--model", str(tiny_model_dir)]) == 0
    assert Image.open(single).size == (64, 64)


def test_generate_img2img_and_inpaint(tiny_model_dir, tmp_path):
    init, mask = tmp_path / "in.png", tmp_path / "mask.png"
    Image.new("RGB", (64, 64), "orange").save(init)
    Image.new("L", (64, 64), 255).save(mask)
    out = tmp_path / "out.png"
    assert main(["generate", "a cat --seed 1 --steps 2", "-o", str(out), "--single", "--init", str(init), "--strength", "0.5",
                 "--model", str(tiny_model_dir)]) == 0
    assert "Denoising strength: 0.5" in read_parameters(out.read_bytes())
    assert main(["generate", "a cat --seed 1 --steps 2", "-o", str(out), "--single", "--init", str(init), "--mask", str(mask),
                 "--model", str(tiny_model_dir)]) == 0


def test_permutations_write_one_file_each(tiny_model_dir, tmp_path):
    out = tmp_path / "p.png"
    assert main(["generate", "a {red, blue} fox --seed 3 --steps 1", "-o", str(out), "--single", "--model", str(tiny_model_dir)]) == 0
    first, second = tmp_path / "p-1.png", tmp_path / "p-2.png"
    assert read_parameters(first.read_bytes()).startswith("a red fox")
    assert read_parameters(second.read_bytes()).startswith("a blue fox")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["generate", "a fox --bogus 3"], "--bogus"),
        (["generate", "a fox --seed -1"], "--seed"),
        (["generate", "a fox", "--mask", "m.png"], "Cannot read the mask"),
        (["generate", "a fox", "--model", "/no/such/model.safetensors"], "does not exist"),
    ],
)
def test_errors_are_one_line_without_traceback(args, message, capsys, tiny_model_dir):
    if "--model" not in args:
        args = [*args, "--model", str(tiny_model_dir)]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_models_lists_configured_and_local(tmp_path, monkeypatch, capsys, tiny_model_dir):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    (models_dir / "mine.safetensors").write_bytes(b"")
    monkeypatch.setenv("IMAGINE_MODELS_DIR", str(models_dir))
    monkeypatch.setenv("IMAGINE_MODEL", str(tiny_model_dir))
    monkeypatch.setenv("IMAGINE_MODELS", "xl=stabilityai/sdxl-turbo")
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "xl" in out and "stabilityai/sdxl-turbo" in out and "mine" in out and str(tiny_model_dir) in out


def test_tiny_model_command(tmp_path):
    assert main(["tiny-model", str(tmp_path / "t")]) == 0
    assert (tmp_path / "t" / "model_index.json").exists() and (tmp_path / "t" / "tiny.safetensors").exists()
