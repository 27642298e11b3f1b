"""The CARAFE benchmark runs end to end on a small shape (timings themselves are not tested)."""

from __future__ import annotations

from glimpse.bench import carafe as bench
from glimpse.cli import main


def test_quick_bench_runs(capsys):
    assert main(["bench", "carafe", "--quick", "--threads", "1", "--repeats", "1",
                 "--no-memory", "--no-write"]) == 0
    out = capsys.readouterr().out
    assert "reference" in out and "forward+backward" in out and "clone_GBps_1t" in out


def test_cost_model_counts_flops_like_the_flop_formula():
    flops, _, bwd_flops, _ = bench._cost((2, 256, 50, 76))
    # 2 * s^2 * k^2 * C FLOPs per input location (CARAFE §3.3), backward twice the forward.
    assert flops == 2 * 4 * 25 * 256 * 2 * 50 * 76
    assert bwd_flops == 2 * flops
