"""``python -m glimpse bench deform_conv`` at a tiny size: the table's rows and columns, the two
implementations agreeing, and clear errors."""

from __future__ import annotations

import pytest

from glimpse.bench import deform_conv as bench
from glimpse.cli import main


def test_bench_table_at_a_tiny_size():
    df = bench.run(bench.QUICK_SHAPES, repeats=1)
    assert list(df["pass"]) == ["forward", "forward+backward"]
    assert (df["torchvision_ms"] > 0).all() and (df["glimpse_ms"] > 0).all()
    assert df["speedup"].tolist() == pytest.approx((df["torchvision_ms"] / df["glimpse_ms"])
                                                   .tolist())
    assert (df["max_abs_diff"] < 1e-4).all()


def test_bench_rejects_bad_settings(capsys):
    with pytest.raises(ValueError, match="repeats"):
        bench.run(bench.QUICK_SHAPES, repeats=0)
    assert main(["bench", "deform_conv", "--threads", "0", "--quick"]) == 2
    assert "--threads" in capsys.readouterr().err
