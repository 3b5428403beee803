"""The OpenVINO peer: FastSD CPU's recipe on the very same random-weight model.

The text encoder, the UNet and the TAESD-shaped tiny decoder are converted with `ov.convert_model`
(the plain `openvino` package; optimum-intel cannot be installed beside diffusers 0.42, see
shared/design.md), reshaped to static shapes for this workload and compiled for the CPU with
OpenVINO's own precision choice (bf16 where the CPU has it). The loop around them is the minimal
one FastSD runs for a Turbo model: one text encoding (guidance is off), the UNet on the whole batch,
each image through the tiny decoder, PNG. Converted models are cached as IR under the bench cache.
"""

from __future__ import annotations

import copy
import io
import warnings
from typing import Any

from bench.architectures import build_pipeline, build_tiny_decoder, cache_dir
from bench.flops import FlopReport, count_module_flops
from bench.measure import ComponentTimer, PeerUnavailable
from bench.workloads import SEEDS, Workload, prompt_for


def _wrappers(pipe: Any, tiny: Any) -> dict[str, Any]:
    """Plain-tensor-in, plain-tensor-out modules, the form convert_model traces."""
    import torch

    class TextEncoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = pipe.text_encoder

        def forward(self, ids: torch.Tensor) -> torch.Tensor:
            return self.inner(ids, return_dict=False)[0]

    class Unet(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = pipe.unet

        def forward(self, sample: torch.Tensor, timestep: torch.Tensor, embeds: torch.Tensor) -> torch.Tensor:
            return self.inner(sample, timestep, encoder_hidden_states=embeds, return_dict=False)[0]

    class Decoder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = tiny

        def forward(self, latents: torch.Tensor) -> torch.Tensor:
            return self.inner.decode(latents, return_dict=False)[0]

    return {"text_encoder": TextEncoder().eval(), "unet": Unet().eval(), "decoder": Decoder().eval()}


class OpenVinoRunner:
    def __init__(self, workload: Workload) -> None:
        try:
            import openvino as ov
        except ImportError as error:
            raise PeerUnavailable("openvino is not installed (pip install openvino)") from error
        import torch

        if workload.kind != "txt2img" or workload.guidance > 1:
            raise PeerUnavailable("measured on the Turbo grid workloads only")
        if "XL" in workload.arch.upper():
            raise PeerUnavailable("SDXL is not wired up for this peer")
        self.workload = workload
        self.timer = ComponentTimer()
        n, side = workload.count, workload.size // 8
        pipe = build_pipeline(workload.arch, torch.float32)
        tiny = build_tiny_decoder(workload.arch, torch.float32)
        channels = pipe.unet.config.in_channels
        width = pipe.text_encoder.config.hidden_size
        examples = {
            "text_encoder": (torch.zeros(1, 77, dtype=torch.int64),),
            "unet": (torch.zeros(n, channels, side, side), torch.tensor(999.0), torch.zeros(n, 77, width)),
            "decoder": (torch.zeros(1, channels, side, side),),
        }
        wrappers = _wrappers(pipe, tiny)
        # The graph each compiled model runs, counted on torch's meta device at the same static shapes.
        self.flop_report = FlopReport()
        repeats = {"text_encoder": 1, "unet": workload.steps, "decoder": n}
        for name, module in wrappers.items():
            self.flop_report.add(count_module_flops(module, *examples[name]).labelled(name), repeats[name])

        core = ov.Core()
        precision = core.get_property("CPU", "INFERENCE_PRECISION_HINT").get_type_name()
        config = {"PERFORMANCE_HINT": "LATENCY"}
        folder = cache_dir() / "openvino"
        folder.mkdir(parents=True, exist_ok=True)
        self.compiled: dict[str, Any] = {}
        for name, module in wrappers.items():
            path = folder / f"{workload.arch}-{name}.xml"
            if path.is_file():
                model = core.read_model(str(path))
            else:
                with torch.no_grad(), warnings.catch_warnings():
                    warnings.simplefilter("ignore", torch.jit.TracerWarning)
                    model = ov.convert_model(module, example_input=examples[name])
                ov.save_model(model, str(path), compress_to_fp16=False)
            model.reshape({i: ov.PartialShape(list(example.shape)) for i, example in enumerate(examples[name])})
            self.compiled[name] = core.compile_model(model, "CPU", config)
            del model
        self.tokenizer = pipe.tokenizer
        self.scheduler = copy.deepcopy(pipe.scheduler)
        self.image_processor = pipe.image_processor
        del pipe, tiny, wrappers
        self.notes = f"openvino {ov.get_version().split('-')[0]}, {precision}, static shapes, tiny decoder"

    def run(self, index: int) -> list[bytes]:
        import numpy as np
        import torch

        w = self.workload
        ids = self.tokenizer(prompt_for(index), padding="max_length", max_length=77, truncation=True, return_tensors="np")
        with self.timer.section("text_encoder"):
            embeds = self.compiled["text_encoder"]([ids.input_ids.astype(np.int64)])[0]
        embeds = np.repeat(embeds, w.count, axis=0)
        scheduler = copy.deepcopy(self.scheduler)
        scheduler.set_timesteps(w.steps)
        side = w.size // 8
        noise = [torch.randn((1, 4, side, side), generator=torch.Generator("cpu").manual_seed(seed)) for seed in SEEDS[: w.count]]
        latents = torch.cat(noise) * scheduler.init_noise_sigma
        for timestep in scheduler.timesteps:
            sample = scheduler.scale_model_input(latents, timestep)
            with self.timer.section("unet"):
                predicted = self.compiled["unet"]([sample.numpy(), np.array(float(timestep), dtype=np.float32), embeds])[0]
            latents = scheduler.step(torch.from_numpy(predicted), timestep, latents).prev_sample
        pngs = []
        for i in range(w.count):
            with self.timer.section("decoder"):
                pixels = self.compiled["decoder"]([latents[i : i + 1].numpy()])[0]
            image = self.image_processor.postprocess(torch.from_numpy(pixels), output_type="pil")[0]
            with self.timer.section("png"):
                buffer = io.BytesIO()
                image.save(buffer, format="PNG")
            pngs.append(buffer.getvalue())
        return pngs

    def flops(self, index: int) -> FlopReport:
        self.run(index)  # the warm-up
        return self.flop_report

