"""The HTTP image API inside the bot (IMAGINE_HTTP_PORT): one engine, one fair queue, clean shutdown."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator

import aiohttp
import pytest
from multidict import MultiDict

from bot import ImagineBot, create_bot
from cogs.utils.config import BotConfig, ConfigError
from engine.http_api import parse_query
from tests.cogs.conftest import FakeEngine

pytestmark = pytest.mark.simcord(settle_timeout=30)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def bot_config(bot_config: BotConfig) -> BotConfig:
    bot_config.http_port = 0  # any free port on 127.0.0.1
    return bot_config


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # One connection per request: an idle keep-alive connection is open work the bot would have to wait on.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


def url(bot: ImagineBot, path: str = "/") -> str:
    assert bot.http_api is not None and bot.http_api.port
    return f"http://127.0.0.1:{bot.http_api.port}{path}"


def port_is_free(port: int) -> bool:
    """Whether a new server could listen there now (as servers do, past connections in TIME_WAIT)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("127.0.0.1", port))
            probe.listen()
        except OSError:
            return False
        return True


async def until(condition, what: str) -> None:
    """Let the loop run (the HTTP request travels over a real socket) until `condition()` holds."""
    for _ in range(5000):
        if condition():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
async def test_the_bots_engine_answers_http_and_shutdown_frees_the_port(simcord_env, simcord_bot, http, tiny_engine):
    bot = simcord_bot
    baseline = asyncio.all_tasks()

    async with http.get(url(bot), params={"prompt": "a red fox --steps 1", "seed": "1"}) as response:
        body = await response.read()
        assert response.status == 200, body
        assert response.content_type == "image/png"
        assert response.headers["X-Seed"] == "1"
    async with http.get(url(bot, "/healthz")) as response:
        health = await response.json()
        assert response.status == 200
        assert health["status"] == "ok" and health["pending"] == 0

    # The same request run on the engine directly gives the same bytes: the bot's engine drew it.
    expected = await tiny_engine.generate(parse_query(MultiDict(prompt="a red fox --steps 1", seed="1"), tiny_engine).request)
    assert body.startswith(PNG_MAGIC) and body == expected[0].png
    assert await bot.storage.get_job(1) is None  # no history row for HTTP jobs
    assert all("/messages" not in entry.path for entry in simcord_env.http_requests)  # nothing posted
    cached = list((bot.config.db_path.parent / "http-cache").rglob("*.png"))
    assert len(cached) == 1  # under the bot's data folder

    port = bot.http_api.port
    await bot.release()

    assert port_is_free(port)
    with pytest.raises(aiohttp.ClientConnectorError):
        await http.get(url(bot, "/healthz"))
    leftover = [task for task in asyncio.all_tasks() - baseline if not task.done() and task is not asyncio.current_task()]
    assert leftover == []


class TestSharedQueue:
    @pytest.fixture
    def engine(self, fake_engine: FakeEngine) -> FakeEngine:
        return fake_engine

    @pytest.fixture
    def bot_config(self, fake_config: BotConfig) -> BotConfig:
        fake_config.http_port = 0
        return fake_config

    async def test_an_http_request_takes_its_turn_between_a_busy_users_jobs(self, scene, simcord_bot, engine, http):
        bot = simcord_bot
        engine.close_gate(scene.env)
        messages = [(await scene.alice.slash(scene.channel, "imagine", prompt=f"alice {n}")).response for n in (1, 2, 3)]
        assert engine.started == ["alice 1"]

        request = asyncio.ensure_future(http.get(url(bot), params={"prompt": "from http"}))
        await until(lambda: any(job.owner == "http:127.0.0.1" for job in bot.runner.queue.waiting()), "the HTTP job to queue")

        # It goes before alice's backlog; her waiting messages now count it.
        assert [job.owner for job in bot.runner.queue.waiting()] == ["http:127.0.0.1", scene.alice.id, scene.alice.id]
        # (No settle while the HTTP request waits: simcord cannot tell that wait from a hang.)
        await until(lambda: messages[2].content.endswith("(Waiting to start: number 3 in the queue)"), "alice 3's place")
        assert messages[1].content.endswith("(Waiting to start: number 2 in the queue)")
        engine.gate.set()
        await scene.env.settle()
        response = await asyncio.wait_for(request, 10)
        body = await response.read()

        assert engine.started == ["alice 1", "from http", "alice 2", "alice 3"]
        assert response.status == 200 and body.startswith(PNG_MAGIC)
        assert response.headers["Cache-Control"] == "no-store"
        assert all(len(message.attachments) == 1 for message in messages)
        assert await bot.storage.get_job(4) is None  # the HTTP job left no row
        assert len(scene.channel.history()) == 3  # and no message

    async def test_http_jobs_count_against_the_global_limit(self, scene, simcord_bot, engine, http):
        bot = simcord_bot
        bot.runner.queue.max_waiting = 2
        engine.close_gate(scene.env)
        for n in (1, 2, 3):
            await scene.alice.slash(scene.channel, "imagine", prompt=f"alice {n}")  # 1 runs, 2 wait: full

        async with http.get(url(bot), params={"prompt": "from http"}) as response:
            error = await response.json()
            assert response.status == 503
            assert int(response.headers["Retry-After"]) > 0
        assert "queue is full" in error["error"]
        assert len(bot.runner.queue) == 3 and "from http" not in engine.started
        engine.gate.set()
        await scene.env.settle()

    async def test_shutdown_answers_a_waiting_http_request_with_503(self, scene, simcord_bot, engine, http):
        bot = simcord_bot
        engine.close_gate(scene.env)
        await scene.alice.slash(scene.channel, "imagine", prompt="alice 1")
        request = asyncio.ensure_future(http.get(url(bot), params={"prompt": "from http"}))
        await until(lambda: len(bot.runner.queue.waiting()) == 1, "the HTTP job to queue")
        port = bot.http_api.port

        await bot.release()
        response = await asyncio.wait_for(request, 10)

        assert response.status == 503 and "shutting down" in (await response.json())["error"]
        assert "from http" not in engine.started
        assert port_is_free(port)


def test_the_http_settings_come_from_the_environment(tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# one per line\nfrom-file\n")
    config = BotConfig.from_env({
        "IMAGINE_DB": str(tmp_path / "bot" / "imagine.db"),
        "IMAGINE_HTTP_PORT": "8081",
        "IMAGINE_HTTP_API_KEYS": "alpha, beta",
        "IMAGINE_HTTP_API_KEYS_FILE": str(keys),
        "IMAGINE_HTTP_RATE": "6",
    })
    settings = config.http_settings()

    assert (config.http_port, config.http_host) == (8081, "127.0.0.1")
    assert settings.cache_dir == tmp_path / "bot" / "http-cache"
    assert settings.api_keys == ("alpha", "beta", "from-file") and settings.rate_per_minute == 6
    assert "alpha" not in repr(config) and "from-file" not in repr(config)
    assert BotConfig.from_env({}).http_port is None  # off unless asked for


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"IMAGINE_HTTP_PORT": "web"}, "IMAGINE_HTTP_PORT must be a whole number, not 'web'."),
        ({"IMAGINE_HTTP_PORT": "70000"}, "IMAGINE_HTTP_PORT must be a port number up to 65535, not 70000."),
        ({"IMAGINE_HTTP_API_KEYS_FILE": "/nonexistent/keys"}, "IMAGINE_HTTP_API_KEYS_FILE: Cannot read the API keys file"),
    ],
)
def test_bad_http_settings_are_named(env, message):
    with pytest.raises(ConfigError) as caught:
        BotConfig.from_env(env)
    assert str(caught.value).startswith(message)


async def test_a_taken_port_stops_the_start_with_one_line(tmp_path, fake_engine):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        bot = create_bot(BotConfig(db_path=tmp_path / "imagine.db", engine=fake_engine, http_port=port, sync_commands=False))
        try:
            with pytest.raises(ConfigError, match=rf"^IMAGINE_HTTP_PORT: cannot listen on 127.0.0.1:{port} \(Address already in use\)\.$"):
                await bot.setup_hook()
        finally:
            await bot.release()
