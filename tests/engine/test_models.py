"""Loading models offline: a diffusers folder, a single-file checkpoint, and clear errors otherwise."""

from __future__ import annotations

import io
import shutil

import pytest
from PIL import Image

from engine.config import EngineConfig
from engine.diffusers_engine import DiffusersEngine
from engine.models import guess_profile, load_pipeline
from engine.types import EngineUnavailable, GenerationRequest

pytestmark = pytest.mark.slow

REQUEST = GenerationRequest(prompt="a red barn", width=64, height=64, seeds=(3, 4), steps=2, sampler="euler")


def test_single_file_checkpoint_gives_the_same_images_as_the_folder(tiny_model_dir, tiny_engine):
    single = DiffusersEngine(EngineConfig(model=str(tiny_model_dir / "tiny.safetensors"), dtype="fp32"))
    assert single.profile().name == "tiny"
    from_file = single.generate_sync(REQUEST)
    from_folder = tiny_engine.generate_sync(REQUEST)
    assert [r.latents for r in from_file] == [r.latents for r in from_folder]
    # and the same pixels; the PNG bytes differ only in the model name of their metadata
    for a, b in zip(from_file, from_folder, strict=True):
        assert Image.open(io.BytesIO(a.png)).tobytes() == Image.open(io.BytesIO(b.png)).tobytes()


def test_single_file_with_config_elsewhere(tiny_model_dir, tmp_path):
    checkpoint = shutil.copy(tiny_model_dir / "tiny.safetensors", tmp_path / "mine.safetensors")
    with pytest.raises(EngineUnavailable, match="IMAGINE_MODEL_CONFIG"):
        load_pipeline(str(checkpoint), device="cpu", dtype=None)
    pipe = load_pipeline(str(checkpoint), device="cpu", dtype=None, config_dir=str(tiny_model_dir))
    assert pipe.unet.config.cross_attention_dim == 32


def test_hub_id_offline_says_how_to_provide_a_model():
    with pytest.raises(EngineUnavailable) as error:
        load_pipeline("someone/not-downloaded", device="cpu", dtype=None)
    message = str(error.value)
    assert "not on this machine" in message and "IMAGINE_MODEL" in message


@pytest.mark.parametrize(
    ("spec", "fragment"),
    [("/nonexistent/model.safetensors", "does not exist"), ("justaname", "neither a local folder")],
)
def test_bad_specs(spec, fragment):
    with pytest.raises(EngineUnavailable, match=fragment):
        load_pipeline(spec, device="cpu", dtype=None)


def test_folder_without_model_index(tmp_path):
    with pytest.raises(EngineUnavailable, match="model_index.json"):
        load_pipeline(str(tmp_path), device="cpu", dtype=None)


def test_profiles_from_configs_and_names(tiny_model_dir):
    tiny = guess_profile("tiny", str(tiny_model_dir))
    assert (tiny.family, tiny.base_resolution) == ("sd1", 64)
    turbo = guess_profile("sd-turbo", "stabilityai/sd-turbo")
    assert turbo.turbo and turbo.default_guidance == 0.0 and turbo.default_steps == 1 and turbo.base_resolution == 512
    xl = guess_profile("sdxl-turbo", "stabilityai/sdxl-turbo")
    assert xl.family == "sdxl" and xl.base_resolution == 1024
    assert guess_profile("sd15", "runwayml/stable-diffusion-v1-5").default_guidance == 7.0


def test_config_reads_environment_and_hides_secrets():
    config = EngineConfig.from_env(
        {"IMAGINE_MODEL": "/m/a", "IMAGINE_MODELS": "b=/m/b; c=org/c", "STABILITY_API_KEY": "sk-secret", "IMAGINE_DTYPE": "bf16"}
    )
    assert config.model_specs() == {"a": "/m/a", "b": "/m/b", "c": "org/c"}
    assert config.dtype == "bf16"
    assert "sk-secret" not in repr(config)
    with pytest.raises(ValueError, match="name=path_or_id"):
        EngineConfig.from_env({"IMAGINE_MODELS": "oops"})


def test_factory_puts_the_blocklist_in_front_of_any_engine(tiny_model_dir):
    import asyncio

    from engine.factory import build_engine
    from engine.types import FinishReason

    config = EngineConfig.from_env({"IMAGINE_MODEL": str(tiny_model_dir), "IMAGINE_DTYPE": "fp32", "IMAGINE_BLOCKLIST": "gore, Bad Word"})
    assert config.blocklist == ("gore", "bad word")
    engine = build_engine(config)
    filtered = asyncio.run(engine.generate(REQUEST.replace(prompt="some BAD WORD here")))
    assert [r.finish_reason for r in filtered] == [FinishReason.FILTERED] * 2
    fine = asyncio.run(engine.generate(REQUEST.replace(prompt="a goreless meadow")))
    assert [r.finish_reason for r in fine] == [FinishReason.OK] * 2


def test_tiny_model_files_are_readable_by_every_user(tiny_model_dir):
    import stat

    for path in tiny_model_dir.rglob("*"):
        mode = stat.S_IMODE(path.stat().st_mode)
        assert mode & stat.S_IROTH, path


def test_sdxl_layout_generates_img2img_and_inpaints(tmp_path):
    """SDXL has two text encoders and pooled, size-conditioned embeddings: a path of its own."""
    from engine.testing import build_tiny_sdxl_pipeline

    folder = tmp_path / "tiny-xl"
    build_tiny_sdxl_pipeline(folder)
    engine = DiffusersEngine(EngineConfig(model=str(folder), dtype="fp32", tiny_decoder="off"))
    assert engine.profile().family == "sdxl"
    job = GenerationRequest(prompt="a (red:1.3) fox::2 snow", negative_prompt="blur", width=64, height=64, seeds=(1, 2), steps=2, sampler="euler")
    grid = engine.generate_sync(job)
    assert len({r.png for r in grid}) == 2 and engine._model(None).profile.family == "sdxl"
    assert engine.generate_sync(job)[0].png == grid[0].png
    varied = engine.generate_sync(job.replace(init_image=grid[0].png, strength=0.5, seeds=(3,)))[0]
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    buffer = io.BytesIO()
    mask.save(buffer, format="PNG")
    painted = engine.generate_sync(job.replace(init_image=grid[0].png, mask=buffer.getvalue(), strength=1.0, seeds=(3,)))[0]
    assert varied.png != grid[0].png and painted.png != grid[0].png
    assert engine.decode_full_sync(job, grid[1]) == grid[1].png


def test_fp16_vae_that_asks_for_it_decodes_in_fp32(tmp_path):
    """SDXL's VAE overflows in fp16; with force_upcast set, the decode must run in fp32 and come back."""
    import torch

    from engine.testing import build_tiny_sdxl_pipeline

    pipe = build_tiny_sdxl_pipeline().to(torch.float16)
    assert pipe.vae.config.force_upcast
    seen: list[torch.dtype] = []
    pipe.vae.decoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    engine = DiffusersEngine.from_pipeline(pipe, "xl-fp16")
    engine.decode_full_sync(REQUEST, engine.generate_sync(REQUEST.replace(seeds=(5,), steps=1))[0])
    assert seen and set(seen) == {torch.float32}
    assert pipe.vae.dtype == torch.float16  # and back afterwards
