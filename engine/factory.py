"""Build the engine that IMAGINE_ENGINE names, so front-ends never pick an engine class themselves.

- `local` (default): diffusers in this process.
- `grpc://host:port[,host:port...]` (or `grpcs://`): our `imagine serve-grpc` servers, balanced.
- `stability`: Stability AI's hosted REST API (needs STABILITY_API_KEY).
"""

from __future__ import annotations

from engine.base import Engine
from engine.config import EngineConfig
from engine.types import EngineUnavailable


def build_engine(config: EngineConfig | None = None) -> Engine:
    """The configured engine, behind the operator's blocklist (IMAGINE_BLOCKLIST) when there is one."""
    from engine.content_filter import with_blocklist

    config = config or EngineConfig.from_env()
    return with_blocklist(_engine(config), config.blocklist)


def _engine(config: EngineConfig) -> Engine:
    kind = config.engine.strip()
    if kind in ("", "local"):
        from engine.diffusers_engine import DiffusersEngine

        return DiffusersEngine(config)
    if kind.startswith(("grpc://", "grpcs://")):
        from engine.remote import GrpcEngine

        return GrpcEngine(config)
    if kind == "stability":
        from engine.stability import StabilityEngine

        return StabilityEngine(config)
    raise EngineUnavailable(f"IMAGINE_ENGINE={kind!r} is not one of: local, grpc://host:port[,host:port...], stability.")
