"""The `imagine` command line: generate images, list models, build the tiny model, run servers.

Errors the user can fix print one line and exit with status 2; nothing prints a traceback
unless `--debug` is given.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from engine.types import ImagineError

log = logging.getLogger("imagine")


def _read_file(path: str | None, what: str) -> bytes | None:
    if path is None:
        return None
    try:
        return Path(path).read_bytes()
    except OSError as error:
        raise ImagineError(f"Cannot read the {what} {path!r}: {error.strerror}.") from error


def _output_paths(output: Path, count: int) -> list[Path]:
    if count == 1:
        return [output]
    return [output.with_name(f"{output.stem}-{i + 1}{output.suffix}") for i in range(count)]


def cmd_generate(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from engine.config import EngineConfig
    from engine.diffusers_engine import DiffusersEngine
    from engine.grid import make_grid
    from engine.metadata import encode_png
    from engine.params import parse_prompts
    from engine.types import Progress

    config = EngineConfig.from_env()
    engine = DiffusersEngine(config, model=args.model)
    requests = parse_prompts(args.prompt, engine.profile, num_images=1 if args.single else 4)
    init = _read_file(args.init, "init image")
    mask = _read_file(args.mask, "mask")
    if mask is not None and init is None:
        raise ImagineError("--mask needs --init: the image to paint into.")
    outputs = _output_paths(Path(args.output), len(requests))
    show_bar = sys.stderr.isatty() and not args.quiet
    for request, output in zip(requests, outputs, strict=True):
        if init is not None:
            request = request.replace(init_image=init, mask=mask, strength=args.strength)
        bar = tqdm(total=request.steps, desc=output.name, unit="step", disable=not show_bar, leave=False)

        def advance(progress: Progress, bar: tqdm = bar) -> None:
            bar.total = progress.total
            bar.n = progress.step
            bar.refresh()

        results = engine.generate_sync(request, on_progress=advance)
        bar.close()
        if len(results) == 1:
            output.write_bytes(results[0].png)
        else:
            output.write_bytes(encode_png(make_grid([r.png for r in results]), results[0].parameters))
        print(f"{output}  seeds {', '.join(str(r.seed) for r in results)}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from engine.config import EngineConfig
    from engine.models import local_models

    config = EngineConfig.from_env()
    print("Configured (IMAGINE_MODEL, IMAGINE_MODELS):")
    for name, spec in config.model_specs().items():
        print(f"  {name:24} {spec}")
    found = local_models(config.models_dir)
    print(f"On this machine ({config.models_dir}/ and the Hugging Face cache):")
    for name, spec in found.items():
        print(f"  {name:24} {spec}")
    if not found:
        print("  (none)")
    print("Built in:\n  tiny                     random weights, offline; draws noise (for trying things out)")
    return 0


def cmd_tiny_model(args: argparse.Namespace) -> int:
    from engine.testing import build_tiny_model

    folder = build_tiny_model(args.folder, single_file=not args.no_single_file)
    print(folder)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="imagine", description="Stable Diffusion, Midjourney-style.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    gen = sub.add_parser("generate", help="make a 2x2 grid (or one image) from a prompt")
    gen.add_argument("prompt", help='the prompt with parameters, e.g. "a fox --ar 3:2 --seed 7"')
    gen.add_argument("-o", "--output", default="imagine.png", help="PNG to write (default: imagine.png)")
    gen.add_argument("--single", action="store_true", help="one image instead of a 2x2 grid")
    gen.add_argument("--init", help="init image for img2img")
    gen.add_argument("--strength", type=float, default=0.6, help="img2img strength, 0-1 (default 0.6)")
    gen.add_argument("--mask", help="inpainting mask: white = repaint, black = keep")
    gen.add_argument("--model", help="model folder, .safetensors file, hub id, or 'tiny'")
    gen.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    gen.set_defaults(func=cmd_generate)

    models = sub.add_parser("models", help="list configured and locally available models")
    models.set_defaults(func=cmd_models)

    tiny = sub.add_parser("tiny-model", help="write the tiny random-weight model (diffusers folder + single file)")
    tiny.add_argument("folder")
    tiny.add_argument("--no-single-file", action="store_true")
    tiny.set_defaults(func=cmd_tiny_model)

    for register in _server_commands():
        register(sub)
    return parser


def _server_commands() -> list:
    """Subcommands that live with the servers (serve-grpc, serve-http), when installed."""
    registrars = []
    for module in ("engine.grpc_server", "engine.http_api"):
        try:
            imported = __import__(module, fromlist=["register_cli"])
        except ImportError:
            continue
        registrars.append(imported.register_cli)
    return registrars


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        return int(args.func(args) or 0)
    except ImagineError as error:
        if args.debug:
            raise
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
