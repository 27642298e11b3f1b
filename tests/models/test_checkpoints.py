"""glimpse.checkpoints: mmdetection key names per part, the round trip, background-last label
order, caffe-style stems, glimpse checkpoints through ``zoo.build(checkpoint=)`` and every
error (missing, unexpected, mis-shaped tensor; v1 files; unreadable files) naming the key, the
model and the file."""

from __future__ import annotations

import pytest
import torch

from glimpse import zoo
from glimpse.checkpoints import (
    CAFFE_MEAN_RGB,
    CheckpointError,
    backbone_style,
    class_names_of,
    glimpse_to_mmdet,
    load_checkpoint,
    mmdet_key_map,
    mmdet_to_glimpse,
    read_checkpoint,
)
from glimpse.preprocess import normalize

SLIM_FAMILIES = ("faster_rcnn", "mask_rcnn", "fast_rcnn", "rpn", "cascade_rcnn",
                 "cascade_mask_rcnn", "retinanet")


def _randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Distinct values in every tensor (BN statistics included), so a misplaced one shows."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for key, t in model.state_dict().items():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 + (0.9 if "running_var" in key
                                                                  else -0.1))


def _save_mmdet(path, model, **meta):
    torch.save({"state_dict": glimpse_to_mmdet(model.state_dict(), model),
                "meta": {"mmdet_version": "3.3.0", **meta}}, path)
    return path


@pytest.mark.parametrize("family", SLIM_FAMILIES)
def test_round_trip_is_exact(family):
    model = zoo.build(f"{family}_slim_fpn", 3)
    _randomise(model)
    state = model.state_dict()
    mm = glimpse_to_mmdet(state, model)
    assert len(mm) == len(state) and len(set(mmdet_key_map(model).values())) == len(state)
    back = mmdet_to_glimpse(mm, model)
    assert back.keys() == state.keys()
    assert all(torch.equal(back[k], state[k]) for k in state)


def test_mmdet_names_of_r50_models():
    """Names as in mmdetection 3.3.0's R-50-FPN state dicts (``model.state_dict()`` keys)."""
    with torch.device("meta"):
        faster = zoo.build("faster_rcnn_r50_fpn")
        cascade = zoo.build("cascade_mask_rcnn_r50_fpn")
        retina = zoo.build("retinanet_r50_fpn")
    names = set(mmdet_key_map(faster).values())
    for key in ("backbone.layer1.0.downsample.0.weight", "backbone.layer4.2.bn3.running_var",
                "neck.lateral_convs.3.conv.weight", "neck.fpn_convs.0.conv.bias",
                "rpn_head.rpn_conv.weight", "rpn_head.rpn_cls.bias", "rpn_head.rpn_reg.weight",
                "roi_head.bbox_head.shared_fcs.1.weight", "roi_head.bbox_head.fc_cls.weight",
                "roi_head.bbox_head.fc_reg.bias"):
        assert key in names, key
    names = set(mmdet_key_map(cascade).values())
    for key in ("roi_head.bbox_head.2.fc_reg.weight", "roi_head.mask_head.1.convs.3.conv.weight",
                "roi_head.mask_head.0.upsample.weight", "roi_head.mask_head.2.conv_logits.bias"):
        assert key in names, key
    names = set(mmdet_key_map(retina).values())
    for key in ("neck.fpn_convs.3.conv.weight", "neck.fpn_convs.4.conv.bias",
                "bbox_head.cls_convs.3.conv.weight", "bbox_head.reg_convs.0.conv.bias",
                "bbox_head.retina_cls.weight", "bbox_head.retina_reg.bias"):
        assert key in names, key
    assert not any(".extra_convs." in k or "neck.fpn_convs.5" in k for k in names)
    # ResNet-50: stem conv + BN (5 tensors), 16 blocks of 3 convs + 3 BNs, 4 downsamples
    assert sum(1 for k in mmdet_key_map(faster) if k.startswith("backbone.")) == \
        6 + 16 * 18 + 4 * 6


def test_background_moves_to_the_front_and_regression_rows_stay():
    """Hand-made fc_cls / fc_reg: mmdet rows [c1, c2, c3, bg] and 4 rows per class."""
    model = zoo.build("faster_rcnn_slim_fpn", 3)
    mm = glimpse_to_mmdet(model.state_dict(), model)
    fc = mm["roi_head.bbox_head.fc_cls.weight"].shape[1]
    mm["roi_head.bbox_head.fc_cls.weight"] = torch.arange(4.0)[:, None].expand(4, fc).clone()
    mm["roi_head.bbox_head.fc_cls.bias"] = torch.tensor([10.0, 20.0, 30.0, 99.0])
    mm["roi_head.bbox_head.fc_reg.weight"] = torch.arange(12.0)[:, None].expand(12, fc).clone()
    state = mmdet_to_glimpse(mm, model)
    cls_w = state["roi_head.box_heads.0.cls.weight"][:, 0]
    assert cls_w.tolist() == [3.0, 0.0, 1.0, 2.0]  # background (mmdet row 3) first
    assert state["roi_head.box_heads.0.cls.bias"].tolist() == [99.0, 10.0, 20.0, 30.0]
    # class k's deltas: mmdet rows 4(k-1)..4k-1 = glimpse rows 4(k-1)..4k-1
    assert state["roi_head.box_heads.0.reg.weight"][:, 0].tolist() == list(range(12))
    # so glimpse's label k scores what mmdet's class k-1 scored
    model.load_state_dict(state)
    x = torch.randn(5, fc)
    logits = model.roi_head.box_heads[0].cls(x)
    mm_logits = x @ mm["roi_head.bbox_head.fc_cls.weight"].T + mm["roi_head.bbox_head.fc_cls.bias"]
    assert torch.allclose(logits[:, 1:], mm_logits[:, :3]) and torch.allclose(logits[:, 0],
                                                                               mm_logits[:, 3])


def test_cascade_stages_rotate_each_classifier():
    model = zoo.build("cascade_rcnn_slim_fpn", 2)
    _randomise(model)
    mm = glimpse_to_mmdet(model.state_dict(), model)
    for t in range(3):
        g = model.roi_head.box_heads[t].cls.bias
        assert torch.equal(mm[f"roi_head.bbox_head.{t}.fc_cls.bias"], torch.cat((g[1:], g[:1])))
        assert torch.equal(mm[f"roi_head.bbox_head.{t}.fc_reg.weight"],
                           model.roi_head.box_heads[t].reg.weight)  # class-agnostic: 4 rows


@pytest.mark.parametrize("family", ("faster_rcnn", "retinanet", "mask_rcnn"))
def test_zoo_build_loads_mmdet_and_glimpse_files_alike(family, tmp_path):
    name = f"{family}_slim_fpn"
    source = zoo.build(name, 3)
    _randomise(source)
    mm = _save_mmdet(tmp_path / "mm.pth", source, dataset_meta={"classes": ["a", "b", "c"]})
    bare = tmp_path / "bare.pth"
    torch.save(source.state_dict(), bare)
    trained = tmp_path / "iter_5.pt"  # glimpse.engine.train's format
    torch.save({"model": source.state_dict(), "iteration": 5, "optimizer": {}}, trained)
    expected = source.state_dict()
    for path in (mm, bare, trained):
        model = zoo.build(name, checkpoint=path) if path == mm else zoo.build(name, 3,
                                                                              checkpoint=path)
        got = model.state_dict()
        assert all(torch.equal(got[k], expected[k]) for k in expected), path
    assert class_names_of(read_checkpoint(mm)) == ["a", "b", "c"]
    assert read_checkpoint(mm).source == "mmdet" and read_checkpoint(bare).source == "glimpse"
    # a bare mmdet state dict is recognised by its names
    torch.save(glimpse_to_mmdet(expected, source), tmp_path / "bare_mm.pth")
    assert read_checkpoint(tmp_path / "bare_mm.pth").source == "mmdet"


def _error(tmp_path, name, state, num_classes=3):
    path = tmp_path / "bad.pth"
    torch.save({"state_dict": state, "meta": {}}, path)
    with pytest.raises(CheckpointError) as err:
        zoo.build(name, num_classes, checkpoint=path)
    message = str(err.value)
    assert str(path) in message and f"model {name}" in message and "\n" not in message
    return message


def test_missing_unexpected_and_misshaped_tensors_are_named(tmp_path):
    name = "mask_rcnn_slim_fpn"
    model = zoo.build(name, 3)
    mm = glimpse_to_mmdet(model.state_dict(), model)
    missing = {k: v for k, v in mm.items() if k != "roi_head.mask_head.convs.2.conv.weight"}
    assert "missing tensor roi_head.mask_head.convs.2.conv.weight" in _error(tmp_path, name,
                                                                             missing)
    extra = {**mm, "roi_head.semantic_head.conv.weight": torch.zeros(1)}
    assert "unexpected tensor roi_head.semantic_head.conv.weight" in _error(tmp_path, name,
                                                                            extra)
    # an 80-class checkpoint into a 3-class model: the classifier's shape is named
    wrong = {**mm, "roi_head.bbox_head.fc_cls.weight": torch.zeros(81, 1024)}
    msg = _error(tmp_path, name, wrong)
    assert "tensor roi_head.bbox_head.fc_cls.weight has shape (81, 1024)" in msg
    # a Faster R-CNN file into a Cascade R-CNN: the first unexpected stage-less key
    faster = zoo.build("faster_rcnn_slim_fpn", 3)
    msg = _error(tmp_path, "cascade_rcnn_slim_fpn", glimpse_to_mmdet(faster.state_dict(), faster))
    assert "unexpected tensor roi_head.bbox_head.fc_cls" in msg
    # BN counters are not weights: absent ones are tolerated
    counters_gone = {k: v for k, v in mm.items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "no_counters.pth"
    torch.save(counters_gone, path)
    zoo.build(name, 3, checkpoint=path)


def test_glimpse_checkpoint_errors_are_named(tmp_path):
    name = "retinanet_slim_fpn"
    state = zoo.build(name, 3).state_dict()
    path = tmp_path / "g.pth"
    for broken, expected in (
            ({k: v for k, v in state.items() if k != "head.retina_reg.bias"},
             "missing tensor head.retina_reg.bias"),
            ({**state, "head.extra.weight": torch.zeros(1)},
             "unexpected tensor head.extra.weight"),
            ({**state, "head.retina_cls.bias": torch.zeros(7)},
             r"tensor head.retina_cls.bias has shape \(7,\)")):
        torch.save(broken, path)
        with pytest.raises(CheckpointError, match=expected) as err:
            zoo.build(name, 3, checkpoint=path)
        assert str(path) in str(err.value) and f"model {name}" in str(err.value)


def test_unreadable_files_and_v1_checkpoints(tmp_path):
    with pytest.raises(FileNotFoundError, match="checkpoint not found"):
        read_checkpoint(tmp_path / "nope.pth")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pth: not a readable checkpoint"):
        read_checkpoint(junk)
    listing = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], listing)
    with pytest.raises(CheckpointError, match="holds a list, not a state dict"):
        read_checkpoint(listing)
    v1 = tmp_path / "v1.pth"
    torch.save({"state_dict": {"bbox_head.fc_cls.weight": torch.zeros(81, 4)},
                "meta": {"mmdet_version": "1.0rc0"}}, v1)
    with pytest.raises(CheckpointError, match="mmdetection v1 checkpoint"):
        read_checkpoint(v1)


def test_models_without_an_mmdet_layout_are_refused():
    model = zoo.build("faster_rcnn_fishnet_slim_fpn", 3)
    with pytest.raises(CheckpointError, match="tensor backbone.* has no mmdetection counterpart"):
        mmdet_key_map(model, "faster_rcnn_fishnet_slim_fpn")


def test_caffe_style_checkpoint(tmp_path):
    """A caffe-style file (BGR input, mean only) computes the same features in glimpse's RGB
    model with the stem's input channels reversed."""
    name = "faster_rcnn_slim_fpn"
    caffe = zoo.build(name, 3, style="caffe")
    _randomise(caffe)
    mm = glimpse_to_mmdet(caffe.state_dict(), caffe)  # as mmdet stores it, BGR stem
    path = tmp_path / "faster_rcnn_r50_caffe_fpn_1x_coco.pth"
    torch.save({"state_dict": mm, "meta": {"cfg": "model = dict(backbone=dict(type='ResNet', "
                                                  "style='caffe', norm_eval=True))"}}, path)
    assert backbone_style(read_checkpoint(path)) == "caffe"
    model = zoo.build(name, 3, checkpoint=path)
    assert model.backbone.style == "caffe"
    assert model.preprocessor.mean == CAFFE_MEAN_RGB and model.preprocessor.std == (1.0,) * 3
    image = torch.rand(3, 64, 96)
    rgb = normalize(image, CAFFE_MEAN_RGB, (1.0,) * 3)[None]
    bgr = rgb.flip(1)  # mmdet's caffe input: BGR minus the BGR mean
    model.eval()
    caffe.eval()
    with torch.no_grad():
        ours = model.features(rgb)
        theirs = caffe.features(bgr)  # caffe holds mmdet's BGR stem as is
    assert all(torch.allclose(a, b, atol=1e-5) for a, b in zip(ours, theirs))
    # the file name alone marks a caffe checkpoint; a pytorch-style model is refused
    torch.save(mm, path)
    assert backbone_style(read_checkpoint(path)) == "caffe"
    with pytest.raises(CheckpointError, match="caffe-style"):
        load_checkpoint(zoo.build(name, 3), path, model_name=name)
