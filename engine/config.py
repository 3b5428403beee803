"""Engine settings from the environment (and a `.env` file), read in one place.

Every front-end (CLI, bot, servers) builds its engine from an `EngineConfig`, so a variable means
the same thing everywhere. Secrets are kept out of `repr` so they never reach a log line.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_MODEL = "stabilityai/sd-turbo"


def load_dotenv_once(path: str | os.PathLike[str] | None = None) -> None:
    """Read `.env` without overriding variables that are already set (the environment wins)."""
    from dotenv import load_dotenv

    load_dotenv(dotenv_path=path or Path.cwd() / ".env", override=False)


def _parse_models(text: str) -> dict[str, str]:
    models: dict[str, str] = {}
    for item in text.replace("\n", ";").split(";"):
        item = item.strip()
        if not item:
            continue
        name, sep, spec = item.partition("=")
        if not sep or not name.strip() or not spec.strip():
            raise ValueError(f"IMAGINE_MODELS entry {item!r} must look like name=path_or_id")
        models[name.strip()] = spec.strip()
    return models


def parse_blocklist(text: str | None) -> tuple[str, ...]:
    """Words and phrases from a comma- or newline-separated list, lower-cased, blanks dropped."""
    if not text:
        return ()
    items = (item.strip().lower() for item in re.split(r"[,\n]", text))
    return tuple(dict.fromkeys(item for item in items if item))


def model_name(spec: str) -> str:
    """A short name for a model spec: the folder or file stem, or the last part of a hub id."""
    path = Path(spec)
    if path.suffix in (".safetensors", ".ckpt"):
        return path.stem
    return path.name or spec


@dataclass
class EngineConfig:
    engine: str = "local"
    model: str = DEFAULT_MODEL
    models: dict[str, str] = field(default_factory=dict)
    model_config: str | None = None
    models_dir: Path = Path("models")
    device: str | None = None
    dtype: str | None = None
    tiny_decoder: str | None = None
    stability_api_key: str | None = field(default=None, repr=False)
    grpc_api_key: str | None = field(default=None, repr=False)
    blocklist: tuple[str, ...] = ()
    #: On CPUs, long self-attentions in query blocks (engine/attention.py); "sdpa" keeps torch's kernel.
    cpu_attention: str = "blocked"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> EngineConfig:
        if env is None:
            load_dotenv_once()
            env = dict(os.environ)
        return cls(
            engine=env.get("IMAGINE_ENGINE", "local").strip() or "local",
            model=env.get("IMAGINE_MODEL", DEFAULT_MODEL).strip() or DEFAULT_MODEL,
            models=_parse_models(env.get("IMAGINE_MODELS", "")),
            model_config=env.get("IMAGINE_MODEL_CONFIG") or None,
            models_dir=Path(env.get("IMAGINE_MODELS_DIR", "models")),
            device=env.get("IMAGINE_DEVICE") or None,
            dtype=env.get("IMAGINE_DTYPE") or None,
            tiny_decoder=env.get("IMAGINE_TINY_DECODER") or None,
            stability_api_key=env.get("STABILITY_API_KEY") or None,
            grpc_api_key=env.get("IMAGINE_GRPC_API_KEY") or None,
            blocklist=parse_blocklist(env.get("IMAGINE_BLOCKLIST")),
            cpu_attention=(env.get("IMAGINE_CPU_ATTENTION") or "blocked").strip().lower(),
        )

    def model_specs(self) -> dict[str, str]:
        """Every configured model by name; the default model comes first."""
        specs = {model_name(self.model): self.model}
        specs.update(self.models)
        return specs
