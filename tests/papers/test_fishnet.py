"""glimpse.papers.fishnet: profiles, tables against official numbers, classification data and
wrapper, and the full profile as a dry configuration check."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest
import torch

from glimpse import zoo
from glimpse.classification import ImageClassifier, Lighting, predict_scores, train_transform
from glimpse.data.coco import DatasetError
from glimpse.data.imagenet import ImageFolderClassification, SyntheticClassification
from glimpse.papers import fishnet


def test_profiles_and_resolve():
    assert set(fishnet.PROFILES) == {"smoke", "cpu", "full"}
    for cfg in fishnet.PROFILES.values():
        assert dataclasses.is_dataclass(cfg)
        with pytest.raises(dataclasses.FrozenInstanceError):
            cfg.seed = 3  # type: ignore[misc]
    cfg = fishnet.resolve("cpu", device="auto", data_root="", seed=4, cls_models=["fishnet99"])
    assert cfg.device == "cpu" and cfg.seed == 4 and cfg.cls_models == ("fishnet99",)
    with pytest.raises(TypeError, match="unknown.*not_a_field"):
        fishnet.resolve("smoke", not_a_field=1)
    with pytest.raises(ValueError, match="unknown profile .* for FishNet"):
        fishnet.resolve("huge")
    with pytest.raises(ValueError, match="multiple of 32"):
        fishnet.resolve("smoke", cls_image_size=48)


def test_full_profile_is_the_official_recipe():
    cfg = fishnet.resolve("full")
    tcfg = fishnet.classification_train_config(cfg, 1_281_167, seed=0)
    iters_per_epoch = 1_281_167 // 256
    assert tcfg.lr == pytest.approx(0.1) and tcfg.momentum == 0.9
    assert tcfg.weight_decay == 1e-4 and tcfg.warmup_iters == 0
    assert tcfg.max_iters == 100 * iters_per_epoch
    assert tcfg.lr_steps == (30 * iters_per_epoch, 60 * iters_per_epoch, 90 * iters_per_epoch)
    assert (cfg.cls_image_size, cfg.cls_test_resize, cfg.cls_min_scale, cfg.cls_lighting) == (
        224, 256, 0.08, 0.1)
    assert cfg.det_models[2] == "mask_rcnn_fishnet188_fpn"


def test_zoo_classifiers_exact_params():
    with torch.device("meta"):
        assert sum(p.numel() for p in zoo.build("fishnet99").parameters()) == 16_628_904
        assert sum(p.numel() for p in zoo.build("fishnet201").parameters()) == 44_584_552
        detector = zoo.build("mask_rcnn_fishnet188_fpn")
    assert detector.backbone.out_channels == {"c2": 320, "c3": 832, "c4": 1600, "c5": 2112}
    for name in ("faster_rcnn_fishnet99_fpn", "faster_rcnn_fishnet150_fpn",
                 "mask_rcnn_fishnet188_fpn", "fishnet150", "resnet50_cls"):
        assert name in zoo.names()


def test_complexity_table_matches_references():
    tab = fishnet.complexity_table()
    assert len(tab) == 10
    assert tab["params_match"].all(), tab[~tab["params_match"]]
    # conv multiply-adds within 1 % of the official / torchvision values
    assert (tab["gmacs_rel_diff"].abs() < 0.01).all(), tab[["model", "gmacs_rel_diff"]]
    fish = tab.set_index("model").loc["fishnet99"]
    assert fish["gmacs_glimpse"] == pytest.approx(4.26, rel=0.01)


def test_stage_and_backbone_tables():
    stages = fishnet.stage_table()
    assert stages["channels"].tolist() == [64, 128, 256, 512, 512, 768, 512, 320, 832, 1600,
                                           2112]
    assert stages["height"].tolist() == [56, 28, 14, 7, 7, 14, 28, 56, 28, 14, 7]
    bb = fishnet.detection_backbones_table().set_index("backbone")
    assert bb.loc["FishNet-188", "convs"] == 188 and bb.loc["FishNet-188", "bottlenecks"] == 59


def test_figures_build():
    import matplotlib.pyplot as plt

    fig = fishnet.fish_figure()
    assert len(fig.axes) == 1
    plt.close(fig)
    cfg = fishnet.resolve("smoke", grad_image_size=32)
    grads = fishnet.gradient_norms(cfg, batch=2)
    assert set(grads["model"]) == {"FishNet-99", "ResNet-50"}
    assert (grads["grad_norm"] > 0).all()
    assert grads.groupby("model")["depth"].max().eq(1.0).all()
    plt.close(fishnet.gradient_norms_figure(grads))


def test_example_image_and_feature_maps():
    from glimpse.backbones.fishnet import FISHNET_SLIM, FishNet

    image, source = fishnet.load_example_image(fishnet.resolve("smoke"))
    assert image.shape == (3, 224, 224) and 0 <= image.min() and image.max() <= 1
    assert source
    feats = fishnet.feature_maps(FishNet(FISHNET_SLIM, 10), image, size=64)
    assert [f.shape[1:] for f in feats][-1] == (2, 2)


def test_imagenet_table_merges_paper_and_runs():
    runs = pd.DataFrame({"model": ["fishnet99", "fishnet99", "resnet50_cls"], "seed": [0, 1, 0],
                         "top1": [40.0, 50.0, 30.0], "top5": [80.0, 90.0, 70.0],
                         "iters": [10, 10, 10], "train_s": [1.0, 1.0, 2.0],
                         "final_loss": [1.0, 1.0, 1.0]})
    tab = fishnet.imagenet_table(fishnet.resolve("smoke"), runs).set_index("model")
    assert tab.loc["fishnet99", "top1_paper"] == 77.41
    assert tab.loc["fishnet99", "top1_glimpse"] == 45.0 and tab.loc["fishnet99", "seeds"] == 2
    assert tab.loc["resnet50", "top1_glimpse"] == 30.0
    assert pd.isna(tab.loc["fishnet201", "top1_glimpse"])


def test_coco_table_has_paper_rows():
    tab = fishnet.coco_table(fishnet.resolve("smoke"), pd.DataFrame())
    assert tab["backbone"].tolist() == ["ResNet-50", "ResNeXt-50 (32x4d)", "FishNet-188"]
    assert tab.set_index("backbone").loc["FishNet-188", "mask_AP"] == 37.0


# -------------------------------------------------------------------- data and classifier


def test_synthetic_classification_is_deterministic():
    a = SyntheticClassification(4, 8, 32, seed=1)
    b = SyntheticClassification(4, 8, 32, seed=1)
    torch.testing.assert_close(a[5][0], b[5][0])
    assert a[5][1]["labels"].item() == 1
    assert not torch.equal(a[5][0], SyntheticClassification(4, 8, 32, seed=2)[5][0])
    assert a[0][0].shape == (3, 32, 32) and 0 <= a[0][0].min() and a[0][0].max() <= 1
    with pytest.raises(IndexError):
        a[8]
    assert len(SyntheticClassification(4, 0, 32)) == 0


def test_image_folder_errors(tmp_path):
    with pytest.raises(DatasetError, match="not found"):
        ImageFolderClassification(tmp_path / "missing")
    with pytest.raises(DatasetError, match="no class sub-folders"):
        ImageFolderClassification(tmp_path)
    (tmp_path / "cat").mkdir()
    with pytest.raises(DatasetError, match="holds no images"):
        ImageFolderClassification(tmp_path)
    (tmp_path / "cat" / "broken.jpg").write_bytes(b"not a jpeg")
    ds = ImageFolderClassification(tmp_path)
    with pytest.raises(DatasetError, match="broken.jpg"):
        ds[0]
    with pytest.raises(DatasetError, match="missing"):
        ImageFolderClassification(tmp_path, class_names=["cat", "dog"])


def test_imagenette_mini_reads(shared_data):
    root = shared_data / "imagenette-mini"
    train = ImageFolderClassification(root / "train", train_transform(64))
    val = ImageFolderClassification(root / "val", class_names=train.class_names)
    assert (len(train), len(val), train.num_classes) == (500, 200, 10)
    image, target = train[0]
    assert image.shape == (3, 64, 64) and target["labels"].item() == 0


def test_lighting_adds_pca_colour_shift():
    torch.manual_seed(0)
    img = torch.full((3, 4, 4), 0.5)
    out = Lighting(0.1)(img)
    shift = out - img
    # one RGB offset for the whole image, inside the span of the PCA eigenvectors
    assert torch.allclose(shift, shift[:, :1, :1].expand_as(shift))
    assert Lighting(0.0)(img) is img


def test_classifier_contract_and_errors():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 4))
    model = ImageClassifier(net, 4)
    images = [torch.rand(3, 8, 8) for _ in range(3)]
    targets = [{"labels": torch.tensor(i)} for i in (0, 3, 1)]
    out = model(images, targets)
    assert set(out) == {"loss_cls", "stats_top1"}
    logits = net((torch.stack(images) - model.mean) / model.std)
    ref = torch.nn.functional.cross_entropy(logits, torch.tensor([0, 3, 1]))
    torch.testing.assert_close(out["loss_cls"], ref)
    with pytest.raises(ValueError, match="labels must be in 0..3"):
        model(images, [{"labels": torch.tensor(4)}] * 3)
    with pytest.raises(ValueError, match="one size"):
        model([torch.rand(3, 8, 8), torch.rand(3, 8, 9)], targets[:2])
    with pytest.raises(ValueError, match="empty"):
        model([], [])
    model.eval()
    preds = model(images)
    assert len(preds) == 3 and preds[0]["scores"].shape == (4,)
    assert preds[0]["scores"].sum().item() == pytest.approx(1.0)
    scores, labels = predict_scores(model, SyntheticClassification(4, 5, 8))
    assert scores.shape == (5, 4) and labels.tolist() == [0, 1, 2, 3, 0]


def test_smoke_classification_trains_and_learns():
    """A few engine iterations on the synthetic set: loss logged, accuracy computed."""
    cfg = fishnet.resolve("smoke", cls_models=("fishnet99",), cls_epochs=1,
                          cls_synthetic_sizes=(32, 20), cls_batch_size=8)
    runs, models = fishnet.run_classification(cfg)
    row = runs.iloc[0]
    assert row["iters"] == 4 and 0 <= row["top1"] <= 100 and row["top5"] >= row["top1"]
    assert isinstance(models["fishnet99"], ImageClassifier)


@pytest.mark.slow
def test_full_profile_dry_run():
    """Build everything the full profile uses and run a couple of iterations on tiny data."""
    out = fishnet.dry_run(fishnet.resolve("full"), cls_iters=1, det_iters=1)
    cls = out["classification"]
    assert list(cls["model"]) == ["fishnet99", "fishnet150", "fishnet201", "resnet50_cls"]
    assert (cls["iters"] == 1).all()
    det = out["detection"]
    assert list(det["model"]) == list(fishnet.resolve("full").det_models)
    assert out["train_config"].lr == pytest.approx(0.1)


def test_full_profile_dry_run_fast():
    """The same dry run restricted to FishNet-99 and Mask R-CNN FishNet-188 (non-slow)."""
    cfg = fishnet.resolve("full", cls_models=("fishnet99",),
                          det_models=("", "", "mask_rcnn_fishnet188_fpn"))
    out = fishnet.dry_run(cfg, cls_iters=1, det_iters=1, det_image_scale=(64, 64))
    assert out["classification"]["iters"].tolist() == [1]
    assert out["detection"]["model"].tolist() == ["mask_rcnn_fishnet188_fpn"]
