"""The benchmark's one command: `python -m bench.run [--quick] [--workloads ...] [--json out.json]`.

It measures the matmul peak, then runs every (workload, variant) configuration in a fresh Python
process (so peak RSS is that configuration's own, and no variant warms caches for another),
prints a table and writes the JSON. Ratios are only ever taken between numbers of the same run.
`--tiny` runs the same harness on the tiny test model in seconds (the smoke test uses it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.workloads import DEFAULT_WORKLOADS, PEERS, QUICK_WORKLOADS, TORCH_VARIANTS, WORKLOADS

VARIANTS = (*TORCH_VARIANTS, *PEERS)
TARGET_SPEEDUP = 6.0
TARGET_FLOOR = 1.5
CHILD_TIMEOUT_S = 2400


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help=f"only {', '.join(QUICK_WORKLOADS)}")
    parser.add_argument("--tiny", action="store_true", help="the tiny test model at 64² (checks the harness, measures nothing real)")
    parser.add_argument("--workloads", nargs="+", choices=sorted(WORKLOADS), metavar="NAME",
                        help=f"any of {', '.join(WORKLOADS)} (default: {', '.join(DEFAULT_WORKLOADS)})")
    parser.add_argument("--variants", nargs="+", choices=VARIANTS, metavar="NAME",
                        help=f"any of {', '.join(VARIANTS)} (default: each workload's own list; peers on the grids)")
    parser.add_argument("--runs", type=int, default=3, help="timed runs per configuration, after one counted warm-up (default 3)")
    parser.add_argument("--json", type=Path, help="write all results here")
    parser.add_argument("--in-process", action="store_true",
                        help="run every configuration in this process (fast; peak RSS is then not per configuration)")
    parser.add_argument("--child", nargs=2, metavar=("WORKLOAD", "VARIANT"), help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


# --- one configuration, in its own process ---------------------------------------------------------
def run_here(name: str, variant: str, runs: int, tiny: bool) -> dict[str, Any]:
    from bench.measure import PeerUnavailable, measure
    from bench.workloads import make_runner

    workload = WORKLOADS[name].tiny() if tiny else WORKLOADS[name]
    try:
        return measure(lambda: make_runner(workload, variant), runs)
    except PeerUnavailable as reason:
        return {"unavailable": str(reason)}


def child(args: argparse.Namespace) -> int:
    result = run_here(args.child[0], args.child[1], args.runs, args.tiny)
    args.out.write_text(json.dumps(result), encoding="utf-8")
    return 0


def run_child(workload: str, variant: str, runs: int, tiny: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        command = [sys.executable, "-m", "bench.run", "--child", workload, variant, "--runs", str(runs), "--out", str(out)]
        if tiny:
            command.append("--tiny")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
        try:
            done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S, env=env)
        except subprocess.TimeoutExpired:
            return {"error": f"did not finish in {CHILD_TIMEOUT_S} s"}
        if done.returncode != 0 or not out.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
            return {"error": tail[0][:300]}
        return json.loads(out.read_text(encoding="utf-8"))


# --- the whole run ----------------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    import torch

    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "load_average": os.getloadavg(),
    }


def peaks(tiny: bool) -> dict[str, float]:
    import torch

    from bench.flops import matmul_peak

    size = 1024 if tiny else 4096
    return {"fp32": matmul_peak(torch.float32, size), "bf16": matmul_peak(torch.bfloat16, size)}


def derive(rows: list[dict[str, Any]], peak: dict[str, float]) -> None:
    """Add GFLOP/s, fractions of the peaks, the floor and the ratio to the baseline to each row."""
    baselines = {row["workload"]: row for row in rows if row["variant"] == "baseline" and "seconds" in row}
    for row in rows:
        if "seconds" not in row:
            continue
        flops = row["flops"]["total"]
        row["gflop"] = flops / 1e9
        row["gflops_per_s"] = flops / row["seconds"] / 1e9
        row["fraction_of_bf16_peak"] = row["gflops_per_s"] / peak["bf16"]
        row["fraction_of_fp32_peak"] = row["gflops_per_s"] / peak["fp32"]
        row["floor_s"] = flops / (peak["bf16"] * 1e9)
        row["times_floor"] = row["seconds"] / row["floor_s"] if row["floor_s"] else None
        base = baselines.get(row["workload"])
        row["speedup_vs_baseline"] = base["seconds"] / row["seconds"] if base else None


def verdicts(rows: list[dict[str, Any]]) -> list[str]:
    """The issue's targets, checked on the 512² grid (or the 256² one when that is all that ran)."""
    lines = []
    for name in ("grid512", "grid256"):
        by_variant = {row["variant"]: row for row in rows if row["workload"] == name and "seconds" in row}
        ours = by_variant.get("engine")
        if ours is None:
            continue
        if ours.get("speedup_vs_baseline") is not None:
            ok = ours["speedup_vs_baseline"] >= TARGET_SPEEDUP
            lines.append(f"{name}: {ours['speedup_vs_baseline']:.2f}× faster than the fp32 baseline "
                         f"(target ≥ {TARGET_SPEEDUP:g}×): {'MET' if ok else 'MISSED'}")
        ok = ours["times_floor"] <= TARGET_FLOOR
        lines.append(f"{name}: {ours['times_floor']:.2f}× the floor of {ours['floor_s']:.2f} s "
                     f"(target ≤ {TARGET_FLOOR:g}×): {'MET' if ok else 'MISSED'}")
        for peer in ("openvino", "sdcpp"):
            if peer in by_variant:
                other = by_variant[peer]["seconds"]
                ok = ours["seconds"] < other
                lines.append(f"{name}: engine {ours['seconds']:.2f} s vs {peer} {other:.2f} s: {'MET' if ok else 'MISSED'}")
    return lines


def _fmt(value: Any, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def _amount(value: float) -> str:
    """Whole numbers for real models; three figures for the tiny one's small ones."""
    return f"{value:.0f}" if value >= 10 else f"{value:.3g}"


def table(rows: list[dict[str, Any]]) -> str:
    header = ("workload", "variant", "median s", "runs", "GFLOP", "GFLOP/s", "% bf16 pk", "% fp32 pk", "× floor",
              "peak RSS GB", "× faster than baseline", "notes")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "seconds" not in row:
            why = row.get("unavailable") or f"failed: {row.get('error')}"
            cells = [row["workload"], row["variant"], *(["—"] * 9), why]
        else:
            cells = [
                row["workload"], row["variant"], f"{row['seconds']:.2f}", str(len(row["times"])), _amount(row["gflop"]),
                _amount(row["gflops_per_s"]), f"{100 * row['fraction_of_bf16_peak']:.0f}%",
                f"{100 * row['fraction_of_fp32_peak']:.0f}%", _fmt(row["times_floor"], ".2f"),
                f"{row['peak_rss_bytes'] / 2**30:.1f}", _fmt(row["speedup_vs_baseline"], ".2f"), row["notes"],
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def components_table(rows: list[dict[str, Any]]) -> str:
    """Where the time goes: median seconds per component, and the FLOPs each did."""
    names = ("text_encoder", "unet", "decoder", "encoder", "png", "other")
    header = ("workload", "variant", *(f"{n} s (GFLOP)" for n in names))
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        if "seconds" not in row:
            continue
        cells = [row["workload"], row["variant"]]
        for name in names:
            seconds = row["components_s"].get(name)
            gflop = row["flops"]["by_component"].get(name)
            text = "—" if seconds is None else f"{seconds:.2f}"
            if gflop:
                text += f" ({_amount(gflop / 1e9)})"
            cells.append(text)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.child:
        return child(args)
    names = args.workloads or (QUICK_WORKLOADS if args.quick else DEFAULT_WORKLOADS)
    started = time.time()
    info = machine()
    print(f"# {info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
          f"load average {info['load_average'][0]:.2f}", flush=True)
    peak_before = peaks(args.tiny)
    print(f"# matmul peak: fp32 {peak_before['fp32']:.0f} GFLOP/s, bf16 {peak_before['bf16']:.0f} GFLOP/s", flush=True)
    rows: list[dict[str, Any]] = []
    for name in names:
        workload = WORKLOADS[name]
        for variant in args.variants or VARIANTS:
            # engine-tuned is opt-in: it runs on any workload when named in --variants.
            if variant not in workload.variants and not (variant == "engine-tuned" and args.variants):
                continue
            runs = args.runs if args.tiny else min(args.runs, workload.runs_for(variant, args.runs))
            print(f"# {name} / {variant} ...", end=" ", flush=True)
            result = run_here(name, variant, runs, args.tiny) if args.in_process else run_child(name, variant, runs, args.tiny)
            print(f"{result['seconds']:.2f} s" if "seconds" in result else result.get("unavailable") or result.get("error"), flush=True)
            rows.append({"workload": name, "title": workload.title, "variant": variant, **result})
    peak_after = peaks(args.tiny)
    # The higher of the two measurements: the floor is then the harder one to get near.
    peak = {kind: max(peak_before[kind], peak_after[kind]) for kind in peak_before}
    derive(rows, peak)
    print(f"# matmul peak after: fp32 {peak_after['fp32']:.0f}, bf16 {peak_after['bf16']:.0f} GFLOP/s; "
          f"using fp32 {peak['fp32']:.0f}, bf16 {peak['bf16']:.0f}")
    print()
    print(table(rows))
    print()
    print(components_table(rows))
    print()
    for line in verdicts(rows):
        print(line)
    report = {
        "command": "python -m bench.run " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": info,
        "load_average_end": os.getloadavg(),
        "matmul_peak_gflops": {"before": peak_before, "after": peak_after, "used": peak},
        "wall_s": time.time() - started,
        "results": rows,
        "verdicts": verdicts(rows),
    }
    if args.json:
        args.json.write_text(json.dumps(report, indent=2), encoding="utf-8")
        print(f"\n# wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
