"""How one configuration is measured: warm up while counting FLOPs, then time several runs.

Every variant (our engine, plain diffusers, each peer) is a `Runner`: something that makes the
workload's PNGs once per call and reports, through a `ComponentTimer`, how long its text encoder,
UNet, decoder, encoder and PNG encoding took. `measure` gives every runner the same protocol, in a
process of its own so that peak RSS belongs to that configuration alone.
"""

from __future__ import annotations

import contextlib
import gc
import statistics
import time
from collections.abc import Callable, Iterator
from typing import Any, Protocol

from bench.flops import FlopReport, count_flops


class PeerUnavailable(Exception):
    """A peer that cannot be installed or run here; the message says why, for the table."""


class ComponentTimer:
    """Wall time per component within one run, from module hooks and explicit sections."""

    def __init__(self) -> None:
        self.totals: dict[str, float] = {}
        self._started: dict[int, float] = {}

    def reset(self) -> None:
        self.totals = {}

    def _add(self, name: str, seconds: float) -> None:
        self.totals[name] = self.totals.get(name, 0.0) + seconds

    def watch(self, name: str, module: Any) -> None:
        """Time every forward of `module` (a torch module) as `name`."""
        key = id(module)

        def before(*_: Any) -> None:
            self._started[key] = time.perf_counter()

        def after(*_: Any) -> None:
            self._add(name, time.perf_counter() - self._started.pop(key))

        module.register_forward_pre_hook(before)
        module.register_forward_hook(after)

    def wrap(self, name: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed(*args: Any, **kwargs: Any) -> Any:
            with self.section(name):
                return fn(*args, **kwargs)

        timed.__wrapped__ = fn  # type: ignore[attr-defined]
        return timed

    @contextlib.contextmanager
    def section(self, name: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self._add(name, time.perf_counter() - start)


class Runner(Protocol):
    timer: ComponentTimer
    #: What the table's "notes" column says about this configuration (dtype, decoder, runtime).
    notes: str

    def run(self, index: int) -> list[bytes]:
        """Make the workload's PNGs once; `index` varies the prompt so no cache serves it."""

    def flops(self, index: int) -> FlopReport:
        """The FLOPs of one run; may run it (the warm-up) or count the same graph without running."""


def counted_run(runner: Runner, index: int) -> FlopReport:
    """The usual `Runner.flops`: run once under FlopCounterMode (this run is the warm-up)."""
    _, report = count_flops(lambda: runner.run(index))
    return report


def reset_peak_rss() -> None:
    """Start a new peak-RSS window (Linux: /proc/self/clear_refs); model building stays out of it."""
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as refs:
            refs.write("5")


def peak_rss_bytes() -> int:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def measure(make_runner: Callable[[], Runner], runs: int) -> dict[str, Any]:
    """Build, warm up with FLOP counting, then time `runs` runs; a JSON-ready dict."""
    start = time.perf_counter()
    runner = make_runner()
    setup_s = time.perf_counter() - start
    gc.collect()
    reset_peak_rss()
    start = time.perf_counter()
    flops = runner.flops(0)
    warmup_s = time.perf_counter() - start
    times: list[float] = []
    components: list[dict[str, float]] = []
    outputs: list[bytes] = []
    for index in range(1, runs + 1):
        runner.timer.reset()
        start = time.perf_counter()
        outputs = runner.run(index)
        elapsed = time.perf_counter() - start
        times.append(elapsed)
        parts = dict(runner.timer.totals)
        parts["other"] = max(0.0, elapsed - sum(parts.values()))
        components.append(parts)
    names = sorted({name for parts in components for name in parts})
    return {
        "seconds": statistics.median(times),
        "times": times,
        "components_s": {name: statistics.median(parts.get(name, 0.0) for parts in components) for name in names},
        "flops": flops.as_dict(),
        "peak_rss_bytes": peak_rss_bytes(),
        "setup_s": setup_s,
        "warmup_s": warmup_s,
        "images": len(outputs),
        "png_bytes": sum(len(png) for png in outputs),
        "notes": runner.notes,
    }
