"""The stable-diffusion.cpp peer (through stable-diffusion-cpp-python) on the very same weights.

stable-diffusion.cpp reads a diffusers folder directly, so the random-weight model is written as
one under the bench cache (its text encoder with the `text_model.` key prefix that
stable-diffusion.cpp looks for; transformers 5.x saves it without) together with the TAESD-shaped
tiny decoder, and loaded with the settings that ran fastest here (fp32 weights, flash attention;
see RESULTS.md). Guidance is off the way stable-diffusion.cpp spells it for distilled models:
cfg_scale 1, which skips the unconditional pass. Its per-component times come from its own log lines.
"""

from __future__ import annotations

import ctypes
import io
import os
import re
from pathlib import Path
from typing import Any

from bench.architectures import build_pipeline, build_tiny_decoder, cache_dir
from bench.flops import FlopReport, count_module_flops
from bench.measure import ComponentTimer, PeerUnavailable
from bench.workloads import SEEDS, Workload, prompt_for

#: Weight type stable-diffusion.cpp converts to at load; "default" keeps the file's fp32.
WEIGHT_TYPE = os.environ.get("BENCH_SDCPP_WTYPE", "default")
LOG_TIMES = re.compile(r"(get_learned_condition|sampling|decode_first_stage) completed, taking ([0-9.]+) ?(ms|s)")
COMPONENT = {"get_learned_condition": "text_encoder", "sampling": "unet", "decode_first_stage": "decoder"}


def export_folder(arch: str) -> Path:
    """The model as a diffusers folder stable-diffusion.cpp can read, written once."""
    import torch
    from safetensors.torch import save_file

    folder = cache_dir() / "sdcpp" / arch
    done = folder / "complete"
    if done.is_file():
        return folder
    pipe = build_pipeline(arch, torch.float32)
    pipe.save_pretrained(folder, safe_serialization=True)
    state = {key if key.startswith("text_model.") else f"text_model.{key}": tensor.contiguous()
             for key, tensor in pipe.text_encoder.state_dict().items()}
    save_file(state, str(folder / "text_encoder" / "model.safetensors"))
    build_tiny_decoder(arch, torch.float32).save_pretrained(folder / "taesd", safe_serialization=True)
    done.write_text("ok", encoding="utf-8")
    return folder


class SdCppRunner:
    def __init__(self, workload: Workload) -> None:
        try:
            import stable_diffusion_cpp
            from stable_diffusion_cpp import StableDiffusion
        except ImportError as error:
            raise PeerUnavailable(
                "stable-diffusion-cpp-python is not installed (pip install stable-diffusion-cpp-python; "
                "it compiles stable-diffusion.cpp, about 10 min on 2 cores)"
            ) from error
        import torch

        if workload.kind != "txt2img" or workload.guidance > 1:
            raise PeerUnavailable("measured on the Turbo grid workloads only")
        if workload.arch.startswith("tiny") or "xl" in workload.arch:
            raise PeerUnavailable("stable-diffusion.cpp recognises only real SD1/SD2 shapes here")
        self.workload = workload
        self.timer = ComponentTimer()
        folder = export_folder(workload.arch)

        # FLOPs of the graphs it runs: the same modules, counted on torch's meta device.
        pipe = build_pipeline(workload.arch, torch.float32)
        tiny = build_tiny_decoder(workload.arch, torch.float32)
        side = workload.size // 8
        one = torch.zeros(1, pipe.unet.config.in_channels, side, side)
        embeds = torch.zeros(1, 77, pipe.text_encoder.config.hidden_size)
        self.flop_report = FlopReport()
        self.flop_report.add(count_module_flops(pipe.text_encoder, torch.zeros(1, 77, dtype=torch.int64)).labelled("text_encoder"))
        unet = count_module_flops(pipe.unet, one, torch.tensor(999.0), encoder_hidden_states=embeds)
        self.flop_report.add(unet.labelled("unet"), workload.steps * workload.count)
        self.flop_report.add(count_module_flops(tiny.decoder, one).labelled("decoder"), workload.count)
        del pipe, tiny

        # Its log lines carry its own component times; keep a reference so ctypes keeps the callback.
        @stable_diffusion_cpp.sd_log_callback
        def on_log(level: int, text: bytes, data: Any) -> None:
            match = LOG_TIMES.search(text.decode("utf-8", errors="replace"))
            if match:
                seconds = float(match.group(2)) / (1000 if match.group(3) == "ms" else 1)
                self.timer.totals[COMPONENT[match.group(1)]] = self.timer.totals.get(COMPONENT[match.group(1)], 0.0) + seconds

        self._on_log = on_log
        self.sd = StableDiffusion(
            model_path=str(folder),
            taesd_path=str(folder / "taesd" / "diffusion_pytorch_model.safetensors"),
            n_threads=os.cpu_count() or 1,
            wtype=WEIGHT_TYPE,
            flash_attn=True,  # about 2x faster here than without (its own recommendation for CPUs)
            diffusion_flash_attn=True,
            verbose=True,  # keeps the binding from muting the C library's log, which we parse
        )
        stable_diffusion_cpp.sd_set_log_callback(on_log, ctypes.c_void_p(0))
        version = getattr(stable_diffusion_cpp, "__version__", "?")
        self.notes = f"stable-diffusion-cpp-python {version}, weights {WEIGHT_TYPE.replace('default', 'fp32')}, flash attention, tiny decoder"

    def run(self, index: int) -> list[bytes]:
        w = self.workload
        images = self.sd.generate_image(
            prompt_for(index), width=w.size, height=w.size, cfg_scale=1.0, sample_steps=w.steps,
            sample_method="euler", seed=SEEDS[0], batch_count=w.count,
        )
        pngs = []
        for image in images:
            with self.timer.section("png"):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def flops(self, index: int) -> FlopReport:
        # A warm-up only where it is affordable: at 512² one grid takes minutes here. It loads all
        # weights at construction (no mmap), so a first run has no loading left to do.
        if self.workload.size <= 256:
            self.run(index)
        return self.flop_report

