"""glimpse's test-time preprocessing against mmdetection 3.3.0's at 1333x800 (issue 9).

``tests/fixtures/mmdet/resize.npz`` holds what mmdetection's own test pipeline made of two
COCO128 images (a 481x640 portrait and a 640x218 panorama; regenerate with
``make_resize_fixture.py`` in the oracle venv): img_shape, scale factor, pad shape, the resized
uint8 pixels (every 8th row and column, and a full 64x64 corner) and the normalised padded
tensor's bottom-right corner.

* Geometry (img_shape, the (w, h) scale factor that maps boxes back, pad shape) is exact.
* ``resize="torch"`` (glimpse's default: float bilinear, no uint8 rounding) differs from
  mmdetection's OpenCV uint8 resize by < 1 grey level (measured max 0.76, mean 0.27 in 0..255;
  it is ~0.13 brighter on average: OpenCV truncates).
* ``resize="mmcv"`` is bit-exact.
* The ``slow`` test measures what the default's difference does to detections of the slim
  Faster R-CNN with the parity tests' seeded weights, on mmdetection's full resized images
  (``make_resize_fixture.py --full DIR``; set ``GLIMPSE_MMDET_RESIZE_DIR=DIR``).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from glimpse.data.coco import load_image
from glimpse.preprocess import IMAGENET_STD, DetectionPreprocessor, normalize, pad_batch

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "mmdet"
COCO128 = Path(__file__).resolve().parents[3] / "shared" / "data" / "coco128" / "train2017"
FULL_DIR = os.environ.get("GLIMPSE_MMDET_RESIZE_DIR")
RECORD = np.load(FIXTURES / "resize.npz")


def _image(k: int) -> torch.Tensor:
    if not COCO128.is_dir():
        pytest.skip(f"COCO128 images not found at {COCO128}")
    return load_image(COCO128 / str(RECORD[f"name_{k}"]))


@pytest.mark.parametrize("k", [0, 1])
def test_decoded_pixels_match_opencv(k):
    """PIL decodes the same pixels as mmdetection's cv2, so what differs below is the resize."""
    pixels = (_image(k) * 255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
    assert hashlib.md5(pixels).hexdigest() == str(RECORD[f"decoded_md5_{k}"])


@pytest.mark.parametrize("resize", ["torch", "mmcv"])
@pytest.mark.parametrize("k", [0, 1])
def test_geometry_matches_mmdet(k, resize):
    image = _image(k)
    batch = DetectionPreprocessor(resize=resize)([image])
    assert batch.original_sizes[0] == tuple(RECORD[f"ori_shape_{k}"].tolist())
    assert batch.image_sizes[0] == tuple(RECORD[f"img_shape_{k}"].tolist())
    assert batch.pad_sizes[0] == tuple(RECORD[f"pad_shape_{k}"].tolist())
    assert tuple(batch.tensor.shape[1:]) == tuple(RECORD[f"tensor_shape_{k}"].tolist())
    assert batch.scale_factors(0) == tuple(RECORD[f"scale_factor_{k}"].tolist())  # exact


def _resized(k: int, resize: str) -> tuple[torch.Tensor, torch.Tensor]:
    """glimpse's [3, h, w] resized image in 0..255 and its normalised padded tensor."""
    pre = DetectionPreprocessor(resize=resize)
    image = _image(k)
    batch = pre([image])
    h, w = batch.image_sizes[0]
    return batch.tensor[0, :, :h, :w] * torch.tensor(pre.std)[:, None, None] + torch.tensor(
        pre.mean)[:, None, None], batch.tensor[0]


@pytest.mark.parametrize("k", [0, 1])
def test_default_resize_within_one_grey_level(k):
    pixels, tensor = _resized(k, "torch")
    diffs = [(pixels[:, ::8, ::8] - torch.from_numpy(RECORD[f"resized_grid_{k}"]).float()).abs(),
             (pixels[:, :64, :64] - torch.from_numpy(RECORD[f"resized_crop_{k}"]).float()).abs()]
    assert max(float(d.max()) for d in diffs) < 0.8  # measured 0.76
    assert all(float(d.mean()) < 0.3 for d in diffs)  # measured 0.26..0.27
    corner = torch.from_numpy(RECORD[f"tensor_corner_{k}"])
    assert float((tensor[:, -48:, -48:] - corner).abs().max()) < 0.8 / min(IMAGENET_STD)


@pytest.mark.parametrize("k", [0, 1])
def test_mmcv_resize_is_bit_exact(k):
    pixels, tensor = _resized(k, "mmcv")
    pixels = pixels.round()
    assert torch.equal(pixels[:, ::8, ::8].to(torch.uint8),
                       torch.from_numpy(RECORD[f"resized_grid_{k}"]))
    assert torch.equal(pixels[:, :64, :64].to(torch.uint8),
                       torch.from_numpy(RECORD[f"resized_crop_{k}"]))
    corner = torch.from_numpy(RECORD[f"tensor_corner_{k}"])
    assert float((tensor[:, -48:, -48:] - corner).abs().max()) < 1e-5
    assert float(tensor.double().sum()) == pytest.approx(float(RECORD[f"tensor_sum_{k}"]),
                                                         abs=1e-2)


def _seeded_faster_rcnn(tmp_path: Path) -> torch.nn.Module:
    """The slim Faster R-CNN of the parity tests with their seeded weights, score threshold 0."""
    from glimpse import zoo

    spec = importlib.util.spec_from_file_location("mmdet_fixture_weights",
                                                  FIXTURES / "weights.py")
    weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(weights)
    record = np.load(FIXTURES / "faster_rcnn.npz")
    shapes = {k: tuple(int(x) for x in s.split(",") if x)
              for k, s in zip(record["keys"].tolist(), record["shapes"].tolist())}
    path = tmp_path / "faster_rcnn.pth"
    torch.save({"state_dict": weights.seeded_state_dict(shapes),
                "meta": {"mmdet_version": "3.3.0"}}, path)
    model = zoo.build("faster_rcnn_slim_fpn", 80, checkpoint=path,
                      backbone_kwargs={"base_width": 8}, fpn_channels=16, fc_channels=32)
    model.roi_head.test_cfg = replace(model.roi_head.test_cfg, score_thr=0.0)
    return model.eval()


@pytest.mark.slow
@pytest.mark.skipif(FULL_DIR is None, reason="set GLIMPSE_MMDET_RESIZE_DIR to the output of "
                    "make_resize_fixture.py --full")
@pytest.mark.parametrize("k", [0, 1])
def test_default_resize_effect_on_detections(k, tmp_path):
    """Top-100 detections (resized frame) on glimpse's default resize vs mmdetection's pixels:
    each mmdetection-input detection's best same-label IoU and its score gap."""
    model = _seeded_faster_rcnn(tmp_path)
    mmdet_pixels = torch.from_numpy(np.load(Path(FULL_DIR) / "resize_full.npz")[f"resized_{k}"])
    pre = model.preprocessor
    with torch.no_grad():
        ours = pre([_image(k)])
        tensor, _ = pad_batch([normalize(mmdet_pixels.float() / 255, pre.mean, pre.std)],
                              pre.size_divisor)
        theirs = replace(ours, tensor=tensor)
        assert torch.equal(DetectionPreprocessor(resize="mmcv")([_image(k)]).tensor, tensor)
        det_ours = model._detect(model.features(ours.tensor), ours)[0]
        det_theirs = model._detect(model.features(theirs.tensor), theirs)[0]
    iou = box_iou(det_theirs["boxes"], det_ours["boxes"]) * (
        det_theirs["labels"][:, None] == det_ours["labels"][None])
    best, j = iou.max(1)
    gap = (det_theirs["scores"] - det_ours["scores"][j]).abs()
    print(f"image {k}: top-10 IoU min {best[:10].min():.4f}, score gap max {gap[:10].max():.1e};"
          f" top-100 IoU > 0.99: {(best > 0.99).float().mean():.2f}, mean IoU "
          f"{best.mean():.4f}, score gap max {gap.max():.1e}")
    assert len(det_ours["boxes"]) == len(det_theirs["boxes"]) == 100
    assert float(best[:10].min()) > 0.95 and float(gap[:10].max()) < 1e-3  # 0.951 / 3.4e-4
    assert float((best > 0.99).float().mean()) >= 0.9  # measured 0.95 and 0.98


def test_unknown_resize_is_a_clear_error():
    with pytest.raises(ValueError, match="resize must be one of"):
        DetectionPreprocessor(resize="cv2")
