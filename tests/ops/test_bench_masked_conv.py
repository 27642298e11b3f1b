"""``python -m glimpse bench masked_conv`` at a tiny size: the table's columns and kept counts,
and clear errors."""

from __future__ import annotations

import pytest

from glimpse.bench import masked_conv as bench


def test_bench_table_at_a_tiny_size():
    df = bench.run([("tiny", 10, 12)], densities=(0.1, 1.0), channels=4, repeats=1)
    assert list(df["kept"]) == [12, 120]
    assert {"dense_ms", "masked_ms", "ratio", "ideal", "ratio_over_ideal"} <= set(df.columns)
    assert (df["ratio"] > 0).all() and list(df["ideal"]) == [0.1, 1.0]


def test_bench_rejects_bad_settings():
    with pytest.raises(ValueError, match="densities"):
        bench.run([("tiny", 4, 4)], densities=(0.0,), channels=4, repeats=1)
    with pytest.raises(ValueError, match="repeats"):
        bench.run([("tiny", 4, 4)], channels=4, repeats=0)
