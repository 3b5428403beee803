"""Shared fixtures: the tiny offline model, built once per test session."""

from __future__ import annotations

import os

import pytest

# No test may reach the network: the hub client refuses instead of trying.
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("IMAGINE_CACHE", os.path.join(os.path.dirname(__file__), "..", ".pytest_cache", "imagine"))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory):
    from engine.testing import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("tiny-model"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_model_dir):
    from engine.config import EngineConfig
    from engine.diffusers_engine import DiffusersEngine

    engine = DiffusersEngine(EngineConfig(model=str(tiny_model_dir), dtype="fp32"))
    yield engine
    engine._executor.shutdown(wait=True)
