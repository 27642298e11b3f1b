"""ResNet/ResNeXt backbones: parameter counts and weights against torchvision, strides, freezing."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from glimpse.backbones import resnet50, resnet101, resnet_slim, resnext50_32x4d, resnext101_32x4d
from glimpse.backbones.resnet import Bottleneck, ResNet


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _count_without_fc(model: nn.Module) -> int:
    return _count(model) - _count(model.fc)


def test_resnet50_parameter_count_matches_torchvision():
    reference = torchvision.models.resnet50(weights=None)
    assert _count(resnet50()) == _count_without_fc(reference) == 23_508_032


@pytest.mark.parametrize(
    "ours, theirs",
    [
        (resnext50_32x4d, torchvision.models.resnext50_32x4d),
        (resnet101, torchvision.models.resnet101),
    ],
)
def test_parameter_counts_match_torchvision(ours, theirs):
    assert _count(ours()) == _count_without_fc(theirs(weights=None))


def test_resnext101_32x4d_parameter_count():
    # mmdet faster-rcnn_x101-32x4d_fpn (60,373,728) minus faster-rcnn_r50_fpn (41,753,056) is
    # the backbone difference; ResNet-50 has 23,508,032 parameters.
    assert _count(resnext101_32x4d()) == 23_508_032 + 60_373_728 - 41_753_056


def test_slim_backbone_size():
    assert _count(resnet_slim()) == 2_011_168


def test_feature_dict_strides_and_channels():
    model = resnet50(frozen_stages=-1).eval()
    x = torch.randn(1, 3, 96, 160)
    with torch.no_grad():
        feats = model(x)
    assert list(feats) == ["c2", "c3", "c4", "c5"]
    for name, f in feats.items():
        stride = model.out_strides[name]
        assert f.shape == (1, model.out_channels[name], 96 // stride, 160 // stride)
    assert model.out_channels == {"c2": 256, "c3": 512, "c4": 1024, "c5": 2048}
    assert model.out_strides == {"c2": 4, "c3": 8, "c4": 16, "c5": 32}


def test_odd_input_size_follows_ceil_division():
    model = resnet_slim().eval()
    feats = model(torch.randn(1, 3, 65, 33))
    assert [tuple(f.shape[-2:]) for f in feats.values()] == [(17, 9), (9, 5), (5, 3), (3, 2)]


@pytest.mark.parametrize("frozen_stages", [-1, 0, 1, 3])
def test_frozen_stages(frozen_stages):
    model = resnet50(frozen_stages=frozen_stages).train()
    frozen = {"conv1", "bn1"} if frozen_stages >= 0 else set()
    frozen |= {f"layer{i}" for i in range(1, frozen_stages + 1)}
    for name, p in model.named_parameters():
        assert p.requires_grad == (name.split(".")[0] not in frozen), name
    # Frozen modules stay in eval mode even after .train().
    for name, m in model.named_modules():
        if name and name.split(".")[0] in frozen:
            assert not m.training, name


def test_norm_eval_keeps_batchnorm_statistics():
    model = resnet50(frozen_stages=-1, norm_eval=True).train()
    before = model.layer4[0].bn1.running_mean.clone()
    model(torch.randn(2, 3, 64, 64))
    assert torch.equal(model.layer4[0].bn1.running_mean, before)
    assert all(p.requires_grad for p in model.parameters())  # affine still trains

    slim = resnet_slim().train()
    before = slim.layer4[0].bn1.running_mean.clone()
    slim(torch.randn(2, 3, 64, 64))
    assert not torch.equal(slim.layer4[0].bn1.running_mean, before)


def test_caffe_and_pytorch_stride_placement():
    pytorch_style = resnet50(style="pytorch")
    caffe_style = resnet50(style="caffe")
    for layer in ("layer2", "layer3", "layer4"):
        p_block = getattr(pytorch_style, layer)[0]
        c_block = getattr(caffe_style, layer)[0]
        assert (p_block.conv1.stride, p_block.conv2.stride) == ((1, 1), (2, 2))
        assert (c_block.conv1.stride, c_block.conv2.stride) == ((2, 2), (1, 1))
    assert caffe_style.layer1[0].conv1.stride == (1, 1)
    feats = caffe_style.eval()(torch.randn(1, 3, 64, 64))
    assert feats["c5"].shape == (1, 2048, 2, 2)


@pytest.mark.parametrize("norm", ["frozen_bn", "gn"])
def test_norm_variants(norm):
    model = resnet_slim(norm=norm).train()
    feats = model(torch.randn(2, 3, 64, 64))
    assert feats["c5"].shape == (2, 1024, 2, 2)
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert norms == []
    if norm == "frozen_bn":
        assert _count(model) < _count(resnet_slim())  # frozen BN holds buffers only


def test_bad_norm_is_rejected():
    with pytest.raises(ValueError, match="norm"):
        resnet_slim(norm="sync")


def test_pretrained_torchvision_weights_give_identical_features(tmp_path):
    reference = torchvision.models.resnet50(weights=None).eval()
    path = tmp_path / "resnet50_random.pth"
    torch.save(reference.state_dict(), path)
    model = resnet50(pretrained=str(path)).eval()
    x = torch.randn(1, 3, 64, 96)
    body = torchvision.models._utils.IntermediateLayerGetter(
        reference, {f"layer{i}": f"c{i + 1}" for i in range(1, 5)}
    )
    with torch.no_grad():
        ours, theirs = model(x), body(x)
    for name in ("c2", "c3", "c4", "c5"):
        torch.testing.assert_close(ours[name], theirs[name], rtol=0, atol=0)
    # frozen_bn loads the same file (no num_batches_tracked buffers) and gives the same output.
    frozen = resnet50(pretrained=path, norm="frozen_bn").eval()
    with torch.no_grad():
        torch.testing.assert_close(frozen(x)["c5"], theirs["c5"], rtol=1e-4, atol=1e-4)


def test_pretrained_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.pth"
    with pytest.raises(FileNotFoundError, match="nope.pth"):
        resnet_slim(pretrained=missing)
    wrong = tmp_path / "r50.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), wrong)
    with pytest.raises(ValueError, match="r50.pth.*missing keys"):
        resnet50(pretrained=wrong)
    slim_file = tmp_path / "slim.pth"
    torch.save(resnet_slim(base_width=16).state_dict(), slim_file)
    with pytest.raises(ValueError, match="slim.pth.*wrong shape"):
        resnet_slim(pretrained=slim_file)
    with pytest.raises(ValueError, match="URL"):
        resnet_slim(pretrained="https://download.pytorch.org/models/resnet50.pth")


def test_wrapped_checkpoint_loads(tmp_path):
    model = resnet_slim()
    path = tmp_path / "ckpt.pth"
    torch.save({"state_dict": model.state_dict(), "epoch": 3}, path)
    loaded = resnet_slim(pretrained=path)
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k


def test_invalid_configuration():
    with pytest.raises(ValueError, match="frozen_stages"):
        resnet50(frozen_stages=5)
    with pytest.raises(ValueError, match="4 stages"):
        ResNet(Bottleneck, (1, 1, 1))
