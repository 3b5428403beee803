"""Settings from the environment: defaults, bad values, and the token kept out of sight."""

from __future__ import annotations

from pathlib import Path

import pytest

from cogs.utils.config import MIB, BotConfig, ConfigError


def test_defaults():
    config = BotConfig.from_env({})
    assert config.token is None and config.db_path == Path("data/imagine.db") and config.data_dir is None
    assert (config.progress_interval, config.user_running, config.user_waiting, config.max_queue) == (2.0, 1, 10, 100)
    assert config.dev_guild is None and config.filtered == "spoiler" and config.resume_jobs
    assert config.engine_config.engine == "local"


def test_every_variable_is_read():
    config = BotConfig.from_env({
        "DISCORD_TOKEN": " abc.def ", "IMAGINE_DB": "/srv/imagine.db", "IMAGINE_DATA_DIR": "/srv/images",
        "IMAGINE_ENGINE": "stability", "IMAGINE_MODEL": "models/x.safetensors", "IMAGINE_DEV_GUILD": "123",
        "IMAGINE_PROGRESS_INTERVAL": "0.5", "IMAGINE_USER_RUNNING": "2", "IMAGINE_USER_WAITING": "3",
        "IMAGINE_MAX_QUEUE": "40", "IMAGINE_FILTERED": "refuse", "IMAGINE_MAX_INPUT_MB": "4",
        "IMAGINE_RESUME": "0", "IMAGINE_SYNC_COMMANDS": "false",
    })
    assert config.token == "abc.def" and config.db_path == Path("/srv/imagine.db") and config.data_dir == Path("/srv/images")
    assert config.engine_config.engine == "stability" and config.engine_config.model == "models/x.safetensors"
    assert (config.dev_guild, config.progress_interval, config.user_running, config.user_waiting, config.max_queue) == (
        123, 0.5, 2, 3, 40)
    assert config.filtered == "refuse" and config.max_input_bytes == 4 * MIB
    assert not config.resume_jobs and not config.sync_commands


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("IMAGINE_USER_WAITING", "ten", "IMAGINE_USER_WAITING must be a whole number, not 'ten'"),
        ("IMAGINE_USER_RUNNING", "0", "IMAGINE_USER_RUNNING must be at least 1"),
        ("IMAGINE_PROGRESS_INTERVAL", "-1", "at least 0"),
        ("IMAGINE_FILTERED", "blur", "IMAGINE_FILTERED must be one of spoiler, refuse"),
        ("IMAGINE_RESUME", "maybe", "IMAGINE_RESUME must be 1 or 0"),
    ],
)
def test_bad_values_name_the_variable(name, value, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        BotConfig.from_env({name: value})


def test_the_token_never_shows_in_repr():
    config = BotConfig.from_env({"DISCORD_TOKEN": "MTIz.secret-token-value"})
    assert "secret-token-value" not in repr(config) and "secret-token-value" not in str(config)
