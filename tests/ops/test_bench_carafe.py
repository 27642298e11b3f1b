"""The CARAFE benchmark runs end to end on a small shape (timings themselves are not tested)."""

from __future__ import annotations

from glimpse.bench import carafe as bench
from glimpse.cli import main


def test_quick_bench_runs(capsys):
    assert main(["bench", "carafe", "--quick", "--threads", "1", "--repeats", "1",
                 "--no-memory", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "forward+backward" in out and "clone_GBps_1t" in out
    assert "x_floor" in out and "x_fresh_alloc_floor" in out


def test_floors_and_skipped_reference(monkeypatch):
    # A reference too large to time is left out; both floors are reported for every row.
    monkeypatch.setattr(bench, "REFERENCE_LIMIT_BYTES", 4 * 64 * 25 * 25 * 38 - 1)
    table, machine = bench.run([(1, 64, 25, 38), (1, 8, 4, 4)], [1], 1, memory=False)
    timed = set(zip(table["shape"], table["impl"]))
    assert ("1x64x25x38", "reference") not in timed and ("1x8x4x4", "reference") in timed
    assert machine["copy_GBps_1t"] > 0 and machine["clone_GBps_1t"] > 0
    assert table[["floor_ms", "fresh_alloc_floor_ms", "x_floor"]].gt(0).all().all()


def test_cost_model_counts_flops_like_the_flop_formula():
    flops, _, bwd_flops, _ = bench._cost((2, 256, 50, 76))
    # 2 * s^2 * k^2 * C FLOPs per input location (CARAFE §3.3), backward twice the forward.
    assert flops == 2 * 4 * 25 * 256 * 2 * 50 * 76
    assert bwd_flops == 2 * flops
