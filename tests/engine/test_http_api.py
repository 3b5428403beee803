"""`imagine serve-http`: GET /?prompt= images, cache and ETag, single-flight, limits, errors, OpenAPI."""

from __future__ import annotations

import asyncio
import io
import logging

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from PIL import Image

from engine.content_filter import with_blocklist
from engine.http_api import API_KEY, HANDLER_ARGS, IMMUTABLE, AccessLogger, HttpApiSettings, create_app
from engine.types import EngineUnavailable
from tests.engine.netfixtures import CountingEngine, FakeEngine, LoopThread

UNLIMITED = {"rate_per_minute": 1e6, "burst": 10**6}


async def start(engine, tmp_path, **settings) -> TestClient:
    options = {**UNLIMITED, **settings}
    app = create_app(engine, HttpApiSettings(cache_dir=tmp_path / "cache", **options))
    server = TestServer(app, host="127.0.0.1")
    await server.start_server(access_log_class=AccessLogger, **HANDLER_ARGS)  # as serve-http runs it
    client = TestClient(server)
    await client.start_server()
    return client


@pytest.fixture
async def fake_api(tmp_path):
    engine = CountingEngine(FakeEngine())
    client = await start(engine, tmp_path)
    yield client, engine
    await client.close()


def size_of(png: bytes) -> tuple[int, int]:
    return Image.open(io.BytesIO(png)).size


@pytest.mark.slow
async def test_seeded_image_is_cached_byte_identical_and_deterministic(tiny_engine, tmp_path):
    counted = CountingEngine(tiny_engine)
    query = {"prompt": "a fox in snow", "seed": "5", "steps": "2"}
    first = await start(counted, tmp_path)
    response = await first.get("/", params=query)
    body = await response.read()
    assert response.status == 200 and response.content_type == "image/png"
    assert response.headers["X-Cache"] == "miss" and response.headers["X-Seed"] == "5"
    again = await first.get("/", params=query)
    assert await again.read() == body and again.headers["X-Cache"] == "hit"
    await first.close()
    assert len(counted.calls) == 1  # the hit never reached the engine

    restarted = await start(counted, tmp_path)  # same cache folder, new process state
    hit = await restarted.get("/", params=query)
    assert await hit.read() == body and len(counted.calls) == 1
    await restarted.close()

    fresh = await start(counted, tmp_path / "elsewhere")  # no cache: the engine recomputes the same bytes
    recomputed = await fresh.get("/", params=query)
    assert await recomputed.read() == body and len(counted.calls) == 2
    await fresh.close()


async def test_etag_304_and_cache_headers(fake_api):
    client, engine = fake_api
    response = await client.get("/", params={"prompt": "a fox", "seed": "7"})
    etag = response.headers["ETag"]
    assert response.headers["Cache-Control"] == IMMUTABLE
    not_modified = await client.get("/", params={"prompt": "a fox", "seed": "7"}, headers={"If-None-Match": etag})
    assert not_modified.status == 304 and not_modified.headers["ETag"] == etag
    assert await not_modified.read() == b""
    other = await client.get("/", params={"prompt": "a fox", "seed": "8"}, headers={"If-None-Match": etag})
    assert other.status == 200 and other.headers["ETag"] != etag
    assert len(engine.calls) == 2


async def test_without_seed_every_view_is_new_and_not_stored(fake_api):
    client, engine = fake_api
    seeds = set()
    for _ in range(3):
        response = await client.get("/", params={"prompt": "a fox"})
        assert response.status == 200 and response.headers["Cache-Control"] == "no-store"
        assert "ETag" not in response.headers
        seeds.add(response.headers["X-Seed"])
    assert len(seeds) == 3 and len(engine.calls) == 3


async def test_a_seed_typed_in_the_prompt_also_makes_it_deterministic(fake_api):
    client, _ = fake_api
    response = await client.get("/", params={"prompt": "a fox --seed 12 --ar 4:1"})
    assert response.headers["Cache-Control"] == IMMUTABLE and response.headers["X-Seed"] == "12"
    assert size_of(await response.read()) == (128, 64)


async def test_concurrent_identical_requests_generate_once(tmp_path):
    engine = FakeEngine(step_delay=0.05, steps=4)
    client = await start(engine, tmp_path)
    responses = await asyncio.gather(*(client.get("/", params={"prompt": "a fox", "seed": "3"}) for _ in range(8)))
    bodies = {await r.read() for r in responses}
    await client.close()
    assert [r.status for r in responses] == [200] * 8
    assert len(bodies) == 1 and engine.started == 1


async def test_grid_is_the_2x2_of_four_seeds(fake_api):
    client, engine = fake_api
    response = await client.get("/", params={"prompt": "a fox", "seed": "10", "grid": "1"})
    assert response.headers["X-Seed"] == "10,11,12,13"
    assert size_of(await response.read()) == (128, 128)
    assert engine.calls[-1].seeds == (10, 11, 12, 13)


async def test_rate_limit_per_client_counts_only_new_images(tmp_path):
    client = await start(FakeEngine(), tmp_path, rate_per_minute=6, burst=2)
    statuses = [(await client.get("/", params={"prompt": "a fox"})).status for _ in range(2)]
    limited = await client.get("/", params={"prompt": "a fox"})
    body = await limited.json()
    cached = [(await client.get("/", params={"prompt": "a fox", "seed": "1"})) for _ in range(1)]
    await client.close()
    assert statuses == [200, 200]
    assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1 and "try again" in body["error"]
    assert cached[0].status == 429  # a seeded miss is a new image too


@pytest.mark.parametrize(
    ("query", "parameter"),
    [
        ({}, "prompt"),
        ({"prompt": "  "}, "prompt"),
        ({"prompt": "a fox", "seed": "x"}, "seed"),
        ({"prompt": "a fox", "seed": "-1"}, "seed"),
        ({"prompt": "a fox", "ar": "9:1"}, "ar"),
        ({"prompt": "a fox", "steps": "0"}, "steps"),
        ({"prompt": "a fox", "cfg": "99"}, "cfg"),
        ({"prompt": "a fox", "style": "nope"}, "style"),
        ({"prompt": "a fox", "negative": "--steps 150"}, "negative"),
        ({"prompt": "a fox", "grid": "2"}, "grid"),
        ({"prompt": "a fox", "sed": "1"}, "sed"),
        ({"prompt": "a fox", "steps": "2 --cfg 3"}, "steps"),
        ({"prompt": "a fox --bogus 1"}, "prompt"),
        ({"prompt": "a fox --seed 1", "seed": "2"}, "seed"),
    ],
)
async def test_bad_parameters_are_400_json_naming_the_parameter(fake_api, query, parameter):
    client, engine = fake_api
    response = await client.get("/", params=query)
    body = await response.json()
    assert response.status == 400 and body["parameter"] == parameter and body["error"]
    assert engine.calls == []


async def test_repeated_parameter_is_400(fake_api):
    client, _ = fake_api
    response = await client.get("/?prompt=a+fox&seed=1&seed=2")
    assert response.status == 400 and (await response.json())["parameter"] == "seed"


async def test_full_queue_is_503_with_retry_after(tmp_path):
    engine = FakeEngine(step_delay=0.1, steps=50)
    client = await start(engine, tmp_path, queue_size=1)
    busy = [asyncio.create_task(client.get("/", params={"prompt": f"a fox {i}"})) for i in range(2)]
    await asyncio.wait_for(engine.running.wait(), 5)
    await asyncio.sleep(0.05)  # the second request is queued behind the first
    refused = await client.get("/", params={"prompt": "one more", "seed": "1"})
    body = await refused.json()
    health = await (await client.get("/healthz")).json()
    for task in busy:
        task.cancel()
    await client.close()
    assert refused.status == 503 and int(refused.headers["Retry-After"]) >= 1 and "queue is full" in body["error"]
    assert health["pending"] == 2 and health["capacity"] == 2


async def test_api_keys_and_no_key_in_the_access_log(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="aiohttp.access")
    client = await start(FakeEngine(), tmp_path, api_keys=("s3cret",))
    missing = await client.get("/", params={"prompt": "a fox"})
    wrong = await client.get("/", params={"prompt": "a fox", "key": "guess"})
    by_query = await client.get("/", params={"prompt": "a fox", "key": "s3cret"})
    by_header = await client.get("/", params={"prompt": "a fox"}, headers={"Authorization": "Bearer s3cret"})
    health = await client.get("/healthz")
    refusal = await missing.json()
    await client.close()
    assert (missing.status, wrong.status, by_query.status, by_header.status, health.status) == (401, 401, 200, 200, 200)
    assert refusal["parameter"] == "key"
    assert "GET / 200" in caplog.text and "s3cret" not in caplog.text


async def test_engine_trouble_and_filtering_are_clear(tmp_path):
    class Down(FakeEngine):
        async def generate(self, request, on_progress=None, preview=False):
            raise EngineUnavailable("The engine server is down.")

    down = await start(Down(), tmp_path)
    response = await down.get("/", params={"prompt": "a fox"})
    assert response.status == 503 and (await response.json())["error"] == "The engine server is down."
    await down.close()

    filtered = await start(with_blocklist(FakeEngine(), ["forbidden"]), tmp_path / "f")
    response = await filtered.get("/", params={"prompt": "a forbidden fox", "seed": "1"})
    assert response.status == 200 and response.headers["X-Finish-Reason"] == "filtered"
    assert Image.open(io.BytesIO(await response.read())).getextrema() == ((128, 128),) * 3
    await filtered.close()


async def test_healthz_openapi_and_json_404(fake_api):
    client, _ = fake_api
    health = await (await client.get("/healthz")).json()
    assert health["status"] == "ok" and health["engine"]["model"] == "fake"
    document = await (await client.get("/openapi.json")).json()
    names = [p["name"] for p in document["paths"]["/"]["get"]["parameters"]]
    assert names == ["prompt", "seed", "ar", "steps", "cfg", "negative", "style", "grid"]
    missing = await client.get("/nowhere")
    assert missing.status == 404 and "error" in await missing.json()


# --- property test: schemathesis against /openapi.json ------------------------------------------------


@pytest.fixture(scope="module")
def live_api(tmp_path_factory):
    """The API on a real loopback port (schemathesis' client is synchronous)."""
    loop = LoopThread()
    engine = CountingEngine(FakeEngine())

    async def serve():
        runner = web.AppRunner(create_app(engine, HttpApiSettings(cache_dir=tmp_path_factory.mktemp("cache"), api_keys=(), **UNLIMITED)), **HANDLER_ARGS)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        return runner, site._server.sockets[0].getsockname()[1]

    runner, port = loop.run(serve())
    runner.app[API_KEY].settings.server_url = f"http://127.0.0.1:{port}"
    yield f"http://127.0.0.1:{port}", engine
    loop.run(runner.cleanup())
    loop.close()


def test_openapi_property_no_server_errors(live_api):
    """schemathesis draws requests from /openapi.json (valid and invalid): none gets a 500, and every
    response matches the document (status, content type, JSON body, headers).

    Only "schema-valid data is accepted" is left out: a prompt may carry --parameters the parser
    rejects, which no JSON schema can describe.
    """
    import schemathesis
    from hypothesis import HealthCheck, given, settings
    from schemathesis.checks import positive_data_acceptance

    url, engine = live_api
    schema = schemathesis.openapi.from_url(f"{url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/", "/healthz"} <= {op.path for op in operations}
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        def check(case):
            case.call_and_validate(excluded_checks=[positive_data_acceptance])

        check()
    assert len(engine.calls) > 10  # valid requests did reach the engine, not only refusals
