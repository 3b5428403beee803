"""`imagine serve-grpc` against the UNMODIFIED stability-sdk client (`StabilityInference`) on loopback."""

from __future__ import annotations

import io
import time

import grpc
import numpy as np
import pytest
from PIL import Image
from stability_sdk.client import StabilityInference
from stability_sdk.interfaces.gooseai.generation import generation_pb2 as generation
from stability_sdk.interfaces.gooseai.generation import generation_pb2_grpc as generation_grpc

from engine.content_filter import with_blocklist
from engine.grpc_server import PROGRESS_MIME, TlsFiles, parse_engine_ids, read_api_keys
from engine.metadata import read_parameters
from engine.types import EngineUnavailable, GenerationRequest, ImagineError, PromptError
from tests.engine.netfixtures import (
    FakeEngine,
    LoopThread,
    StepCountingEngine,
    free_port_ending_443,
    grpc_server,
    png_of,
    process_tls_files,
)

pytestmark = pytest.mark.slow

BLOCKED = "forbidden"


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


@pytest.fixture(scope="module")
def counted(tiny_engine):
    return StepCountingEngine(tiny_engine)


@pytest.fixture(scope="module")
def tiny_server(loop, counted):
    """The tiny model behind a blocklist, with an extra engine id, as `serve-grpc` builds it."""
    engine = with_blocklist(counted, [BLOCKED])
    ids = parse_engine_ids([f"tiny-sd={counted.models()[0]}"], engine.models())
    with grpc_server(loop, engine, engine_ids=ids) as port:
        yield port


def client(port: int, **options) -> StabilityInference:
    return StabilityInference(host=f"127.0.0.1:{port}", engine="tiny-sd", wait_for_ready=False, **options)


def images(answers) -> list:
    """Every image artifact, checking the stock client's expectation of one Answer per image."""
    found = []
    for answer in answers:
        arts = [a for a in answer.artifacts if a.type == generation.ARTIFACT_IMAGE]
        assert len(arts) <= 1
        found += arts
    return found


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def local(tiny_engine, **fields) -> list[bytes]:
    """The same job in process; the sampler is the model's default, as when the client sends none."""
    sampler = tiny_engine.profile().default_sampler
    base = GenerationRequest(prompt="a fox in snow", width=64, height=64, seeds=(7,), steps=2, guidance_scale=7.0, sampler=sampler)
    return [r.png for r in tiny_engine.generate_sync(base.replace(**fields))]


def test_txt2img_four_seeds_same_bytes_as_in_process(tiny_server, tiny_engine):
    answers = list(
        client(tiny_server).generate(
            "a fox in snow", width=64, height=64, seed=[11, 12, 13, 14], samples=4, steps=2, cfg_scale=7.0,
            sampler=generation.SAMPLER_K_EULER,
        )
    )
    arts = images(answers)
    assert len(answers) == 4 and len(arts) == 4
    assert [a.seed for a in arts] == [11, 12, 13, 14]
    assert [a.index for a in arts] == [0, 1, 2, 3]
    assert all(a.finish_reason == generation.NULL and a.mime == "image/png" for a in arts)
    expected = local(tiny_engine, seeds=(11, 12, 13, 14), sampler="euler")
    assert [a.binary for a in arts] == expected
    assert len(set(expected)) == 4


def test_negative_weight_is_the_negative_prompt_and_style_preset_applies(tiny_server, tiny_engine):
    prompts = [
        generation.Prompt(text="a fox in snow", parameters=generation.PromptParameters(weight=1.0)),
        generation.Prompt(text="blurry", parameters=generation.PromptParameters(weight=-1.0)),
    ]
    arts = images(client(tiny_server).generate(prompts, width=64, height=64, seed=5, steps=2, style_preset="anime"))
    assert [a.binary for a in arts] == local(tiny_engine, seeds=(5,), negative_prompt="blurry", style="anime")
    assert "Negative prompt: blurry" in read_parameters(arts[0].binary)
    assert "Style: anime" in read_parameters(arts[0].binary)


def test_img2img_start_schedule_is_strength(tiny_server, tiny_engine):
    init = Image.open(io.BytesIO(png_of((200, 40, 90))))
    arts = images(client(tiny_server).generate("a fox in snow", init_image=init, start_schedule=0.6, width=64, height=64, seed=3, steps=4))
    sent = io.BytesIO()
    init.save(sent, format="PNG")
    assert [a.binary for a in arts] == local(tiny_engine, seeds=(3,), steps=4, init_image=sent.getvalue(), strength=0.6)
    assert "Denoising strength: 0.6" in read_parameters(arts[0].binary)


def test_inpainting_reads_the_sdk_mask_convention(tiny_server, tiny_engine):
    """SDK masks: black (0) = change, white (255) = keep; ours is the opposite."""
    init_png = png_of((30, 160, 220))
    init = Image.open(io.BytesIO(init_png))
    sdk_mask = Image.new("L", (64, 64), 255)
    sdk_mask.paste(0, (0, 0, 32, 64))  # change the left half, keep the right half
    arts = images(
        client(tiny_server).generate(
            "a fox in snow", init_image=init, mask_image=sdk_mask, start_schedule=1.0, width=64, height=64, seed=9, steps=2
        )
    )
    out, original = pixels(arts[0].binary), pixels(init_png)
    assert np.abs(out[:, 40:] - original[:, 40:]).max() <= 2  # kept: the user's pixels come back
    assert np.abs(out[:, :24] - original[:, :24]).mean() > 10  # changed
    ours = Image.new("L", (64, 64), 0)
    ours.paste(255, (0, 0, 32, 64))
    mask_png, init_sent = io.BytesIO(), io.BytesIO()
    ours.save(mask_png, format="PNG")
    init.save(init_sent, format="PNG")
    expected = local(tiny_engine, seeds=(9,), init_image=init_sent.getvalue(), mask=mask_png.getvalue(), strength=1.0)
    assert [a.binary for a in arts] == expected


def test_blocked_prompt_answers_filter_without_running_the_model(tiny_server, counted):
    before = len(counted.calls)
    arts = images(client(tiny_server).generate(f"a {BLOCKED} picture", width=64, height=64, seed=[1, 2], samples=2, steps=2))
    assert [a.finish_reason for a in arts] == [generation.FILTER, generation.FILTER]
    assert [a.seed for a in arts] == [1, 2]
    assert len(counted.calls) == before


def test_unknown_engine_is_not_found(tiny_server):
    sdk = StabilityInference(host=f"127.0.0.1:{tiny_server}", engine="stable-diffusion-xl-1024-v1-0", wait_for_ready=False)
    with pytest.raises(grpc.RpcError) as caught:
        list(sdk.generate("a fox", width=64, height=64))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert "tiny-sd" in caught.value.details()


@pytest.mark.parametrize(
    ("options", "words"),
    [
        ({"width": 100, "height": 64}, "width 100 must be a multiple of 64"),
        ({"steps": 500}, "steps 500"),
        ({"sampler": generation.SAMPLER_K_LMS}, "SAMPLER_K_LMS is not available"),
        ({"style_preset": "watercolour"}, "watercolour"),
        ({"samples": 11, "seed": 1}, "1 to 10 images"),
        ({"samples": 1_000_000_000, "seed": 1}, "lower samples"),
        ({"prompt": ""}, "prompt is empty"),
    ],
)
def test_bad_parameters_are_invalid_argument_with_a_readable_message(tiny_server, counted, options, words):
    before = len(counted.calls)
    options = {"prompt": "a fox", "width": 64, "height": 64, **options}
    with pytest.raises(grpc.RpcError) as caught:
        list(client(tiny_server).generate(**options))
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert words in caught.value.details()
    assert len(counted.calls) == before


def test_unreadable_init_image_is_invalid_argument(tiny_server):
    channel = grpc.insecure_channel(f"127.0.0.1:{tiny_server}")
    request = generation.Request(
        engine_id="tiny-sd",
        prompt=[generation.Prompt(text="a fox"), generation.Prompt(artifact=generation.Artifact(type=generation.ARTIFACT_IMAGE, binary=b"not a png"))],
        image=generation.ImageParameters(width=64, height=64, seed=[1]),
    )
    with pytest.raises(grpc.RpcError) as caught:
        list(generation_grpc.GenerationServiceStub(channel).Generate(request, timeout=10))
    channel.close()
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "init image is not a readable image" in caught.value.details()


def test_cancelling_the_call_stops_the_model(tiny_server, counted):
    """A raw stub cancels the call after the first progress answer; the denoising loop stops."""
    channel = grpc.insecure_channel(f"127.0.0.1:{tiny_server}")
    extras = generation.Request().extras
    extras.update({"imagine": {"progress": True}})
    request = generation.Request(
        engine_id="tiny-sd",
        prompt=[generation.Prompt(text="a slow fox")],
        image=generation.ImageParameters(width=64, height=64, seed=[1], steps=150),
        extras=extras,
    )
    call = generation_grpc.GenerationServiceStub(channel).Generate(request, timeout=60)
    first = next(call)
    assert first.artifacts[0].mime == PROGRESS_MIME
    call.cancel()
    deadline = time.monotonic() + 10
    steps = counted.steps_run
    while time.monotonic() < deadline:  # the worker stops at its next step
        time.sleep(0.3)
        if counted.steps_run == steps:
            break
        steps = counted.steps_run
    assert counted.steps_run < 100
    channel.close()


def test_stock_client_closing_the_stream_cancels_the_engine_job(loop):
    engine = FakeEngine(step_delay=0.05, steps=400)
    with grpc_server(loop, engine, keepalive_s=0.05) as port:
        stream = StabilityInference(host=f"127.0.0.1:{port}", engine="fake", wait_for_ready=False).generate(
            "a fox", width=64, height=64
        )
        keepalive = next(stream)
        assert len(keepalive.artifacts) == 0  # the client sees an empty keepalive answer while it waits
        stream.close()
        deadline = time.monotonic() + 5
        while engine.cancelled == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
    assert engine.cancelled == 1 and engine.finished == 0
    assert engine.steps_run < 400


def test_keepalives_while_working_then_exactly_the_images(loop):
    engine = FakeEngine(step_delay=0.04, steps=8)
    with grpc_server(loop, engine, keepalive_s=0.05) as port:
        sdk = StabilityInference(host=f"127.0.0.1:{port}", engine="fake", wait_for_ready=False)
        answers = list(sdk.generate("a fox", width=64, height=64, seed=[4, 5], samples=2))
    assert any(len(a.artifacts) == 0 for a in answers)
    assert [a.seed for a in images(answers)] == [4, 5]
    assert all(a.type == generation.ARTIFACT_IMAGE for answer in answers for a in answer.artifacts)


def test_progress_only_when_asked(loop):
    engine = FakeEngine(steps=3)
    with grpc_server(loop, engine) as port:
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = generation_grpc.GenerationServiceStub(channel)
        request = generation.Request(engine_id="fake", prompt=[generation.Prompt(text="a fox")], image=generation.ImageParameters(width=64, height=64, seed=[1]))
        plain = list(stub.Generate(request, timeout=10))
        request.extras.update({"imagine": {"progress": True, "preview": True}})
        chatty = list(stub.Generate(request, timeout=10))
        request.extras.update({"imagine": {"progress": "yes"}})
        with pytest.raises(grpc.RpcError) as caught:
            list(stub.Generate(request, timeout=10))
        channel.close()
    assert all(a.mime == "image/png" for answer in plain for a in answer.artifacts)
    progress = [answer for answer in chatty if answer.artifacts[0].mime == PROGRESS_MIME]
    assert [p.artifacts[0].text for p in progress] == ['{"step": 1, "total": 3}', '{"step": 2, "total": 3}', '{"step": 3, "total": 3}']
    assert all(p.artifacts[1].mime == "image/jpeg" for p in progress)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_init_image_over_grpcs_default_4mb_is_accepted(loop):
    engine = FakeEngine(steps=1)
    rng = np.random.default_rng(0)
    noise = Image.fromarray(rng.integers(0, 256, (1300, 1300, 3), dtype=np.uint8))
    big = io.BytesIO()
    noise.save(big, format="PNG")
    assert len(big.getvalue()) > 4 * 1024 * 1024  # over gRPC's default receive limit
    with grpc_server(loop, engine) as port:
        sdk = StabilityInference(host=f"127.0.0.1:{port}", engine="fake", wait_for_ready=False)
        arts = images(sdk.generate("a fox", init_image=noise, start_schedule=0.5, width=64, height=64, seed=1))
    assert len(arts) == 1
    assert Image.open(io.BytesIO(engine.requests[0].init_image)).size == (1300, 1300)
    assert engine.requests[0].strength == 0.5


def test_answer_over_the_limit_is_sent_as_jpeg():
    from engine.grpc_server import image_answer
    from engine.types import ImageResult

    rng = np.random.default_rng(1)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(buffer, format="PNG")
    result = ImageResult(png=buffer.getvalue(), seed=1, index=0, width=64, height=64)
    answer = image_answer("r", "e", result, limit=len(result.png) - 1)
    assert answer.artifacts[0].mime == "image/jpeg" and len(answer.artifacts[0].binary) < len(result.png)
    assert image_answer("r", "e", result).artifacts[0].binary == result.png


@pytest.mark.parametrize(
    ("error", "code", "shown"),
    [
        (PromptError("steps are wrong", "steps"), grpc.StatusCode.INVALID_ARGUMENT, "steps are wrong"),
        (EngineUnavailable("model missing"), grpc.StatusCode.UNAVAILABLE, "model missing"),
        (RuntimeError("secret internals"), grpc.StatusCode.INTERNAL, "server log"),
    ],
)
def test_engine_errors_map_to_status_codes(loop, error, code, shown):
    class Failing(FakeEngine):
        async def generate(self, request, on_progress=None, preview=False):
            raise error

    with grpc_server(loop, Failing()) as port:
        sdk = StabilityInference(host=f"127.0.0.1:{port}", engine="fake", wait_for_ready=False)
        with pytest.raises(grpc.RpcError) as caught:
            list(sdk.generate("a fox", width=64, height=64))
    assert caught.value.code() == code
    assert shown in caught.value.details() and "secret" not in caught.value.details()


# --- auth and TLS -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tls_files():
    return TlsFiles(*process_tls_files())


def test_api_key_over_tls_with_the_stock_client(loop, tls_files):
    engine = FakeEngine(steps=1)
    port = free_port_ending_443()
    with grpc_server(loop, engine, port=port, tls=tls_files, api_keys=["right-key"]):
        good = StabilityInference(host=f"localhost:{port}", key="right-key", engine="fake", wait_for_ready=False)
        assert len(images(good.generate("a fox", width=64, height=64, seed=2))) == 1
        bad = StabilityInference(host=f"localhost:{port}", key="wrong-key", engine="fake", wait_for_ready=False)
        with pytest.raises(grpc.RpcError) as wrong:
            list(bad.generate("a fox", width=64, height=64))
        channel = grpc.secure_channel(f"localhost:{port}", grpc.ssl_channel_credentials())
        request = generation.Request(engine_id="fake", prompt=[generation.Prompt(text="a fox")])
        with pytest.raises(grpc.RpcError) as missing:
            list(generation_grpc.GenerationServiceStub(channel).Generate(request, timeout=10))
        channel.close()
    assert wrong.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert missing.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert "right-key" not in wrong.value.details() and "wrong-key" not in wrong.value.details()
    assert engine.started == 1


def test_plaintext_client_drops_its_key_so_a_keyed_server_refuses(loop):
    with grpc_server(loop, FakeEngine(steps=1), api_keys=["k"]) as port:
        sdk = StabilityInference(host=f"127.0.0.1:{port}", key="k", engine="fake", wait_for_ready=False)
        with pytest.raises(grpc.RpcError) as caught:
            list(sdk.generate("a fox", width=64, height=64))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


def test_engine_ids_and_api_key_sources(tmp_path):
    assert parse_engine_ids(["sdxl=tiny"], ["tiny"]) == {"tiny": "tiny", "sdxl": "tiny"}
    with pytest.raises(ImagineError, match="ID=MODEL"):
        parse_engine_ids(["sdxl=missing"], ["tiny"])
    keys = tmp_path / "keys"
    keys.write_text("# comment\nfile-key\n\n")
    assert read_api_keys(" a, b ,", str(keys)) == ["a", "b", "file-key"]

