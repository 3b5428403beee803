"""The in-process engine on the tiny model: determinism, img2img, inpainting, tiling, progress."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from engine.metadata import read_parameters
from engine.types import FinishReason, GenerationRequest, Progress, PromptError

pytestmark = pytest.mark.slow


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def request(**changes) -> GenerationRequest:
    base = GenerationRequest(prompt="a fox in snow", width=64, height=64, seeds=(7,), steps=3, sampler="euler")
    return base.replace(**changes)


def png_of(color: tuple[int, int, int], size=(64, 64), pattern: bool = True) -> bytes:
    image = Image.new("RGB", size, color)
    if pattern:  # structure, so a changed image is visibly changed
        for x in range(0, size[0], 8):
            image.paste((255 - color[0], color[1], 255 - color[2]), (x, 0, x + 4, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def test_same_seed_same_bytes_and_seeds_differ(tiny_engine):
    results = tiny_engine.generate_sync(request(seeds=(1, 2, 3, 4)))
    again = tiny_engine.generate_sync(request(seeds=(1, 2, 3, 4)))
    assert [r.png for r in results] == [r.png for r in again]
    assert [r.seed for r in results] == [1, 2, 3, 4]
    assert len({r.png for r in results}) == 4
    assert all(r.finish_reason is FinishReason.OK for r in results)
    assert all((r.width, r.height) == (64, 64) for r in results)


def test_image_depends_only_on_its_own_seed(tiny_engine):
    """U3 of a grid is the same picture as a single image with that seed: seeds are per image."""
    import torch
    from safetensors.torch import load

    grid = tiny_engine.generate_sync(request(seeds=(10, 11, 12, 13)))
    single = tiny_engine.generate_sync(request(seeds=(12,)))
    a, b = load(grid[2].latents)["latents"], load(single[0].latents)["latents"]
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-3)


def test_identical_bytes_across_processes(tiny_model_dir, tmp_path):
    outputs = []
    for run in range(2):
        out = tmp_path / f"run{run}.png"
        subprocess.run(
            [sys.executable, "-m", "engine.cli", "generate", "a lighthouse --seed 42 --steps 2", "-o", str(out), "--model", str(tiny_model_dir), "-q"],
            check=True,
            capture_output=True,
            env={**__import__("os").environ, "IMAGINE_DTYPE": "fp32"},
        )
        outputs.append(out.read_bytes())
    assert outputs[0] == outputs[1]
    assert Image.open(io.BytesIO(outputs[0])).size == (128, 128)  # 2x2 grid of 64px images


def test_metadata_in_every_png(tiny_engine):
    result = tiny_engine.generate_sync(request(negative_prompt="blurry", seeds=(99,)))[0]
    text = read_parameters(result.png)
    assert text.splitlines()[0] == "a fox in snow"
    assert "Negative prompt: blurry" in text
    assert "Seed: 99" in text and "Steps: 3" in text and "Size: 64x64" in text and "Sampler: Euler" in text


def test_img2img_strength(tiny_engine):
    init = png_of((200, 40, 40))
    # What the model can reproduce of the input is its VAE round trip (random weights here), so
    # closeness is measured against that: low strength stays near it, strength 1 departs.
    roundtrip = tiny_engine.generate_sync(request(init_image=init, strength=0.01, steps=100))[0]
    low = tiny_engine.generate_sync(request(init_image=init, strength=0.05, steps=20))[0]
    high = tiny_engine.generate_sync(request(init_image=init, strength=1.0, steps=20))[0]
    near = np.abs(pixels(low.png) - pixels(roundtrip.png)).mean()
    far = np.abs(pixels(high.png) - pixels(roundtrip.png)).mean()
    assert near < 8
    assert far > 3 * near


def test_inpainting_changes_only_the_masked_area(tiny_engine):
    init = png_of((30, 160, 90))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))  # repaint the left half
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    result = tiny_engine.generate_sync(request(init_image=init, mask=buffer.getvalue(), strength=1.0))[0]
    before, after = pixels(init), pixels(result.png)
    assert np.abs(after[:, 40:] - before[:, 40:]).max() <= 2  # kept: right half (past the blend edge)
    assert np.abs(after[:, :24] - before[:, :24]).mean() > 20  # repainted: left half


def test_tiling_changes_the_image_and_wraps(tiny_engine):
    plain = tiny_engine.generate_sync(request(seeds=(5,)))[0]
    tiled = tiny_engine.generate_sync(request(seeds=(5,), tiling=True))[0]
    assert plain.png != tiled.png
    # circular padding restored afterwards: a plain job after a tiled one is unchanged
    assert tiny_engine.generate_sync(request(seeds=(5,)))[0].png == plain.png


def test_chaos_varies_images_deterministically(tiny_engine):
    calm = tiny_engine.generate_sync(request(seeds=(8,)))[0]
    wild = tiny_engine.generate_sync(request(seeds=(8,), chaos=80))[0]
    assert wild.png != calm.png
    assert tiny_engine.generate_sync(request(seeds=(8,), chaos=80))[0].png == wild.png


@pytest.mark.parametrize("sampler", ["euler", "euler_a", "dpmpp_2m_karras", "ddim", "lcm", "heun", "unipc"])
def test_samplers_run(tiny_engine, sampler):
    result = tiny_engine.generate_sync(request(sampler=sampler, steps=2))[0]
    assert result.finish_reason is FinishReason.OK


def test_long_prompt_is_chunked_not_truncated(tiny_engine):
    # The tiny tokenizer is character-level: 200 characters are ~3 windows of 77 tokens.
    head = "x" * 150
    a = tiny_engine.generate_sync(request(prompt=head + " red"))[0]
    b = tiny_engine.generate_sync(request(prompt=head + " blue"))[0]
    assert a.png != b.png  # words past the first 77 tokens still change the image


def test_decode_full_from_latents_equals_fresh_run(tiny_engine):
    results = tiny_engine.generate_sync(request(seeds=(21, 22)))
    fresh = tiny_engine.generate_sync(request(seeds=(22,)))[0]
    decoded = tiny_engine.decode_full_sync(request(seeds=(21, 22)), results[1])
    assert np.abs(pixels(decoded) - pixels(fresh.png)).max() <= 2


def test_progress_and_preview(tiny_engine):
    seen: list[Progress] = []
    tiny_engine.generate_sync(request(steps=4, seeds=(1, 2, 3, 4)), on_progress=seen.append, preview=True)
    assert [p.step for p in seen] == [1, 2, 3, 4] and all(p.total == 4 for p in seen)
    preview = Image.open(io.BytesIO(seen[-1].preview))
    assert preview.format == "JPEG" and preview.size == (64, 64)  # 2x2 tiles of 8x8 latents, x4


def test_validation_errors_name_the_field(tiny_engine):
    with pytest.raises(PromptError) as error:
        tiny_engine.generate_sync(request(width=100))
    assert error.value.parameter == "width" and "multiple of 64" in str(error.value)
    with pytest.raises(PromptError, match="Unknown model"):
        tiny_engine.generate_sync(request(model="nope"))


async def test_async_generate_does_not_block_and_can_be_cancelled(tiny_engine):
    ticks = 0
    steps: list[Progress] = []

    async def ticker():
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    results = await tiny_engine.generate(request(steps=6), on_progress=steps.append)
    assert len(results) == 1 and len(steps) == 6
    assert ticks > 3  # the loop kept running while the worker thread computed

    cancelled: list[Progress] = []
    started = asyncio.Event()

    def on_progress(progress: Progress) -> None:
        cancelled.append(progress)
        started.set()

    job = asyncio.create_task(tiny_engine.generate(request(steps=150, seeds=(1, 2, 3, 4)), on_progress=on_progress))
    await asyncio.wait_for(started.wait(), 30)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    # the worker thread stops at its next step and is free for the next job
    assert len(await asyncio.wait_for(tiny_engine.generate(request(steps=1)), 30)) == 1
    await asyncio.sleep(0)
    assert len(cancelled) < 150
    task.cancel()


def test_grid_uses_tiny_decoder_and_u_decodes_full(tiny_engine, tiny_model_dir):
    from engine.config import EngineConfig
    from engine.diffusers_engine import DiffusersEngine

    assert tiny_engine._model(None).tiny_decoder is not None  # found in the model's taesd/ folder
    grid = tiny_engine.generate_sync(request(seeds=(31, 32)))
    full = tiny_engine.decode_full_sync(request(seeds=(31, 32)), grid[0])
    assert full != grid[0].png  # the grid was decoded cheaply, U decodes with the full VAE
    plain = DiffusersEngine(EngineConfig(model=str(tiny_model_dir), dtype="fp32", tiny_decoder="off"))
    assert plain.generate_sync(request(seeds=(31, 32)))[0].png == full


def test_missing_tiny_decoder_falls_back_and_says_so(tiny_model_dir, tmp_path, caplog):
    from engine.config import EngineConfig
    from engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(EngineConfig(model=str(tiny_model_dir), dtype="fp32", tiny_decoder=str(tmp_path / "none")))
    with caplog.at_level("WARNING"):
        results = engine.generate_sync(request(seeds=(1, 2)))
    assert len(results) == 2
    assert "grids will decode with the full VAE" in caplog.text


def test_bf16_stays_close_to_fp32(tiny_model_dir, tiny_engine):
    """The CPU fast path computes in bf16; on the same model it must stay near fp32 (PSNR >= 25 dB)."""
    from engine.config import EngineConfig
    from engine.diffusers_engine import DiffusersEngine

    bf16 = DiffusersEngine(EngineConfig(model=str(tiny_model_dir), dtype="bf16", tiny_decoder="off"))
    job = request(seeds=(4,), steps=4)
    a = pixels(tiny_engine.generate_sync(job)[0].png).astype(np.float64)
    b = pixels(bf16.generate_sync(job)[0].png).astype(np.float64)
    mse = ((a - b) ** 2).mean()
    psnr = 10 * np.log10(255**2 / max(mse, 1e-9))
    assert psnr >= 25, psnr


def test_engine_around_an_in_memory_pipeline():
    from engine.diffusers_engine import DiffusersEngine
    from engine.testing import build_tiny_pipeline

    engine = DiffusersEngine.from_pipeline(build_tiny_pipeline(), "in-memory")
    assert engine.models() == ["in-memory"] and engine.profile().base_resolution == 64
    results = engine.generate_sync(request(seeds=(1, 2)))
    assert [r.seed for r in results] == [1, 2] and "Model: in-memory" in results[0].parameters


async def test_progress_callbacks_run_in_the_callers_context(tiny_engine):
    import contextvars

    job_id = contextvars.ContextVar("job_id", default=None)
    job_id.set(42)
    seen: list[object] = []
    await tiny_engine.generate(request(steps=2), on_progress=lambda progress: seen.append(job_id.get()))
    assert seen == [42, 42]


def test_no_negative_embedding_without_guidance(tiny_engine):
    """Turbo jobs (guidance off) never read the negative prompt, so its text encoder pass is skipped."""
    calls: list[object] = []
    model = tiny_engine._model(None)
    compel = model.compel

    def spy(positive, negative_prompt=None):
        calls.append(negative_prompt)
        return compel(positive, negative_prompt=negative_prompt)

    model.compel = spy
    try:
        tiny_engine.generate_sync(request(prompt="unguided fox", negative_prompt="blurry", guidance_scale=0.0))
        tiny_engine.generate_sync(request(prompt="guided fox", negative_prompt="blurry", guidance_scale=7.0))
    finally:
        model.compel = compel
    assert calls == [None, "blurry"]


def test_img2img_encodes_the_init_image_once_with_the_pipelines_results():
    from engine.diffusers_engine import DiffusersEngine
    from engine.testing import build_tiny_pipeline

    engine = DiffusersEngine.from_pipeline(build_tiny_pipeline(), "m")
    job = request(seeds=(1, 2, 3), steps=4, sampler="euler_a", init_image=png_of((200, 30, 60)), strength=0.6)
    encodes: list[int] = []
    engine._model(None).pipe.vae.encoder.register_forward_hook(lambda module, args, out: encodes.append(args[0].shape[0]))
    ours = engine.generate_sync(job)
    assert encodes == [1]  # one encode of one image for three seeds

    engine._encode_once = lambda pipe, init, generators: init  # diffusers' own path: one encode per seed
    theirs = engine.generate_sync(job)
    assert len(encodes) == 4
    assert [r.latents for r in ours] == [r.latents for r in theirs]
