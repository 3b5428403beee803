"""IMAGINE_ENGINE=grpc://...: GrpcEngine against our servers on loopback (deadlines, balancing, retry)."""

from __future__ import annotations

import asyncio
import io
import logging
import time

import pytest
from PIL import Image

from engine.config import EngineConfig
from engine.factory import build_engine
from engine.grpc_server import GenerationService, TlsFiles, start_server, to_generation_request
from engine.remote import GrpcEngine, channel_target, parse_grpc_url, to_proto
from engine.types import EngineUnavailable, FinishReason, GenerationRequest, Progress, PromptError
from tests.engine.netfixtures import (
    TINY_PROFILE,
    FakeEngine,
    LoopThread,
    free_port_ending_443,
    grpc_server,
    png_of,
    process_tls_files,
    unused_port,
)

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def loop():
    thread = LoopThread()
    yield thread
    thread.close()


def remote(url: str, model: str = "fake", **options) -> GrpcEngine:
    return GrpcEngine(EngineConfig(engine=url, model=model), **options)


def fake_request(**changes) -> GenerationRequest:
    base = GenerationRequest(prompt="a fox", width=64, height=64, seeds=(1,), steps=2, sampler="euler")
    return base.replace(**changes)


def test_url_parsing_and_targets():
    assert parse_grpc_url("grpc://127.0.0.1:1,127.0.0.1:2") == ([("127.0.0.1", 1), ("127.0.0.1", 2)], False)
    assert parse_grpc_url("grpcs://engine") == ([("engine", 50051)], True)
    assert parse_grpc_url("grpc://[::1]:7") == ([("::1", 7)], False)
    for bad in ("grpc://", "http://a:1", "grpc://a:port", "grpc://a:70000"):
        with pytest.raises(EngineUnavailable):
            parse_grpc_url(bad)
    assert channel_target([("127.0.0.1", 1), ("127.0.0.1", 2)]) == ("ipv4:127.0.0.1:1,127.0.0.1:2", None)
    assert channel_target([("engine", 5)]) == ("dns:///engine:5", "engine")
    target, name = channel_target([("localhost", 5), ("127.0.0.1", 6)])
    assert target.startswith("ipv4:127.0.0.1:5") and target.endswith("127.0.0.1:6") and name == "localhost"
    with pytest.raises(EngineUnavailable, match="Cannot resolve"):
        channel_target([("no-such-host.invalid", 1), ("127.0.0.1", 2)])


def test_factory_builds_each_kind(tiny_model_dir):
    assert type(build_engine(EngineConfig(engine="grpc://127.0.0.1:1", model="fake"))).__name__ == "GrpcEngine"
    assert type(build_engine(EngineConfig(engine="stability", stability_api_key="k"))).__name__ == "StabilityEngine"
    assert type(build_engine(EngineConfig(model=str(tiny_model_dir), dtype="fp32"))).__name__ == "DiffusersEngine"
    with pytest.raises(EngineUnavailable, match="not one of"):
        build_engine(EngineConfig(engine="cloud"))


def test_every_field_survives_the_wire():
    mask = io.BytesIO()
    Image.new("L", (64, 64), 255).save(mask, format="PNG")
    request = GenerationRequest(
        prompt="a fox", negative_prompt="blurry", width=128, height=64, seeds=(5, 9), steps=3, guidance_scale=6.5,
        sampler="dpmpp_2m_karras", model="fake", style="anime", tiling=True, chaos=20, init_image=png_of((1, 2, 3)),
        strength=0.4, mask=mask.getvalue(), aspect_ratio="2:1",
    )
    back, options = to_generation_request(to_proto(request, "fake", progress=True), "fake", TINY_PROFILE)
    assert options.progress and not options.preview
    assert back.replace(init_image=None, mask=None) == request.replace(init_image=None, mask=None)
    assert Image.open(io.BytesIO(back.mask)).getextrema() == (255, 255)  # white stays "repaint" after two inversions


async def test_same_images_as_in_process_with_progress_and_metadata(loop, tiny_engine, tiny_model_dir):
    init = png_of((40, 200, 90))
    mask = io.BytesIO()
    shape = Image.new("L", (64, 64), 0)
    shape.paste(255, (16, 16, 48, 48))
    shape.save(mask, format="PNG")
    request = GenerationRequest(
        prompt="a fox in snow", width=64, height=64, seeds=(21, 22), steps=2, sampler="euler", init_image=init,
        strength=0.9, mask=mask.getvalue(),
    )
    expected = tiny_engine.generate_sync(request)
    with grpc_server(loop, tiny_engine) as port:
        engine = GrpcEngine(EngineConfig(engine=f"grpc://127.0.0.1:{port}", model=str(tiny_model_dir)))
        seen: list[Progress] = []
        results = await engine.generate(request, seen.append, preview=True)
        await engine.close()
    assert [r.png for r in results] == [r.png for r in expected]
    assert [r.seed for r in results] == [21, 22] and all(r.finish_reason is FinishReason.OK for r in results)
    assert results[0].parameters == expected[0].parameters and "Seed: 21" in results[0].parameters
    assert seen and seen[-1].step == seen[-1].total and seen[-1].preview is not None


async def test_server_errors_become_user_errors(loop):
    with grpc_server(loop, FakeEngine()) as port:
        engine = remote(f"grpc://127.0.0.1:{port}")
        with pytest.raises(PromptError, match="width 100 must be a multiple of 64"):
            await engine.generate(fake_request(width=100))
        with pytest.raises(PromptError, match="Unknown model"):
            await engine.generate(fake_request(model="other"))
        await engine.close()


def test_unexpected_server_errors_do_not_leak_their_details(caplog):
    import grpc

    class Failure(grpc.RpcError):
        def code(self):
            return grpc.StatusCode.INTERNAL

        def details(self):
            return "Traceback (most recent call last): KeyError: 'sk-secret'"

    engine = remote("grpc://127.0.0.1:1")
    with caplog.at_level(logging.WARNING):
        error = engine._user_error(Failure())
    assert isinstance(error, EngineUnavailable)
    assert "INTERNAL" in str(error) and "Traceback" not in str(error) and "sk-secret" not in str(error)
    assert "Traceback" in caplog.text  # the operator still has it


async def test_dead_server_fails_within_the_connect_timeout():
    engine = remote(f"grpc://127.0.0.1:{unused_port()}", connect_timeout=1.0)
    started = time.monotonic()
    with pytest.raises(EngineUnavailable, match="No engine server answered .* within 1 s"):
        await engine.generate(fake_request())
    assert time.monotonic() - started < 4
    await engine.close()


async def test_hung_job_fails_at_the_job_deadline_and_the_server_stops(loop):
    fake = FakeEngine(step_delay=0.05, steps=1000)
    with grpc_server(loop, fake) as port:
        engine = remote(f"grpc://127.0.0.1:{port}", job_timeout=1.0)
        started = time.monotonic()
        with pytest.raises(EngineUnavailable, match="did not finish the job within 1 s"):
            await engine.generate(fake_request())
        assert time.monotonic() - started < 4
        for _ in range(50):
            if fake.cancelled:
                break
            await asyncio.sleep(0.05)
        await engine.close()
    assert fake.cancelled == 1 and fake.finished == 0


async def test_cancelling_the_task_cancels_the_server_job(loop):
    fake = FakeEngine(step_delay=0.05, steps=1000)
    with grpc_server(loop, fake) as port:
        engine = remote(f"grpc://127.0.0.1:{port}")
        task = asyncio.create_task(engine.generate(fake_request()))
        for _ in range(100):
            if fake.started:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(50):
            if fake.cancelled:
                break
            await asyncio.sleep(0.05)
        await engine.close()
    assert fake.cancelled == 1 and fake.steps_run < 1000


async def test_two_servers_share_the_load(loop):
    first, second = FakeEngine(), FakeEngine()
    with grpc_server(loop, first) as port_a, grpc_server(loop, second) as port_b:
        engine = remote(f"grpc://127.0.0.1:{port_a},127.0.0.1:{port_b}")
        assert engine.slots == 2
        for seed in range(8):
            results = await engine.generate(fake_request(seeds=(seed,)))
            assert results[0].seed == seed
        await engine.close()
    assert first.finished + second.finished == 8
    assert first.finished >= 2 and second.finished >= 2


async def test_a_server_dying_mid_job_is_retried_once_elsewhere(loop, caplog):
    fakes = [FakeEngine(step_delay=0.05, steps=10), FakeEngine(step_delay=0.05, steps=10)]
    servers = []
    for fake in fakes:
        servers.append(loop.run(start_server(GenerationService(fake), "127.0.0.1", 0)))
    engine = remote("grpc://" + ",".join(f"127.0.0.1:{port}" for _, port in servers))
    seen: list[Progress] = []
    caplog.set_level(logging.WARNING, logger="engine.remote")
    task = asyncio.create_task(engine.generate(fake_request(seeds=(3,)), seen.append))
    for _ in range(200):
        if any(fake.started for fake in fakes):
            break
        await asyncio.sleep(0.02)
    victim = 0 if fakes[0].started else 1
    loop.run(servers[victim][0].stop(grace=0))
    results = await asyncio.wait_for(task, 10)
    assert results[0].seed == 3
    assert fakes[victim].finished == 0 and fakes[1 - victim].finished == 1
    assert any(p.step == 0 for p in seen)  # the progress restarts for the retry
    assert "retrying once" in caplog.text
    loop.run(servers[1 - victim][0].stop(grace=0))
    await engine.close()


async def test_api_key_over_tls(loop):
    cert, key = process_tls_files()
    port = free_port_ending_443()
    fake = FakeEngine()
    with grpc_server(loop, fake, port=port, tls=TlsFiles(cert, key), api_keys=["the-key"]):
        good = GrpcEngine(EngineConfig(engine=f"grpc://localhost:{port}", model="fake", grpc_api_key="the-key"))
        assert good.tls
        assert len(await good.generate(fake_request())) == 1
        bad = GrpcEngine(EngineConfig(engine=f"grpc://localhost:{port}", model="fake", grpc_api_key="not-it"))
        with pytest.raises(EngineUnavailable, match="refused our API key") as caught:
            await bad.generate(fake_request())
        assert "not-it" not in str(caught.value)
        await good.close()
        await bad.close()
    assert fake.finished == 1
