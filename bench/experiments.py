"""Speed experiments for the engine's CPU fast path, one component at a time.

`python -m bench.experiments profile --arch sd-turbo --size 512` shows which torch ops the UNet
and the tiny decoder spend their time in; `python -m bench.experiments settings --size 256` times
one UNet step and one tiny-decoder call under each candidate setting (dtype, memory format, SDPA
backend, torch.compile, flush-denormal), interleaved round-robin with the engine's current default in the same
process, so that load from other processes falls on all of them alike. Findings go to bench/RESULTS.md; nothing here changes the engine.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any

from bench.architectures import build_pipeline, build_tiny_decoder


def inputs(pipe: Any, batch: int, size: int, dtype: Any) -> tuple[Any, Any, Any]:
    import torch

    generator = torch.Generator().manual_seed(0)
    side = size // 8
    sample = torch.randn(batch, 4, side, side, generator=generator).to(dtype)
    embeds = torch.randn(batch, 77, pipe.text_encoder.config.hidden_size, generator=generator).to(dtype)
    return sample, torch.tensor(999.0), embeds


def profile(args: argparse.Namespace) -> None:
    import torch
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    dtype = getattr(torch, args.dtype)
    pipe = build_pipeline(args.arch, dtype)
    tiny = build_tiny_decoder(args.arch, getattr(torch, args.decoder_dtype))
    sample, timestep, embeds = inputs(pipe, args.batch, args.size, dtype)
    with torch.inference_mode():
        pipe.unet(sample, timestep, encoder_hidden_states=embeds)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            pipe.unet(sample, timestep, encoder_hidden_states=embeds)
        print(f"== UNet, batch {args.batch}, {args.size}², {args.dtype}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=18))
        latents = sample[:1].to(tiny.dtype)
        tiny.decode(latents)
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            tiny.decode(latents)
        print(f"== tiny decoder, 1 image, {args.size}², {args.decoder_dtype}")
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12))


@contextlib.contextmanager
def sdpa_backend(name: str | None) -> Iterator[None]:
    if name is None:
        yield
        return
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel(getattr(SDPBackend, name)):
        yield


@contextlib.contextmanager
def flush_denormal() -> Iterator[None]:
    import torch

    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def interleaved(candidates: dict[str, Callable[[], Any]], rounds: int) -> dict[str, list[float]]:
    """Time each candidate once per round, round-robin, so load from other processes hits all alike."""
    for fn in candidates.values():
        fn()  # warm-up: oneDNN primitives, compilation
    times: dict[str, list[float]] = {label: [] for label in candidates}
    for _ in range(rounds):
        for label, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[label].append(time.perf_counter() - start)
    return times


def settings(args: argparse.Namespace) -> None:
    import copy

    import torch

    bf16 = torch.bfloat16
    pipe = build_pipeline(args.arch, bf16)
    sample, timestep, embeds = inputs(pipe, args.batch, args.size, bf16)
    channels_last = copy.deepcopy(pipe.unet).to(memory_format=torch.channels_last)

    def unet(module: Any = pipe.unet, x: Any = sample, context: Callable[[], Any] = contextlib.nullcontext) -> Callable[[], Any]:
        def step() -> Any:
            with torch.inference_mode(), context():
                return module(x, timestep, encoder_hidden_states=embeds)
        return step

    candidates: dict[str, Callable[[], Any]] = {
        "unet: engine default (bf16, contiguous, SDPA auto)": unet(),
        "unet: channels_last": unet(channels_last, sample.contiguous(memory_format=torch.channels_last)),
    }
    if args.more:
        candidates["unet: SDPA math"] = unet(context=lambda: sdpa_backend("MATH"))
        candidates["unet: set_flush_denormal(True)"] = unet(context=flush_denormal)
    latents = sample[:1]
    for name in ("bfloat16", "float32"):
        dtype = getattr(torch, name)
        tiny = build_tiny_decoder(args.arch, dtype)
        tiny_cl = copy.deepcopy(tiny).to(memory_format=torch.channels_last)
        x = latents.to(dtype)

        def decode(decoder: Any = tiny, x: Any = x) -> Any:
            with torch.inference_mode():
                return decoder.decode(x)

        candidates[f"tiny decoder: {name}"] = decode
        candidates[f"tiny decoder: {name}, channels_last"] = lambda d=tiny_cl, x=x: decode(d, x.contiguous(memory_format=torch.channels_last))
        if args.compile:
            compiled = torch.compile(tiny.decoder)
            candidates[f"tiny decoder: {name}, torch.compile"] = lambda c=compiled, x=x: decode(type("D", (), {"decode": c})(), x)
    if args.vae:
        vae = pipe.vae
        vae_cl = copy.deepcopy(vae).to(memory_format=torch.channels_last)

        def full_decode(v: Any = vae, x: Any = latents) -> Any:
            with torch.inference_mode():
                return v.decode(x)

        candidates["full VAE decode: bf16"] = full_decode
        candidates["full VAE decode: bf16, channels_last"] = lambda: full_decode(vae_cl, latents.contiguous(memory_format=torch.channels_last))
    times = interleaved(candidates, args.repeats)
    print(f"{'min s':>8} {'median s':>9}  setting ({args.arch}, batch {args.batch}, {args.size}², {args.repeats} rounds)")
    for label, values in times.items():
        print(f"{min(values):8.3f} {statistics.median(values):9.3f}  {label}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments")
    parser.add_argument("what", choices=("profile", "settings"))
    parser.add_argument("--arch", default="sd-turbo")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--decoder-dtype", default="bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--more", action="store_true", help="also SDPA math and flush-denormal for the UNet")
    parser.add_argument("--vae", action="store_true", help="also time the full VAE decode (U)")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile on the tiny decoder (minutes)")
    args = parser.parse_args(argv)
    profile(args) if args.what == "profile" else settings(args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
