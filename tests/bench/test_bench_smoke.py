"""The benchmark harness on the tiny model: the shape of its table and JSON, and FLOP counting.

Correctness only: nothing here asserts a time, since these 2 cores are shared.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from bench.architectures import build_pipeline, build_tiny_decoder
from bench.flops import count_flops, count_module_flops
from bench.run import main


def unet_flops(pipe, batch: int, side: int) -> int:
    sample = torch.zeros(batch, 4, side, side)
    embeds = torch.zeros(batch, 77, pipe.text_encoder.config.hidden_size)
    return count_module_flops(pipe.unet, sample, torch.tensor(999.0), encoder_hidden_states=embeds).total


def test_cpu_attention_is_counted_and_matches_the_meta_count():
    # torch's registry has no formula for the CPU flash-attention kernel; ours must add it.
    pipe = build_pipeline("tiny")
    sample, embeds = torch.randn(2, 4, 8, 8), torch.randn(2, 77, 32)
    with torch.inference_mode():
        _, real = count_flops(lambda: pipe.unet(sample, torch.tensor(999.0), encoder_hidden_states=embeds))
        with FlopCounterMode(display=False) as plain:
            pipe.unet(sample, torch.tensor(999.0), encoder_hidden_states=embeds)
    assert real.by_component == {"unet": real.total}
    assert real.total == unet_flops(pipe, 2, 8) > plain.get_total_flops() > 0
    decoder = count_module_flops(build_tiny_decoder("tiny").decoder, torch.zeros(1, 4, 8, 8))
    assert decoder.total > 0 and decoder.by_component == {"decoder": decoder.total}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    code = main([
        "--tiny", "--in-process", "--runs", "2", "--json", str(out),
        "--workloads", "grid256", "upscale512", "img2img256",
        "--variants", "engine", "engine-tuned", "baseline", "sdcpp",
    ])
    assert code == 0
    return json.loads(out.read_text())


def rows(report, workload):
    return {row["variant"]: row for row in report["results"] if row["workload"] == workload}


def test_json_has_every_configuration_and_the_peaks(report):
    assert report["command"].startswith("python -m bench.run --tiny")
    for kind in ("fp32", "bf16"):
        assert report["matmul_peak_gflops"]["used"][kind] > 0
    grid = rows(report, "grid256")
    assert set(grid) == {"engine", "engine-tuned", "baseline", "sdcpp"}
    assert "proposed" in grid["engine-tuned"]["notes"] and "proposed" not in grid["engine"]["notes"]
    # A peer that cannot run says why instead of vanishing from the table.
    # (Which reason depends on whether stable-diffusion-cpp-python is installed here.)
    reason = grid["sdcpp"]["unavailable"]
    assert "SD1/SD2" in reason or "is not installed" in reason, reason
    # Peers are only run on the grid workloads.
    assert set(rows(report, "upscale512")) == {"engine", "engine-tuned", "baseline"}


def test_each_measured_row_has_times_flops_memory_and_ratios(report):
    peak = report["matmul_peak_gflops"]["used"]
    for row in report["results"]:
        if row["variant"] == "sdcpp":
            continue
        baseline = rows(report, row["workload"])["baseline"]
        assert len(row["times"]) == 2 and row["seconds"] == pytest.approx(sorted(row["times"])[0] / 2 + sorted(row["times"])[1] / 2)
        assert row["flops"]["total"] > 0
        assert row["gflops_per_s"] == pytest.approx(row["flops"]["total"] / row["seconds"] / 1e9)
        assert row["fraction_of_bf16_peak"] == pytest.approx(row["gflops_per_s"] / peak["bf16"])
        assert row["fraction_of_fp32_peak"] == pytest.approx(row["gflops_per_s"] / peak["fp32"])
        assert row["times_floor"] == pytest.approx(row["seconds"] / (row["flops"]["total"] / peak["bf16"] / 1e9))
        assert row["speedup_vs_baseline"] == pytest.approx(baseline["seconds"] / row["seconds"])
        assert row["peak_rss_bytes"] > 100 * 2**20
        assert row["png_bytes"] > 0
        assert all(seconds >= 0 for seconds in row["components_s"].values())
        assert sum(row["components_s"].values()) > 0


def test_flops_split_by_component_follow_the_workload(report):
    pipe = build_pipeline("tiny")
    grid = rows(report, "grid256")
    for variant in ("engine", "baseline"):
        parts = grid[variant]["flops"]["by_component"]
        assert grid[variant]["images"] == 4
        # Guidance is off for Turbo: the UNet runs once on a batch of four, not doubled.
        assert parts["unet"] == unet_flops(pipe, 4, 8)
        assert parts["text_encoder"] > 0 and parts["decoder"] > 0
        assert "encoder" not in parts
    # The engine decodes grids with the tiny decoder: less decoder work than the full VAE.
    assert grid["engine"]["flops"]["by_component"]["decoder"] < grid["baseline"]["flops"]["by_component"]["decoder"]
    upscale = rows(report, "upscale512")["engine"]
    assert upscale["images"] == 1
    assert set(upscale["flops"]["by_component"]) <= {"decoder", "other"}
    img2img = rows(report, "img2img256")["engine"]["flops"]["by_component"]
    assert img2img["encoder"] > 0


def test_table_and_verdicts_on_stdout(tmp_path, capsys):
    assert main(["--tiny", "--in-process", "--runs", "1", "--workloads", "grid256", "--variants", "engine", "baseline"]) == 0
    out = capsys.readouterr().out
    assert "| workload | variant | median s |" in out
    assert "| grid256 | engine |" in out and "| grid256 | baseline |" in out
    assert "text_encoder s (GFLOP)" in out
    assert "grid256: " in out and "faster than the fp32 baseline" in out and "× the floor" in out
