"""glimpse.papers.htc: profiles, the transcribed paper tables, the tables and verdicts made
from hand-written runs, a 2-iteration dry run of the smoke experiment with its figures, and
the full profile as a configuration check."""

from __future__ import annotations

import dataclasses
import math

import pandas as pd
import pytest
import torch

from glimpse.papers import htc


def test_profiles_and_resolve():
    assert set(htc.PROFILES) == {"smoke", "cpu", "full"}
    for cfg in htc.PROFILES.values():
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.seed = 3  # type: ignore[misc]
    cfg = htc.resolve("smoke", device="auto", data_root=None, seed=5, image_scale=[96, 96])
    assert cfg.device in ("cpu", "cuda") and cfg.data_root == "" and cfg.seeds == (5, 6)
    assert cfg.image_scale == (96, 96)
    assert htc.resolve("cpu").num_seeds == 3
    with pytest.raises(TypeError, match="unknown HTCExperiment field.*not_a_field"):
        htc.resolve("smoke", not_a_field=1)
    with pytest.raises(ValueError, match="unknown profile 'huge' for HTC"):
        htc.resolve("huge")
    with pytest.raises(ValueError, match="num_seeds, iters and batch_size must be >= 1"):
        htc.resolve("smoke", num_seeds=0)


def test_paper_tables_load():
    t1 = htc.paper_table("table1")
    assert set(t1["method"]) == {"Cascade Mask R-CNN", "HTC"}
    r50 = t1[t1["backbone"] == "R-50"].set_index("method")
    # the abstract: 38.4 mask AP, +1.5 over Cascade Mask R-CNN
    assert r50.loc["HTC", "mask_AP"] == 38.4
    assert r50.loc["HTC", "mask_AP"] - r50.loc["Cascade Mask R-CNN", "mask_AP"] == \
        pytest.approx(1.5)
    t2 = htc.paper_table("table2_ablation")
    assert tuple(t2["step"]) == htc.ABLATION_STEPS
    assert t2.set_index("step").loc["semantic", "mask_AP"] == 38.0  # issue #1672
    extras = htc.extras_table()
    assert extras["mask_AP"].iloc[-1] == 49.0 and math.isnan(extras["gain"].iloc[0])
    assert extras["gain"].iloc[1] == pytest.approx(1.3)


def _fake_runs() -> pd.DataFrame:
    # mask AP per (step, seed): HTC gains 2.0 over the baseline on both seeds; interleaved
    # gains 0.5 on seed 0 and loses 0.5 on seed 1
    mask = {"cascade_mask": (10.0, 12.0), "interleaved": (10.5, 11.5),
            "mask_info_flow": (11.5, 12.5), "semantic": (12.0, 14.0)}
    rows = [{"variant": step, "seed": seed, "mask_AP": values[seed], "box_AP": 20.0}
            for step, values in mask.items() for seed in (0, 1)]
    return pd.DataFrame(rows)


def test_tables_and_verdicts_from_hand_written_runs():
    cfg = htc.resolve("smoke", device="cpu")
    runs = _fake_runs()
    t2 = htc.table2(cfg, runs).set_index("step")
    assert t2.loc["cascade_mask", "mask_AP"] == 11.0
    assert t2.loc["cascade_mask", "mask_AP_std"] == pytest.approx(math.sqrt(2))
    assert t2.loc["semantic", "mask_AP_paper"] == 38.0 and t2.loc["semantic", "seeds"] == 2
    t1 = htc.table1(cfg, runs, {"semantic": 2.0}).set_index("method")
    assert t1.loc["HTC", "mask_AP"] == 13.0 and t1.loc["HTC", "fps"] == 2.0
    assert math.isnan(t1.loc["Cascade Mask R-CNN", "fps"])
    claims = htc.claims_table(cfg, runs).set_index(["claim", "metric"])
    head = claims.loc[("HTC vs Cascade Mask R-CNN", "mask_AP")]
    # +2.0 on both seeds: zero spread, whole interval on the paper's side
    assert head["diff_mean"] == 2.0 and head["verdict"] == "holds"
    assert head["paper_diff"] == pytest.approx(1.5)
    step = claims.loc[("+ interleaved (vs cascade_mask)", "mask_AP")]
    assert (step["agree"], step["disagree"], step["verdict"]) == (1, 1, "inconclusive")
    # box AP never moves: the claimed gain is absent
    assert claims.loc[("+ semantic (vs mask_info_flow)", "box_AP"), "verdict"] == \
        "does not hold"
    assert set(claims["note"]) == {""}
    zero = runs.assign(mask_AP=0.0)
    note = htc.claims_table(cfg, zero).set_index(["claim", "metric"])
    assert note.loc[("HTC vs Cascade Mask R-CNN", "mask_AP"), "note"].startswith("both AP 0")


def test_full_profile_builds_the_paper_models():
    cfg = htc.resolve("full", device="cpu")
    assert cfg.dry_run and cfg.model == "htc_r50_fpn" and cfg.iters == 7330 * 20
    assert htc.run_experiment(cfg).runs.empty
    table = htc.dry_check(cfg).set_index("variant")
    assert table.loc["semantic", "params"] == 80_258_293
    # Cascade Mask R-CNN (77,324,606) with HTC's class-agnostic heads and no conv_res
    assert table.loc["cascade_mask", "params"] == 77_324_606
    assert table.loc["mask_info_flow", "params"] == 77_456_190
    assert table.loc["composed", "params"] == 98_070_010


def test_smoke_dry_run_two_iterations(tmp_path):
    cfg = htc.resolve("smoke", device="cpu", iters=2, max_eval_images=2, fps_images=1,
                      work_root=str(tmp_path))
    data = htc.load_data(cfg)
    variants = {v.name: v for v in htc.variants(cfg, data[0])}
    assert list(variants) == [*htc.ABLATION_STEPS, "composed"]
    assert variants["semantic"].model_kwargs["semantic_classes"] == len(data[0].sem_seg_classes)
    assert "semantic_classes" not in variants["interleaved"].model_kwargs
    result = htc.run_experiment(cfg, data, verbose=False)
    runs = result.runs
    assert len(runs) == 4 * 2 + 1 and set(runs["iterations"]) == {2}
    assert runs["final_loss"].map(math.isfinite).all()
    assert {"box_AP", "mask_AP"} <= set(runs.columns)
    claims = htc.claims_table(cfg, runs)
    assert len(claims) == 8 and set(claims["verdict"]) <= {"holds", "does not hold",
                                                            "inconclusive"}
    image, target = htc.pick_example(data[1])
    fps = {"semantic": htc.measure_fps(result.models["semantic"], [image])}
    assert fps["semantic"] > 0
    assert len(htc.composed_table(cfg, runs, fps)) == 2
    internals = htc.htc_internals(result.models["semantic"], image)
    assert len(internals["stage_boxes"]) == 3 and len(internals["received"]) == 2
    assert internals["semantic"].shape == (16, 16)
    d = internals["detections"]["boxes"].shape[0]
    assert all(m.shape == (d, *image.shape[-2:]) for m in internals["stage_masks"])
    baseline = htc.htc_internals(result.models["cascade_mask"], image)
    assert baseline["received"] == [] and baseline["semantic"] is None
    import matplotlib.pyplot as plt

    for fig in (htc.figure_stages(image, internals), htc.figure_stage(image, internals, 2),
                htc.figure_mask_flow(internals), htc.figure_mask_flow(baseline),
                htc.figure_semantic(image, target, internals, data[1].sem_seg_classes),
                htc.figure_pipelines()):
        plt.close(fig)


def test_semantic_variants_need_semantic_maps():
    class NoMaps(torch.utils.data.Dataset):
        default_image_scale = (64, 64)

    with pytest.raises(ValueError, match="no sem_seg_classes"):
        htc.variants(htc.resolve("smoke", device="cpu"), NoMaps())
    with pytest.raises(ValueError, match="measure_fps needs at least one image"):
        htc.measure_fps(torch.nn.Identity(), [])
