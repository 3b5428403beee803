"""Counting the work a run does, and measuring how fast this machine can do work at best.

FLOPs come from torch's own FlopCounterMode (2 FLOP per multiply-add) around the real code path,
split by the top-level module that ran them, so "where the work goes" and "where the time goes"
use the same component names. The matmul peak is measured in the same run as everything else:
the floor of a workload (its FLOPs at the bf16 peak) is only meaningful on the same machine, at
the same moment, under the same load.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: Top-level module class names (as FlopCounterMode's module tracker names them) by component.
COMPONENTS = {
    "UNet2DConditionModel": "unet",
    "Decoder": "decoder",
    "DecoderTiny": "decoder",
    "Encoder": "encoder",
    "EncoderTiny": "encoder",
}


def component_of(module_name: str) -> str | None:
    """The component of a top-level module name; None for nested modules and the global total."""
    if "." in module_name:
        return None
    if module_name.startswith("CLIPText"):
        return "text_encoder"
    return COMPONENTS.get(module_name)


@dataclass
class FlopReport:
    total: int = 0
    by_component: dict[str, int] = field(default_factory=dict)

    def add(self, other: FlopReport, times: int = 1) -> None:
        self.total += other.total * times
        for name, flops in other.by_component.items():
            self.by_component[name] = self.by_component.get(name, 0) + flops * times

    def labelled(self, component: str) -> FlopReport:
        """The same total, all of it credited to `component`."""
        return FlopReport(total=self.total, by_component={component: self.total})

    def as_dict(self) -> dict[str, Any]:
        return {"total": self.total, "by_component": dict(self.by_component)}


def _cpu_attention_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, **kwargs: Any) -> int:
    from torch.utils.flop_counter import sdpa_flop_count

    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _custom_formulas() -> dict[Any, Any]:
    """Formulas torch's registry lacks: its CPU flash attention kernel counts as zero otherwise."""
    import torch

    return {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}


def count_flops(fn: Callable[[], Any]) -> tuple[Any, FlopReport]:
    """Run `fn` once under FlopCounterMode; return its result and the FLOPs it did."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False, custom_mapping=_custom_formulas()) as counter:
        result = fn()
    report = FlopReport(total=counter.get_total_flops())
    for name, ops in counter.get_flop_counts().items():
        component = component_of(name)
        if component is not None:
            report.by_component[component] = report.by_component.get(component, 0) + sum(ops.values())
    other = report.total - sum(report.by_component.values())
    if other:
        report.by_component["other"] = other
    return result, report


def count_module_flops(module: Any, *args: Any, **kwargs: Any) -> FlopReport:
    """FLOPs of one forward of `module` at the shapes of `args`, computed on the meta device.

    No arithmetic runs: a UNet forward at 4x512² is counted in a fraction of a second. Used for
    the peers, whose graphs are these same modules converted to another runtime.
    """
    import copy

    import torch

    def to_meta(value: Any) -> Any:
        if isinstance(value, torch.Tensor):
            return torch.empty(value.shape, dtype=value.dtype, device="meta")
        if isinstance(value, dict):
            return {k: to_meta(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return type(value)(to_meta(v) for v in value)
        return value

    meta = copy.deepcopy(module).to("meta")
    _, report = count_flops(lambda: meta(*to_meta(args), **to_meta(kwargs)))
    return report


def matmul_peak(dtype: Any, size: int = 4096, repeats: int = 5) -> float:
    """GFLOP/s of a size³ matmul in `dtype`: the best of `repeats` after one warm-up."""
    import torch

    generator = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=generator).to(dtype)
    b = torch.randn(size, size, generator=generator).to(dtype)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9
