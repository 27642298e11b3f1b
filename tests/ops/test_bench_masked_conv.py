"""``python -m glimpse bench masked_conv`` at a tiny size: the table's columns and kept counts,
the break-even by hand, and clear errors."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from glimpse.bench import masked_conv as bench


def test_bench_table_at_a_tiny_size():
    df = bench.run([("tiny", 10, 12)], densities=(0.1, 1.0), channels=4, repeats=1)
    assert list(df["kept"]) == [12, 120]
    assert {"dense_ms", "masked_ms", "kernel_ms", "kernel_ratio", "path", "ratio", "ideal",
            "ratio_over_ideal"} <= set(df.columns)
    assert (df["ratio"] > 0).all() and list(df["ideal"]) == [0.1, 1.0]
    assert set(df["path"]) <= {"kernel", "dense", "reference"}
    assert df["path"].iloc[-1] in ("dense", "reference")  # every pixel kept


def test_break_even_interpolates_the_crossing():
    table = pd.DataFrame({"level": ["A"] * 3 + ["B"] * 2, "density": [0.5, 0.25, 0.75, 0.1, 1.0],
                          "kernel_ratio": [0.9, 0.5, 1.3, 0.2, 0.8]})
    got = bench.break_even(table).set_index("level")["break_even"]
    assert got["A"] == pytest.approx(0.5 + 0.1 / 0.4 * 0.25)  # between 0.5 (0.9) and 0.75 (1.3)
    assert math.isnan(got["B"])  # never as slow as dense in the measured range


def test_bench_rejects_bad_settings():
    with pytest.raises(ValueError, match="densities"):
        bench.run([("tiny", 4, 4)], densities=(0.0,), channels=4, repeats=1)
    with pytest.raises(ValueError, match="repeats"):
        bench.run([("tiny", 4, 4)], channels=4, repeats=0)
