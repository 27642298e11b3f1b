"""``python -m glimpse bench ga``: the kept fraction is set as asked, and a slim row runs."""

from __future__ import annotations

import pytest
import torch

from glimpse import zoo
from glimpse.bench import ga as bench


@pytest.mark.parametrize("kept", [0.1, 0.294, 1.0])
def test_set_kept_fraction(kept):
    torch.manual_seed(0)
    model = zoo.build("ga_rpn_slim_fpn", image_scale=(128, 128)).eval()
    image = torch.rand(3, 128, 128, generator=torch.Generator().manual_seed(0))
    got = bench.set_kept_fraction(model, image, kept)
    locations = sum((128 // s) ** 2 for s in (4, 8, 16, 32, 64))  # 1364 on the padded maps
    assert got == pytest.approx(kept, abs=1.5 / locations)
    with pytest.raises(ValueError, match="kept"):
        bench.set_kept_fraction(model, image, 0.0)


def test_slim_row():
    table = bench.run(["slim"], kept=[0.5], repeats=1, warmup=0)
    row = table.iloc[0]
    assert (row["rpn"], row["ga_rpn"], row["input"]) == ("rpn_slim_fpn", "ga_rpn_slim_fpn",
                                                         "256x256")
    assert row["ratio"] == pytest.approx(row["ga_rpn_s"] / row["rpn_s"])
    assert 0 < row["ga_rpn_proposals"] <= 1000 and 0 < row["rpn_proposals"] <= 1000
    with pytest.raises(ValueError, match="unknown"):
        bench.run(["r18"])
