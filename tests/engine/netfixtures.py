"""Helpers for the network tests: servers on loopback threads, test engines, a self-signed certificate."""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import functools
import io
import ipaddress
import socket
import threading
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

from PIL import Image

from engine.base import Engine
from engine.types import (
    GenerationRequest,
    ImageResult,
    JobCancelled,
    ModelProfile,
    Progress,
    ProgressCallback,
)

TINY_PROFILE = ModelProfile("fake", "sd1", 64, default_steps=2, default_guidance=7.0, default_sampler="euler")


class LoopThread:
    """An asyncio loop on its own thread, so blocking clients (the stock SDK) can run in the test."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="test-loop", daemon=True)
        self.thread.start()

    def run(self, coroutine: Coroutine[Any, Any, Any], timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(timeout)

    def call(self, fn: Callable[[], Any]) -> None:
        self.loop.call_soon_threadsafe(fn)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class CountingEngine(Engine):
    """Wraps an engine and counts the jobs that reach it."""

    def __init__(self, inner: Engine) -> None:
        self.inner = inner
        self.calls: list[GenerationRequest] = []
        self.slots = inner.slots

    async def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False) -> list[ImageResult]:
        self.calls.append(request)
        return await self.inner.generate(request, on_progress, preview)

    def profile(self, model: str | None = None) -> ModelProfile:
        return self.inner.profile(model)

    def models(self) -> list[str]:
        return self.inner.models()


class FakeEngine(Engine):
    """Solid-colour images after `delay` seconds per step; records starts, cancellations and finishes."""

    def __init__(self, profile: ModelProfile = TINY_PROFILE, step_delay: float = 0.0, steps: int | None = None) -> None:
        self._profile = profile
        self.step_delay = step_delay
        self.fixed_steps = steps
        self.started = 0
        self.cancelled = 0
        self.finished = 0
        self.steps_run = 0
        self.running = asyncio.Event()
        self.requests: list[GenerationRequest] = []

    async def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False) -> list[ImageResult]:
        self.started += 1
        self.requests.append(request)
        self.running.set()
        total = self.fixed_steps or request.steps
        try:
            for step in range(total):
                await asyncio.sleep(self.step_delay)
                self.steps_run += 1
                if on_progress is not None:
                    on_progress(Progress(step + 1, total, b"preview" if preview else None))
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        self.finished += 1
        return [
            ImageResult(png=solid_png(request.width, request.height, seed), seed=seed, index=i, width=request.width, height=request.height)
            for i, seed in enumerate(request.seeds)
        ]

    def profile(self, model: str | None = None) -> ModelProfile:
        if model not in (None, self._profile.name):
            from engine.types import PromptError

            raise PromptError(f"Unknown model {model!r}.", "model")
        return self._profile

    def models(self) -> list[str]:
        return [self._profile.name]


class CancellableFake(FakeEngine):
    """Raises JobCancelled like the real engine when cancelled from inside (used for status mapping)."""

    async def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False) -> list[ImageResult]:
        raise JobCancelled("The job was cancelled.")


def solid_png(width: int, height: int, seed: int) -> bytes:
    colour = (seed * 37 % 256, seed * 91 % 256, seed * 53 % 256)
    buffer = io.BytesIO()
    Image.new("RGB", (width, height), colour).save(buffer, format="PNG")
    return buffer.getvalue()


def png_of(colour: tuple[int, int, int], size: tuple[int, int] = (64, 64), stripes: bool = True) -> bytes:
    image = Image.new("RGB", size, colour)
    if stripes:
        for x in range(0, size[0], 8):
            image.paste((255 - colour[0], colour[1], 255 - colour[2]), (x, 0, x + 4, size[1]))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def free_port_ending_443() -> int:
    """The stock client uses TLS only for a host string ending in 443: find such a free port."""
    for prefix in range(20, 65):
        port = prefix * 1000 + 443
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port ending in 443")


def unused_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@functools.cache
def process_tls_files() -> tuple[Path, Path]:
    """One certificate per test process, trusted through GRPC_DEFAULT_SSL_ROOTS_FILE_PATH.

    gRPC reads its default roots file once per process, so every TLS test must share this one.
    """
    import os
    import tempfile

    cert, key = self_signed_cert(Path(tempfile.mkdtemp(prefix="imagine-tls-")))
    os.environ["GRPC_DEFAULT_SSL_ROOTS_FILE_PATH"] = str(cert)
    return cert, key


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for localhost and 127.0.0.1, made now (cryptography), and its key."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = folder / "cert.pem", folder / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path




class StepCountingEngine(CountingEngine):
    """Counts the denoising steps the inner engine really runs, progress asked for or not."""

    def __init__(self, inner: Engine) -> None:
        super().__init__(inner)
        self.steps_run = 0
        self.step_seen = threading.Event()

    async def generate(self, request: GenerationRequest, on_progress: ProgressCallback | None = None, preview: bool = False) -> list[ImageResult]:
        def count(progress: Progress) -> None:
            self.steps_run += 1
            self.step_seen.set()
            if on_progress is not None:
                on_progress(progress)

        self.calls.append(request)
        return await self.inner.generate(request, count, preview)


@contextlib.contextmanager
def grpc_server(loop: LoopThread, engine: Engine, *, port: int = 0, tls: Any = None, **service_options: Any) -> Iterator[int]:
    """Our GenerationService on 127.0.0.1, served from the loop thread; yields the bound port."""
    from engine.grpc_server import GenerationService, start_server

    service = GenerationService(engine, **service_options)
    server, bound = loop.run(start_server(service, "127.0.0.1", port, tls))
    try:
        yield bound
    finally:
        loop.run(server.stop(grace=0))
