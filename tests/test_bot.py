"""Starting the bot: configuration, the command line, intents, command sync."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import discord
import pytest

from bot import EXTENSIONS, create_bot
from cogs.utils.config import BotConfig

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {"imagine", "history", "show", "info", "settings"}


def _run(args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DISCORD_", "IMAGINE_"))}
    clean["PYTHONPATH"] = str(ROOT)
    return subprocess.run(args, cwd=cwd, env={**clean, **env}, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("command", [[sys.executable, str(ROOT / "bot.py")], [str(Path(sys.executable).parent / "imagine-bot")]])
def test_a_missing_token_is_one_clear_line_and_exit_code_2(tmp_path, command):
    result = _run(command, tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "imagine-bot: DISCORD_TOKEN is not set. Put it in .env or the environment (see docs/bot.md)."
    ]
    assert "Traceback" not in result.stderr + result.stdout


def test_a_bad_setting_in_dotenv_is_reported_without_the_token(tmp_path):
    (tmp_path / ".env").write_text("DISCORD_TOKEN=MTIz.very-secret\nIMAGINE_USER_WAITING=lots\n")

    result = _run([sys.executable, str(ROOT / "bot.py")], tmp_path)

    assert result.returncode == 2
    assert result.stderr.strip() == "imagine-bot: IMAGINE_USER_WAITING must be a whole number, not 'lots'."
    assert "very-secret" not in result.stderr + result.stdout


def test_create_bot_reads_the_environment_and_dotenv(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("IMAGINE_") or n == "DISCORD_TOKEN"]:
        monkeypatch.delenv(name)
    (tmp_path / ".env").write_text("DISCORD_TOKEN=from-dotenv\nIMAGINE_DB=elsewhere.db\nIMAGINE_MAX_QUEUE=7\n")
    monkeypatch.setenv("IMAGINE_MAX_QUEUE", "9")  # the environment wins over .env

    bot = create_bot()

    assert bot.config.token == "from-dotenv" and bot.config.db_path == Path("elsewhere.db")
    assert bot.config.max_queue == 9
    assert "from-dotenv" not in repr(bot.config)


def test_discord_client_options_come_from_the_config():
    default = create_bot(BotConfig())
    quick = create_bot(BotConfig(guild_ready_timeout=0.05))

    # discord.py keeps the option on its connection state: the wait after READY for more servers.
    assert default._connection.guild_ready_timeout == 2.0
    assert quick._connection.guild_ready_timeout == 0.05


def test_no_privileged_intents():
    bot = create_bot(BotConfig())
    intents = bot.intents
    assert not (intents.members or intents.presences or intents.message_content)
    assert bot.allowed_mentions.everyone is False and bot.allowed_mentions.roles is False


@pytest.fixture
def simcord_bot(tmp_path, tiny_engine):
    return create_bot(BotConfig(db_path=tmp_path / "imagine.db", engine=tiny_engine))


async def test_setup_loads_the_cogs_and_syncs_commands_for_servers_and_dms(simcord_env, simcord_bot):
    bot = simcord_bot
    try:
        assert set(bot.extensions) == set(EXTENSIONS)
        assert {cog for cog in bot.cogs} == {"Imagine", "History", "Settings"}
        synced = {c.name: c for c in await bot.tree.fetch_commands()}
        assert set(synced) == COMMANDS
        contexts = synced["imagine"].allowed_contexts
        assert contexts.guild and contexts.dm_channel
        user = simcord_env.create_user("dana")
        assert set(user.available_commands()) >= COMMANDS  # usable in a DM with the bot
    finally:
        await bot.release()


async def test_a_development_guild_gets_the_commands_directly(simcord_env, simcord_bot, tmp_path, tiny_engine):
    guild = simcord_env.create_guild(name="dev")
    dev = create_bot(BotConfig(db_path=tmp_path / "dev.db", engine=tiny_engine, dev_guild=guild.id))
    await simcord_env.restart_bot(dev)
    await simcord_bot.release()
    try:
        puts = [entry.path for entry in simcord_env.http_requests if entry.method == "PUT"]
        assert puts[-1].endswith(f"/guilds/{guild.id}/commands")
        assert {c.name for c in await dev.tree.fetch_commands(guild=discord.Object(guild.id))} == COMMANDS
    finally:
        await dev.release()


def test_the_example_env_file_is_valid_and_the_invite_link_has_the_documented_permissions():
    from dotenv import dotenv_values

    values = {k: v or "" for k, v in dotenv_values(ROOT / ".env.example").items()}
    config = BotConfig.from_env(values)
    assert config.token is None and config.user_waiting == 10

    needed = discord.Permissions(
        view_channel=True, send_messages=True, send_messages_in_threads=True,
        embed_links=True, attach_files=True, read_message_history=True,
    )
    docs = (ROOT / "docs" / "bot.md").read_text()
    assert f"scope=bot+applications.commands&permissions={needed.value}" in docs


def test_discord_out_of_reach_is_one_line_not_a_traceback(tmp_path, monkeypatch, capsys):
    import socket

    import bot

    with socket.socket() as probe:  # a loopback port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(discord.http.Route, "BASE", f"http://127.0.0.1:{port}/api/v10")
    monkeypatch.chdir(tmp_path)
    for name in [n for n in os.environ if n.startswith("IMAGINE_") or n == "DISCORD_TOKEN"]:
        monkeypatch.delenv(name)
    monkeypatch.setenv("DISCORD_TOKEN", "MTIz.secret-token")
    monkeypatch.setenv("IMAGINE_MODEL", "tiny")
    monkeypatch.setenv("IMAGINE_DB", str(tmp_path / "bot.db"))

    with pytest.raises(SystemExit) as exit_:
        bot.main()

    assert exit_.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("imagine-bot: cannot reach Discord (")
    assert "secret-token" not in "\n".join(err)
