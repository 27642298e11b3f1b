"""mmdetection's CARAFE models load into glimpse and reproduce mmdetection 3.3.0 (issues 9, 11).

* ``carafe_pack.npz``: mmcv ``CARAFEPack`` outputs for seeded weights (grouped kernels, scales 2
  and 3, a dilated encoder). glimpse's :class:`~glimpse.layers.CARAFE` loaded with the same
  tensors under the same names must give the same output (relative 1e-5), through the compiled
  op and through the pure-PyTorch reference: this pins the content encoder's channel order
  (``m * s^2 + sy * s + sx`` before pixel shuffle), the per-group softmax and the op's mask
  layout against mmcv's own module code. (mmcv 2.1.0 has no CPU CARAFE op: the oracle computes
  the reassembly with ``mmcv_cpu_patch.py``'s unfold sum, a transcription of mmcv's CUDA
  kernel's indexing; pixel shuffle and normaliser are mmcv's.)
* ``faster_rcnn_carafe.npz`` / ``mask_rcnn_carafe.npz``: ``carafe/faster-rcnn_r50_fpn-carafe``
  and ``carafe/mask-rcnn_r50_fpn-carafe`` (FPN_CARAFE neck, CARAFE mask upsampler, pad 64) on
  the 256x320 fixture image (a multiple of 64, so neither library pads), compared as the
  other detectors in ``test_mmdet_parity.py`` (same tolerances, same helpers). Slim here; R-50
  width as a ``slow`` test on ``make_fixtures.py --full DIR`` outputs
  (``GLIMPSE_MMDET_PARITY_DIR``).
* ``mask_rcnn_carafe_padded.npz``: the same Mask R-CNN on the image cut to 250x310, which both
  libraries pad to 256x320 (pad 64) before the backbone; test scale = the crop's size, so
  neither resizes.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import glimpse.layers.carafe as carafe_layer
from glimpse import zoo
from glimpse.checkpoints import CheckpointError, glimpse_to_mmdet, mmdet_key_map, mmdet_to_glimpse
from glimpse.layers import CARAFE
from glimpse.ops.carafe import carafe_ref

_spec = importlib.util.spec_from_file_location(
    "mmdet_parity_helpers", Path(__file__).resolve().parent / "test_mmdet_parity.py")
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

CARAFE_FAMILIES = ("faster_rcnn_carafe", "mask_rcnn_carafe")
PADDED_CROP = (250, 310)  # make_fixtures.PADDED_CROP: padded to 256x320 by the pad to 64


@pytest.mark.parametrize("op", ["compiled_or_default", "reference"])
def test_carafe_module_matches_mmcv_carafe_pack(op, monkeypatch):
    path = parity.FIXTURES / "carafe_pack.npz"
    if not path.is_file():
        pytest.skip(f"{path} missing: regenerate with make_fixtures.py in the oracle venv")
    if op == "reference":
        monkeypatch.setattr(carafe_layer, "carafe", carafe_ref)
    record = np.load(path)
    packs = sorted({k.split("_")[0] for k in record.files})
    assert packs == ["p0", "p1"]
    for p in packs:
        config = json.loads(str(record[f"{p}_config"]))
        module = CARAFE(**config).eval()
        module.load_state_dict({k: parity.weights.seeded_tensor(f"{p}.{k}", tuple(v.shape))
                                for k, v in module.state_dict().items()})
        with torch.no_grad():
            out = module(torch.from_numpy(record[f"{p}_x"]))
        ref = torch.from_numpy(record[f"{p}_out"])
        assert out.shape == ref.shape
        assert float((out - ref).abs().max() / ref.abs().max()) < 1e-5, (p, config)


@pytest.mark.parametrize("family", CARAFE_FAMILIES)
def test_slim_carafe_models_match_mmdet(family, tmp_path):
    path = parity.FIXTURES / f"{family}.npz"
    if not path.is_file():
        pytest.skip(f"{path} missing: regenerate with make_fixtures.py in the oracle venv")
    parity._check(parity._compare(family, np.load(path), full=False, tmp_path=tmp_path))


def test_slim_mask_rcnn_carafe_matches_mmdet_on_a_padded_image(tmp_path, monkeypatch):
    path = parity.FIXTURES / "mask_rcnn_carafe_padded.npz"
    if not path.is_file():
        pytest.skip(f"{path} missing: regenerate with make_fixtures.py in the oracle venv")
    record = np.load(path)
    h, w = PADDED_CROP
    image = Image.open(parity.FIXTURES / "image.png").convert("RGB").crop((0, 0, w, h))
    image.save(tmp_path / "image.png")  # lossless: the crop the oracle saw
    monkeypatch.setattr(parity, "FIXTURES", tmp_path)  # _compare reads image.png from here
    monkeypatch.setattr(parity, "SCALE", (w, h))
    out = parity._compare("mask_rcnn_carafe", record, full=False, tmp_path=tmp_path)
    assert record["feat_0"].shape[-2:] == (64, 80)  # mmdet's P2 of the 256x320 padded batch
    parity._check(out)


@pytest.mark.slow
@pytest.mark.parametrize("family", CARAFE_FAMILIES)
def test_r50_carafe_models_match_mmdet(family, tmp_path):
    if not parity.FULL_DIR or not (Path(parity.FULL_DIR) / f"{family}.npz").is_file():
        pytest.skip("set GLIMPSE_MMDET_PARITY_DIR to the folder of make_fixtures.py --full")
    out = parity._compare(family, np.load(Path(parity.FULL_DIR) / f"{family}.npz"), full=True,
                          tmp_path=tmp_path)
    print(family, out)
    parity._check(out)


def test_r50_carafe_names_and_round_trip():
    """mmdet names of every CARAFE-specific tensor of the R-50 models (neck extra level in
    both lists, CARAFEPack convs under ``upsample_modules`` / the mask head's ``upsample``),
    and glimpse -> mmdet -> glimpse is exact."""
    with torch.device("meta"):
        model = zoo.build("mask_rcnn_r50_fpn_carafe")
    names = mmdet_key_map(model)
    assert names["neck.extra_convs.0.weight"] == "neck.lateral_convs.4.conv.weight"
    assert names["neck.extra_fpn_convs.0.bias"] == "neck.fpn_convs.4.conv.bias"
    assert names["neck.lateral_convs.3.weight"] == "neck.lateral_convs.3.conv.weight"
    for i in range(4):
        for conv in ("channel_compressor", "content_encoder"):
            key = f"neck.upsamplers.{i}.module.{conv}.weight"
            assert names[key] == f"neck.upsample_modules.{i}.{conv}.weight"
    assert (names["roi_head.mask_heads.0.upsample.content_encoder.bias"]
            == "roi_head.mask_head.upsample.content_encoder.bias")
    assert len(set(names.values())) == len(names)

    slim = zoo.build("mask_rcnn_slim_fpn_carafe", 3)
    g = torch.Generator().manual_seed(0)
    state = {k: torch.rand(v.shape, generator=g) if v.is_floating_point() else v
             for k, v in slim.state_dict().items()}
    back = mmdet_to_glimpse(glimpse_to_mmdet(state, slim), slim)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)


def test_other_upsamplers_with_parameters_are_refused():
    """FPN_CARAFE with a non-CARAFE learned upsampler has no mmdet mapping: a named error."""
    model = zoo.build("faster_rcnn_slim_fpn_carafe", 3, upsampler="deconv")
    with pytest.raises(CheckpointError, match=r"tensor neck\.upsamplers\.0\.module\.\S+ has no "):
        mmdet_key_map(model, "faster_rcnn_slim_fpn_carafe")
    nearest = zoo.build("faster_rcnn_slim_fpn_carafe", 3, upsampler="nearest")
    assert not any("upsample" in v for v in mmdet_key_map(nearest).values())
