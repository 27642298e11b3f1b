"""glimpse.papers.carafe: profiles, the transcribed paper tables, Table 2's FLOPs and
parameters from the layers, table assembly on hand-made runs, the paired claim, and a dry run of
the smoke experiment (every variant for 2 iterations) feeding the operator figures."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from glimpse.layers import PAPER_FLOPS, UPSAMPLERS, upsampler_flops
from glimpse.papers import carafe
from glimpse.papers.runner import VERDICTS


def test_profiles_and_resolve():
    assert set(carafe.PROFILES) == {"smoke", "cpu", "full"}
    for cfg in carafe.PROFILES.values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.seed = 3  # type: ignore[misc]
    cfg = carafe.resolve("smoke", device="auto", data_root=None, seed=5,
                         fpn_upsamplers=["nearest", "carafe"])
    assert cfg.device == "cpu" and cfg.seed == 5 and cfg.data_root == ""
    assert cfg.fpn_upsamplers == ("nearest", "carafe") and cfg.seeds == [5, 6]
    assert carafe.resolve("cpu").num_seeds == 3
    assert carafe.resolve("cpu").fpn_upsamplers == tuple(UPSAMPLERS)
    full = carafe.resolve("full")
    assert full.dry_run and full.faster_model == "faster_rcnn_r50_fpn_carafe"
    assert full.image_scale == (1333, 800)
    with pytest.raises(TypeError, match="unknown.*not_a_field"):
        carafe.resolve("smoke", not_a_field=1)
    with pytest.raises(ValueError, match="unknown profile 'huge' for CARAFE"):
        carafe.resolve("huge")
    with pytest.raises(ValueError, match="fpn_upsamplers: unknown upsampler.*'bicubic'"):
        carafe.resolve("smoke", fpn_upsamplers=("nearest", "bicubic"))
    with pytest.raises(ValueError, match="claim_fpn .* must be among fpn_upsamplers"):
        carafe.resolve("smoke", fpn_upsamplers=("nearest",))


def test_paper_tables_load():
    t1 = carafe.paper_table("table1")
    assert len(t1) == 6 and set(t1["task"]) == {"bbox", "segm"}
    row = t1[(t1["method"] == "Mask R-CNN w/ CARAFE") & (t1["task"] == "segm")].iloc[0]
    assert (row["AP"], row["AP50"], row["APl"]) == (35.9, 58.1, 46.5)
    t2 = carafe.paper_table("table2").set_index("name")
    assert list(t2.index) == [n for n in UPSAMPLERS if n != "dysample"]
    assert t2.loc["carafe", "AP"] == 37.8 and t2.loc["nearest", "AP"] == 36.5
    # the printed FLOPs column is the one the layers module carries
    assert all(t2.loc[n, "flops"] == PAPER_FLOPS[n] for n in t2.index)
    later = carafe.paper_table("successors")
    assert later.set_index("method").loc["FreqFusion (TPAMI 2024)", "faster_AP"] == 39.4
    with pytest.raises(FileNotFoundError):
        carafe.paper_table("table9")


def _runs(values: dict[str, list[float]], metric: str = "box_AP") -> pd.DataFrame:
    return pd.DataFrame([{"variant": v, "seed": s, metric: x, f"{metric}50": x + 10}
                         for v, xs in values.items() for s, x in enumerate(xs)])


def test_table2_flops_params_and_trained_rows():
    cfg = carafe.resolve("smoke")
    runs = _runs({"fpn_nearest": [1.0, 3.0], "fpn_carafe": [4.0, 6.0], "fpn_deconv": [2.0]})
    timings = pd.DataFrame({"name": list(UPSAMPLERS), "forward_ms": 1.0,
                            "time_vs_nearest": 1.0})
    table = carafe.table2(cfg, runs, timings).set_index("name")
    counted = {r["name"]: r for r in upsampler_flops(256, 2)}
    assert list(table.index) == list(UPSAMPLERS)
    for name in UPSAMPLERS:
        assert table.loc[name, "flops_glimpse"] == counted[name]["flops_per_input"]
        assert table.loc[name, "params"] == counted[name]["parameters"]
    assert table.loc["carafe", "flops_glimpse"] == 199_168  # formula 199,496 less the biases
    assert table.loc["carafe", "params"] == 74_148
    assert table.loc["carafe", "AP_glimpse"] == 5.0 and table.loc["carafe", "seeds"] == 2
    assert table.loc["deconv", "AP50_glimpse"] == 12.0 and table.loc["deconv", "seeds"] == 1
    assert table.loc["gum", "trained"] == "no" and pd.isna(table.loc["gum", "AP_glimpse"])
    assert table.loc["dysample", "flops_paper"] == "" and pd.isna(table.loc["dysample",
                                                                            "AP_paper"])
    assert table.loc["carafe", "AP_mmdet228"] == 38.6
    assert carafe.table2(cfg, runs)["forward_ms"].isna().all()


def test_table1_and_claim_on_hand_made_runs():
    cfg = carafe.resolve("smoke", num_seeds=3)
    runs = pd.concat([
        _runs({"fpn_nearest": [1.0, 2.0, 3.0], "fpn_carafe": [2.0, 3.5, 4.0]}),
        _runs({"mask_head_nearest": [5.0, 5.0, 5.0], "mask_head_carafe": [4.0, 6.0, 5.0]},
              "mask_AP").assign(box_AP=1.0)], ignore_index=True)
    t1 = carafe.table1(cfg, runs)
    assert len(t1) == 6
    assert t1.loc[1, "AP_glimpse"] == pytest.approx(9.5 / 3) and t1.loc[1, "seeds"] == 3
    assert t1.loc[5, "AP_glimpse"] == 5.0 and "mask head carafe" in t1.loc[5, "glimpse_variant"]
    claim = carafe.claim_table(cfg, runs).set_index("where")
    assert claim.loc["FPN", "verdict"] == "holds"  # +1, +1.5, +1: every seed the paper's way
    assert claim.loc["FPN", "diff_mean"] == pytest.approx(3.5 / 3)
    assert claim.loc["mask head", "verdict"] == "inconclusive"
    assert (claim.loc["mask head", "agree"], claim.loc["mask head", "disagree"]) == (1, 1)
    assert list(claim["informative"]) == ["yes", "yes"]
    zeros = pd.concat([_runs({"fpn_nearest": [0.0, 0.0], "fpn_carafe": [0.0, 0.5]}),
                       _runs({"mask_head_nearest": [0.0, 0.0], "mask_head_carafe": [0.0, 0.0]},
                             "mask_AP")], ignore_index=True)
    claim = carafe.claim_table(cfg, zeros).set_index("where")
    assert claim.loc["mask head", "verdict"] == "does not hold"  # the runner's rule for ties
    assert list(claim["informative"]) == ["no", "no"]
    empty = carafe.claim_table(cfg, runs.iloc[:0])
    assert empty.empty and "verdict" in empty.columns


def test_upsampler_timings():
    t = carafe.upsampler_timings(16, (6, 8), repeats=1, names=["nearest", "carafe"])
    assert list(t["name"]) == ["nearest", "carafe"] and (t["forward_ms"] > 0).all()
    assert t.loc[0, "time_vs_nearest"] == 1.0
    with pytest.raises(ValueError, match="repeats"):
        carafe.upsampler_timings(repeats=0)


def test_smoke_dry_run_and_operator_figures():
    import matplotlib

    matplotlib.use("Agg")
    cfg = dataclasses.replace(carafe.resolve("smoke", device="cpu"), iters=2, mask_iters=2,
                              max_val_images=2)
    result = carafe.run_experiments(cfg, verbose=False)
    runs = result.runs
    # the pairs for both seeds, deconv for the first seed only
    assert sorted(zip(runs["variant"], runs["seed"])) == sorted(
        [(f"{p}_{u}", s) for p in ("fpn", "mask_head") for u in ("nearest", "carafe")
         for s in (0, 1)] + [("fpn_deconv", 0)])
    assert (runs["iterations"] == 2).all() and runs["mask_AP"].notna().sum() == 4
    assert set(result.models) == set(runs["variant"])
    table = carafe.table2(cfg, runs)
    assert list(table.loc[table["trained"] == "yes", "name"]) == ["nearest", "deconv", "carafe"]
    assert set(carafe.claim_table(cfg, runs)["verdict"]) <= set(VERDICTS)

    image = torch.rand(3, 128, 128)
    state = carafe.operator_state(result.models["fpn_carafe"], image)
    assert state.stride == 8 and tuple(state.features.shape) == (64, 16, 16)
    assert tuple(state.kernels.shape) == (25, 32, 32)
    torch.testing.assert_close(state.kernels.sum(0), torch.ones(32, 32))
    for up in (state.carafe, state.nearest, state.bilinear):
        assert tuple(up.shape) == (64, 32, 32)
    for fig in (carafe.kernels_figure(state), carafe.outputs_figure(state),
                carafe.kernel_view(state, 3, 4)):
        matplotlib.pyplot.close(fig)
    with pytest.raises(ValueError, match="outside the 32x32 output"):
        carafe.kernel_view(state, 32, 0)
    with pytest.raises(ValueError, match="not CARAFE"):
        carafe.operator_state(result.models["fpn_nearest"], image)
    with pytest.raises(ValueError, match="multiples of 64"):
        carafe.operator_state(result.models["fpn_carafe"], torch.rand(3, 100, 128))


def test_mask_lr_sets_the_mask_rcnn_runs_lr_only():
    cpu = carafe.resolve("cpu", device="cpu")
    assert carafe.mask_variant(cpu, "carafe").train.lr == 0.01
    assert carafe.fpn_variant(cpu, "carafe").train.lr == 0.02
    smoke = carafe.resolve("smoke", device="cpu")  # mask_lr None: the shared lr
    assert carafe.mask_variant(smoke, "nearest").train.lr == smoke.lr


def test_run_experiments_only_runs_the_named_variants():
    cfg = dataclasses.replace(carafe.resolve("smoke", device="cpu"), iters=1, mask_iters=1,
                              max_val_images=1)
    runs = carafe.run_experiments(cfg, verbose=False, only=["fpn_deconv"]).runs
    assert list(zip(runs["variant"], runs["seed"])) == [("fpn_deconv", 0)]  # unpaired: seed 0
    runs = carafe.run_experiments(cfg, verbose=False, only=["mask_head_carafe"]).runs
    assert list(zip(runs["variant"], runs["seed"])) == [("mask_head_carafe", 0),
                                                        ("mask_head_carafe", 1)]
    assert carafe.run_experiments(cfg, verbose=False, only=[]).runs.empty
    with pytest.raises(ValueError, match=r"unknown variant\(s\) \['fpn_dysample'\]"):
        carafe.run_experiments(cfg, only=["fpn_dysample"])


def test_full_profile_dry_run_builds_every_variant():
    out = carafe.dry_run(carafe.resolve("full", device="cpu", fpn_upsamplers=["nearest",
                                                                              "carafe"]),
                         iters=1)
    assert sorted(out.runs["variant"]) == ["fpn_carafe", "fpn_nearest", "mask_head_carafe",
                                           "mask_head_nearest"]
    assert carafe.run_experiments(carafe.resolve("full")).runs.empty
