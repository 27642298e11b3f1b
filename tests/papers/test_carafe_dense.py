"""glimpse.papers.carafe_dense: profiles, the transcribed Tables 5 and 7, table assembly and the
paired claim on hand-made runs, and a tiny end-to-end run (2 iterations of a few variants)
feeding the tables and both figures, then reused from its manifests."""

from __future__ import annotations

import dataclasses
import math

import matplotlib
import pandas as pd
import pytest
import torch

from glimpse import zoo
from glimpse.papers import carafe_dense as cd

matplotlib.use("Agg")


def test_profiles_and_resolve():
    assert set(cd.PROFILES) == {"smoke", "cpu", "full"}
    smoke = cd.resolve("smoke", device="auto", ade20k_root=None, places_root=None, seed=4)
    assert smoke.device == "cpu" and smoke.seeds == [4] and smoke.ade20k_root == ""
    cpu = cd.resolve("cpu")
    assert cpu.num_seeds == 3 and cpu.seeds == [0, 1, 2] and cpu.work_root
    full = cd.resolve("full")
    assert full.dry_run and full.seg_recipe == "csail" and full.upernet == "upernet_r50"
    assert cd.resolve("smoke", ade20k_root="/x").seg_name == "ade20k"
    assert cd.resolve("smoke", places_root="/y").inpaint_name == "places365"
    with pytest.raises(ValueError, match="seg_recipe 'cityscapes'"):
        cd.resolve("smoke", seg_recipe="cityscapes")
    with pytest.raises(TypeError, match="unknown .*not_a_field"):
        cd.resolve("smoke", not_a_field=1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        smoke.seed = 1  # type: ignore[misc]
    assert cd.run_dense(full).runs.empty


def test_variants():
    names = [v.name for v in cd.variants(cd.resolve("smoke"))]
    assert names == ["upernet", "upernet_carafe", "global_local", "global_local_carafe",
                     "pconv", "pconv_carafe", "pspnet", "upernet_carafe_fpn",
                     "upernet_carafe_ppm", "upernet_carafe_fuse"]
    by_name = {v.name: v for v in cd.variants(cd.resolve("smoke"))}
    assert by_name["upernet_carafe_ppm"].kwargs == {"ppm_upsampler": "carafe"}
    assert by_name["upernet_carafe"].model == "upernet_slim_carafe"
    assert not by_name["pspnet"].paired and by_name["pconv_carafe"].paired
    assert not by_name["global_local"].paired and not by_name["global_local_carafe"].paired
    # Global&Local trains and is evaluated on box holes, Partial Conv on free-form ones
    assert zoo.inpainter_mask_kind("global_local_slim_carafe") == "box"
    assert zoo.inpainter_mask_kind("pconv") == "free_form"
    with pytest.raises(KeyError, match="unknown inpainting model 'upernet_slim'"):
        zoo.inpainter_mask_kind("upernet_slim")


def _runs(rows: dict[str, list[dict[str, float]]]) -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, **m} for v, ms in rows.items()
                         for s, m in enumerate(ms)])


def test_tables_and_claim_on_hand_made_runs():
    cfg = cd.resolve("cpu")
    seg = {"upernet": [{"mIoU": 30.0, "pixel_acc": 70.0}, {"mIoU": 31.0, "pixel_acc": 71.0},
                       {"mIoU": 29.0, "pixel_acc": 69.0}],
           "upernet_carafe": [{"mIoU": 32.0, "pixel_acc": 72.0},
                              {"mIoU": 32.5, "pixel_acc": 72.0},
                              {"mIoU": 31.5, "pixel_acc": 70.0}],
           "upernet_carafe_ppm": [{"mIoU": 28.0, "pixel_acc": 68.0}]}
    inp = {"pconv": [{"psnr_whole": 20.0, "l1_whole": 5.0}] * 3,
           "pconv_carafe": [{"psnr_whole": 19.0, "l1_whole": 5.5},
                            {"psnr_whole": 18.8, "l1_whole": 5.6},
                            {"psnr_whole": 19.1, "l1_whole": 5.4}]}
    runs = _runs({**seg, **inp})
    t5 = cd.table5(cfg, runs).set_index("method")
    assert t5.loc["UperNet", "mIoU_paper"] == 40.44 and t5.loc["PSANet", "pixel_acc_paper"] == 80.17
    assert t5.loc["UperNet w/ CARAFE", "mIoU_glimpse"] == pytest.approx(32.0)
    assert t5.loc["UperNet w/ CARAFE", "seeds"] == 3
    assert t5.loc["PSPNet", "trained_by_paper"] == "no" and t5.loc["PSPNet", "seeds"] == 0
    assert math.isnan(t5.loc["PSANet", "mIoU_glimpse"])
    assert t5.loc["PSANet", "glimpse_model"] == "not implemented"
    pos = cd.position_table(cfg, runs).set_index("carafe_at")
    assert pos.loc["PPM", "mIoU_vs_none_seed0"] == pytest.approx(-2.0)
    assert pos.loc["all three", "mIoU_vs_none_seed0"] == pytest.approx(2.0)
    assert math.isnan(pos.loc["FPN", "mIoU_glimpse"]) and math.isnan(pos.loc["FPN", "paper_mIoU"])
    t7 = cd.table7(cfg, runs).set_index("method")
    assert t7.loc["Partial Conv w/ CARAFE", "PSNR_paper"] == 20.98
    assert t7.loc["Partial Conv w/ CARAFE", "psnr_whole_glimpse"] == pytest.approx(18.966667)
    assert t7.loc["Global&Local", "seeds"] == 0 and t7.loc["Global&Local", "masks"] == "box"
    claim = cd.claim_table(cfg, runs).set_index(["model", "metric"])
    assert claim.loc[("UperNet", "mIoU"), "verdict"] == "holds"
    assert claim.loc[("UperNet", "mIoU"), "paper_diff"] == pytest.approx(1.79)
    assert claim.loc[("Partial Conv", "psnr_whole"), "verdict"] == "does not hold"
    assert claim.loc[("Partial Conv", "l1_whole"), "verdict"] == "does not hold"
    assert set(claim["scope"]) == {"3 seeds"}
    assert ("Global&Local", "psnr_whole") not in claim.index  # not trained
    one = cd.claim_table(cfg, runs[runs["seed"] == 0])
    assert set(one["scope"]) == {"not a verdict: 1 seed"} and set(one["verdict"]) == {
        "inconclusive"}
    assert cd.claim_table(cfg, pd.DataFrame(columns=["variant", "seed"])).empty


def test_tiny_run_tables_figures_and_reuse(tmp_path):
    cfg = cd.resolve("smoke", seg_iters=2, inpaint_iters=2, max_seg_val_images=2,
                     max_inpaint_val_images=2, work_root=str(tmp_path))
    only = ("upernet", "upernet_carafe", "pconv", "pconv_carafe")
    first = cd.run_dense(cfg, verbose=False, only=only)
    runs = first.runs
    assert list(runs["variant"]) == list(only) and set(runs["iterations"]) == {2}
    assert not runs["reused"].any()
    assert runs.loc[runs["variant"] == "upernet", "mIoU"].between(0, 100).all()
    assert runs.loc[runs["variant"] == "pconv", "psnr_whole"].gt(0).all()
    assert (tmp_path / "upernet" / "seed0" / "manifest.json").is_file()
    assert len(cd.table5(cfg, runs)) == 4 and len(cd.claim_table(cfg, runs)) == 3
    fig = cd.upsampler_figure(first.models, torch.rand(3, 96, 96))
    assert len(fig.axes) == 10
    fig = cd.inpainting_figure(cfg, first.models, num_images=1)
    assert len(fig.axes) == 4  # G&L not trained here: Partial Conv's row only
    again = cd.run_dense(cfg, verbose=False, only=only)
    assert again.runs["reused"].all()
    pd.testing.assert_series_equal(again.runs["mIoU"], runs["mIoU"])
