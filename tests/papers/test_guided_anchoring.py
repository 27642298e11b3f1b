"""glimpse.papers.guided_anchoring: profiles, paper tables, anchor counts and coverage by hand,
the GA-RPN w/o F.A. flag, and a 2-iteration dry run of the smoke experiment."""

from __future__ import annotations

import dataclasses
import json
import math
import types

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from glimpse import zoo  # noqa: E402
from glimpse.heads.guided_anchor import GARPNHead  # noqa: E402
from glimpse.papers import guided_anchoring as ga  # noqa: E402


def test_profiles_and_resolve():
    smoke = ga.resolve("smoke", device="cpu")
    assert (smoke.profile, smoke.data, smoke.backbone, smoke.seeds) == (
        "smoke", "synthetic-smoke", "slim", (0, 1))
    assert smoke.loc_filter_thr == 0.01 and smoke.deterministic and not smoke.dry_run
    assert ga.resolve("cpu", device="cpu").seeds == (0, 1, 2)
    full = ga.resolve("full", device="cpu")
    assert (full.backbone, full.data, full.dry_run, full.lr_two_stage) == ("r50", "coco", True,
                                                                          None)
    # papermill gives lists; the profile keeps tuples
    assert ga.resolve("smoke", device="cpu", seeds=[3, 4]).seeds == (3, 4)
    with pytest.raises(ValueError, match="unknown profile"):
        ga.resolve("huge")
    with pytest.raises(TypeError, match="unknown GAConfig field"):
        ga.resolve("smoke", device="cpu", iterations=3)
    with pytest.raises(ValueError, match="loc_filter_thr"):
        ga.resolve("smoke", device="cpu", loc_filter_thr=1.5)
    with pytest.raises(ValueError, match="seeds"):
        ga.resolve("smoke", device="cpu", seeds=[])


def test_paper_csvs_load_with_sources():
    props = ga.paper_proposals().set_index("method")
    assert list(props.index) == list(ga.PROPOSAL_METHODS)
    assert props.loc["GA-RPN", ["AR100", "AR300", "AR1000"]].tolist() == [59.2, 65.2, 68.5]
    assert props.loc["RPN", ["AR100", "AR300", "AR1000"]].tolist() == [47.5, 54.7, 59.4]
    assert props.loc["GA-RPN w/o F.A.", "AR_L"] == 71.5
    det = ga.paper_detection().set_index("method")
    assert len(det) == 6 and det["source"].str.len().min() > 10
    # the abstract's +2.3 / +2.7 / +1.2 AP
    gains = [det.loc[f"GA-{m}", "AP"] - det.loc[m, "AP"]
             for m in ("Fast R-CNN", "Faster R-CNN", "RetinaNet")]
    assert [round(g, 1) for g in gains] == [2.3, 2.7, 1.2]
    for baseline, variant, metric, diff in ga.CLAIMS:
        table = props if metric == "AR1000" else det
        col = metric.removeprefix("box_")
        assert table.loc[variant, col] - table.loc[baseline, col] == pytest.approx(diff)


def test_anchor_counts_by_hand():
    # P2 4x4 and P3 2x2: 20 locations, 60 RPN anchors
    assert ga.dense_anchor_count([(4, 4), (2, 2)]) == 60
    assert ga.dense_anchor_count([(4, 4)], anchors_per_location=1) == 16
    logit = math.log(0.02 / 0.98)  # sigmoid = 0.02
    p2 = torch.full((1, 4, 4), -10.0)
    p2[0, 1, 2] = logit
    p2[0, 3, 3] = 5.0
    p3 = torch.tensor([[0.0, -10.0], [-10.0, -4.0]])  # sigmoids 0.5 and 0.018
    assert ga.guided_anchor_count([p2, p3], 0.01) == 4
    assert ga.guided_anchor_count([p2, p3], 0.019) == 3  # drops 0.018
    assert ga.guided_anchor_count([p2, p3], 0.4) == 2
    assert ga.guided_anchor_count([p2, p3], 0.0) == 20
    assert ga.guided_anchor_count([], 0.01) == 0
    with pytest.raises(ValueError, match="loc_filter_thr"):
        ga.guided_anchor_count([p2], -0.1)
    with pytest.raises(ValueError, match="anchors_per_location"):
        ga.dense_anchor_count([(2, 2)], 0)


class _Boxes(torch.utils.data.Dataset):
    def __init__(self, boxes):
        self.boxes = boxes

    def __len__(self):
        return len(self.boxes)

    def __getitem__(self, i):
        return torch.zeros(3, 128, 128), {"boxes": torch.tensor(self.boxes[i], dtype=torch.float)}


def test_anchor_coverage_by_hand():
    # a 32x32 box centred on a P2 grid point equals the square anchor (IoU 1) and a guided
    # anchor on the grid; an 8x8 box at a grid point: best RPN anchor is the 32 px square
    # (IoU 64/1024), the guided anchor of its shape is exact.
    # a 8x8 box centred 2 px off every grid: guided IoU (6*8)/(128-48) = 0.6.
    data = _Boxes([[[48.0, 48.0, 80.0, 80.0], [60.0, 60.0, 68.0, 68.0]],
                   [[58.0, 60.0, 66.0, 68.0]]])
    table = ga.anchor_coverage(data).set_index(["size", "aspect"])
    assert table.loc[("all", "all"), "boxes"] == 3
    small = table.loc[("<16 px", "moderate")]
    assert small["boxes"] == 2 and small["rpn_iou_below_0.5"] == 1.0
    assert small["rpn_iou_mean"] == pytest.approx(64 / 1024)
    assert small["ga_iou_mean"] == pytest.approx((1.0 + 48 / 80) / 2)
    big = table.loc[("32-64 px", "moderate")]
    assert (big["rpn_iou_mean"], big["ga_iou_mean"], big["rpn_iou_below_0.7"]) == (1.0, 1.0, 0.0)


def test_feature_adaption_flag_drops_only_the_adaption():
    with_fa = GARPNHead(64)
    without = GARPNHead(64, feature_adaption=False)
    assert without.feature_adaption is None
    n = sum(p.numel() for p in with_fa.parameters())
    m = sum(p.numel() for p in without.parameters())
    assert n - m == 2 * 2 * 4 * 9 + 64 * 64 * 9  # offsets (no bias) + 3x3 deform conv
    model = zoo.build("ga_rpn_slim_fpn", feature_adaption=False)
    assert model.rpn_head.feature_adaption is None
    with pytest.raises(ValueError, match="feature_adaption"):
        zoo.build("ga_rpn_slim_fpn", rpn_head=GARPNHead(64), feature_adaption=False)


def test_variants_share_the_schedule():
    cfg = ga.resolve("smoke", device="cpu")
    vs = ga.variants(cfg, (128, 128))
    assert list(vs) == [*ga.PROPOSAL_METHODS, "Faster R-CNN", "GA-Faster R-CNN", "RetinaNet",
                        "GA-RetinaNet", "Fast R-CNN", "GA-Fast R-CNN"]
    assert {v.train.max_iters for v in vs.values()} == {cfg.max_iters}
    assert vs["GA-RPN w/o F.A."].model_kwargs["feature_adaption"] is False
    # mmdet's linear rule at 2 images per step: 0.01 * 2 / 16 and 0.02 * 2 / 16
    assert vs["RetinaNet"].train.scaled_lr() == pytest.approx(0.00125)
    assert vs["GA-Faster R-CNN"].train.scaled_lr() == pytest.approx(0.0025)
    # both R-CNNs take the zoo's slim recipe: 128 sampled RoIs, 256-wide FCs (GA at IoU 0.6)
    for name, iou in (("Faster R-CNN", 0.5), ("GA-Faster R-CNN", 0.6)):
        spec = zoo.MODELS[vs[name].model]
        rcnn = spec.defaults["rcnn_cfg"]
        assert (rcnn.train.num_samples, rcnn.train.pos_iou_thr) == (128, iou)
        assert spec.defaults["fc_channels"] == 256


def test_claim_table_by_hand():
    cfg = ga.resolve("smoke", device="cpu")
    runs = pd.DataFrame({
        "variant": ["RPN", "GA-RPN"] * 2 + ["Faster R-CNN", "GA-Faster R-CNN"] * 2,
        "seed": [0, 0, 1, 1] * 2,
        "AR1000": [50.0, 55.0, 52.0, 58.0] + [math.nan] * 4,
        "box_AP": [math.nan] * 4 + [30.0, 31.0, 31.0, 32.0]})
    claims = ga.claim_table(cfg, runs).set_index("metric")
    # differences 5 and 6: t(0.975, 1) * 0.707 / sqrt(2) = 6.35 > 5.5, inconclusive
    assert claims.loc["AR1000", "diff_mean"] == 5.5
    assert claims.loc["AR1000", "verdict"] == "inconclusive"
    assert claims.loc["AR1000", "paper_diff"] == pytest.approx(9.1)
    # every seed +1 AP: holds
    assert claims.loc["box_AP", "verdict"] == "holds"
    assert claims.loc["box_AP", "paper_diff"] == pytest.approx(2.7)
    assert set(claims["profile"]) == {"smoke"}


def test_smoke_dry_run_two_iterations(tmp_path):
    cfg = ga.resolve("smoke", device="cpu", max_iters=2, warmup_iters=1, seeds=[0, 1],
                     max_eval_images=2, work_dir=str(tmp_path))
    train, val = ga.load_data(cfg)
    names = ["RPN", "GA-RPN", "GA-RPN w/o F.A."]
    out = ga.run_experiments(cfg, (train, val), names=names, verbose=False)
    assert sorted(out.models) == sorted(names)
    assert len(out.runs) == 5 and set(out.runs["iterations"]) == {2}
    assert {"AR100", "AR300", "AR1000", "AR_S", "AR_M", "AR_L"} <= set(out.runs.columns)

    props = ga.proposal_table(cfg, out.runs)
    assert len(props) == 3 * 6 and set(props["profile"]) == {"smoke"}
    assert props.set_index(["method", "metric"]).loc[("GA-RPN", "AR1000"), "seeds"] == "0,1"
    assert props.set_index(["method", "metric"]).loc[("GA-RPN w/o F.A.", "AR1000"),
                                                     "seeds"] == "0"
    det = ga.detection_table(cfg, out.runs)  # detectors not run: measured is NaN
    assert len(det) == 6 * 6 and det["measured"].isna().all()

    model = out.models["GA-RPN"]
    image, target = ga.pick_example(val)
    internals = ga.ga_internals(model, image)
    kept = sum(int(k.sum()) for k in internals["kept"])
    assert kept == ga.guided_anchor_count(internals["loc_logits"], cfg.loc_filter_thr)
    counts = ga.anchor_count_table(model, val, cfg.loc_filter_thr, max_images=2)
    # 128 px, strides 4..64: (32^2 + 16^2 + 8^2 + 4^2 + 2^2) * 3 anchors
    assert counts.loc[0, "anchors_per_image"] == 1364 * 3
    sweep = ga.threshold_sweep(model, val, [0.0, 0.5, 1.0], max_images=2)
    assert sweep.loc[0, "anchors_per_image"] == 1364  # threshold 0 keeps every location
    assert sweep["anchors_per_image"].is_monotonic_decreasing
    assert model.rpn_head.anchoring.loc_filter_thr == cfg.loc_filter_thr  # restored
    rpn = out.models["RPN"]
    for fig in (ga.figure_location_maps(image, target, internals),
                ga.figure_kept_locations(image, target, model, [0.01, 0.1]),
                ga.figure_anchor_shapes(image, target, internals),
                ga.figure_proposals(image, target, {"RPN": rpn([image])[0]["boxes"],
                                                    "GA-RPN": internals["proposals"]})):
        plt.close(fig)

    # reuse_finished reloads the finished runs
    again = ga.run_experiments(dataclasses.replace(cfg, reuse_finished=True, seed=7),
                               (train, val), names=["RPN"], verbose=False)
    assert again.runs["reused"].all()
    assert list(again.models) == ["RPN"]  # seed 7 is not paired: the first paired seed's model


def test_claim_table_leaves_out_the_fast_pair_unless_run():
    cfg = ga.resolve("smoke", device="cpu")
    runs = pd.DataFrame({"variant": ["RPN", "GA-RPN", "Faster R-CNN", "GA-Faster R-CNN"],
                         "seed": [0] * 4, "AR1000": [1.0, 2.0, math.nan, math.nan],
                         "box_AP": [math.nan, math.nan, 3.0, 4.0]})
    assert len(ga.claim_table(cfg, runs)) == 2
    fast = pd.DataFrame({"variant": ["Fast R-CNN", "GA-Fast R-CNN"], "seed": [0, 0],
                         "box_AP": [1.0, 2.0]})
    table = ga.claim_table(cfg, pd.concat([runs, fast], ignore_index=True))
    assert table.iloc[-1][["baseline", "variant"]].tolist() == ["Fast R-CNN", "GA-Fast R-CNN"]
    assert table.iloc[-1]["paper_diff"] == pytest.approx(2.3)
    assert not ga.resolve("cpu", device="cpu").fast_rcnn and not cfg.fast_rcnn  # not run yet


def test_ga_fast_rcnn_trains_on_its_ga_rpn_proposals(tmp_path):
    """GA-Fast R-CNN runs after GA-RPN of the same seed, on the proposal files it wrote."""
    from glimpse.data import CocoDetection, ensure_synthetic, read_proposals
    from glimpse.data.transforms import RandomHorizontalFlip

    cfg = ga.resolve("smoke", device="cpu", max_iters=2, warmup_iters=1, seeds=[0],
                     max_eval_images=2, work_dir=str(tmp_path))
    sets = []
    for split, train in (("train", True), ("val", False)):
        paths = ensure_synthetic("synthetic-smoke", split)
        ids = sorted(im["id"] for im in json.loads(paths.ann_file.read_text())["images"])
        ds = CocoDetection(paths.image_dir, paths.ann_file, image_ids=ids[:6], with_masks=False,
                           transforms=RandomHorizontalFlip(0.5) if train else None,
                           skip_empty=train)
        ds.default_image_scale = (128, 128)
        sets.append(ds)
    out = ga.run_experiments(cfg, tuple(sets), names=["GA-Fast R-CNN"], verbose=False)
    assert out.runs["variant"].tolist() == ["GA-RPN", "GA-Fast R-CNN"]
    assert {"box_AP", "AR1000"} <= set(out.runs.columns)
    run_dir = tmp_path / "GA-RPN" / "seed0"
    for split, ds in zip(("train", "val"), sets):
        source = read_proposals(run_dir / f"proposals_{split}.pt")
        assert set(source.proposals) == set(ds.ids)
        assert (source.meta["variant"], source.meta["seed"]) == ("GA-RPN", 0)
        assert source.meta["loc_filter_thr"] == cfg.loc_filter_thr
    spec = (tmp_path / "GA-Fast_R-CNN" / "seed0" / "spec.json").read_text()
    assert "proposals_train.pt" in spec and "sha1" in spec
    det = ga.detection_table(cfg, out.runs).set_index(["method", "metric"])
    assert det.loc[("GA-Fast R-CNN", "AP"), "seeds"] == "0"


def test_unpaired_variants_run_only_when_asked(monkeypatch):
    """At cpu only the claim pairs run over the seeds; GA-RPN w/o F.A. and the RetinaNet pair
    join with ``unpaired`` (for ``seed`` only)."""
    ran = []

    def fake_run_variants(variants, train, val, seeds, **kwargs):
        ran.append((variants[0].name, tuple(seeds)))
        return pd.DataFrame({"variant": [variants[0].name] * len(seeds), "seed": list(seeds)})

    monkeypatch.setattr(ga, "run_variants", fake_run_variants)
    data = (types.SimpleNamespace(default_image_scale=(256, 256)), None)
    cpu = ga.resolve("cpu", device="cpu", fast_rcnn=False)
    assert not cpu.unpaired
    ga.run_experiments(cpu, data, verbose=False)
    assert ran == [(name, (0, 1, 2)) for name in
                   ("RPN", "GA-RPN", "Faster R-CNN", "GA-Faster R-CNN")]
    ran.clear()
    ga.run_experiments(dataclasses.replace(cpu, unpaired=True), data, verbose=False)
    assert [name for name, seeds in ran if seeds == (0,)] == [
        "GA-RPN w/o F.A.", "RetinaNet", "GA-RetinaNet"]
