"""glimpse's Hybrid Task Cascade reproduces mmdetection 3.3.0's weight for weight (issues 9, 13).

``tests/fixtures/mmdet/htc.npz`` and ``htc_without_semantic.npz`` hold mmdetection's outputs for
seeded weights (``weights.py``; regenerate with ``make_fixtures.py`` in the oracle venv) on the
256x320 COCO crop at score threshold 0. Besides what every model is checked on
(``test_mmdet_parity.py``: FPN levels, proposals, final boxes / scores / labels, masks), HTC is
checked stage by stage:

* the semantic branch: logits (every 16th of 183 classes) and the embedding (every 4th
  channel) at stride 8, within ``1e-4`` of the map's max |value|;
* every box stage's softmax class probabilities of the first 48 RoIs, within ``1e-4``;
* every mask stage's sigmoid probabilities (the label's channel, chained by the mask
  information flow) on the first 8 detections, within ``1e-4``.

One departure is mmdetection 3.3.0's, measured here: its ``HybridTaskCascadeRoIHead`` appends
the mask predictions to ``aug_masks`` after the loop over the mask heads, not in it, so its
masks are the last stage's alone. mmdetection v1/v2 (whose model zoo reported HTC's numbers)
average the three stages' sigmoid masks, as glimpse does. So glimpse's final masks are
compared with ``masks_ensemble`` (mmdetection's own mask head pasting the stages' mean, recorded
by the fixture script), and mmdetection 3.3.0's own masks with glimpse's last mask stage pasted
alone (IoU above 0.99 both); ``ensemble_vs_mmdet3_iou`` reports how far the two rules lie apart
on these weights.

Slim fixtures run in ``make test``; R-50 width is ``slow``, from ``make_fixtures.py --full DIR``
and ``GLIMPSE_MMDET_PARITY_DIR=DIR``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from glimpse import zoo
from glimpse.checkpoints import (
    CheckpointError,
    glimpse_to_mmdet,
    mmdet_key_map,
    mmdet_to_glimpse,
)
from glimpse.heads.cascade import CascadeContext
from glimpse.heads.roi_extractor import boxes_to_rois
from glimpse.preprocess import paste_masks

_spec = importlib.util.spec_from_file_location(
    "mmdet_parity_shared", Path(__file__).with_name("test_mmdet_parity.py"))
parity = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(parity)

FAMILIES = ("htc", "htc_without_semantic")


def _rel(ours: torch.Tensor, ref: np.ndarray) -> float:
    ref = torch.from_numpy(ref)
    return float((ours - ref).abs().max() / ref.abs().max())


def _mask_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """[N] IoU of two [N, H, W] binary mask stacks (two empty masks agree)."""
    a, b = a.bool().flatten(1), b.bool().flatten(1)
    inter, union = (a & b).sum(1).float(), (a | b).sum(1).float()
    return torch.where(union > 0, inter / union.clamp(min=1), 1.0)


def _htc_compare(family: str, record: np.lib.npyio.NpzFile, full: bool, tmp_path: Path) -> dict:
    # the shared pipeline checks, with the masks of mmdet's stage ensemble (module docstring)
    shared = {k: record[k] for k in record.files}
    shared["masks"] = record["masks_ensemble"]
    out = parity._compare(family, shared, full, tmp_path)
    model = parity._build(family, full, tmp_path / f"{family}.pth")
    image = torch.from_numpy(np.asarray(Image.open(parity.FIXTURES / "image.png").convert("RGB")))
    image = image.permute(2, 0, 1).float() / 255.0
    with torch.no_grad():
        batch = model.preprocessor([image])
        feats = model.features(batch.tensor)
        raw = model.rpn_head(feats)
        (props,) = model.rpn_head.predict(
            raw, model.rpn_head.get_anchors(raw, batch.image_sizes, batch.pad_sizes),
            batch.image_sizes)
        semantic_feat = None
        if model.semantic_head is not None:
            logits, semantic_feat = model.semantic_head(feats)
            out["semantic_rel"] = max(_rel(logits[0, ::16], record["semantic_logits"]),
                                      _rel(semantic_feat[0, ::4], record["semantic_feat"]))
        head = model.roi_head
        context = CascadeContext(feats, batch.image_sizes, semantic_feat=semantic_feat)
        ((boxes, scores, labels),), stages = head.predict_boxes(context, [props["boxes"]],
                                                                return_stages=True)

        ref_props = torch.from_numpy(record["proposals"][:48])
        hit = parity._match(ref_props[:, :4], ref_props[:, 4], props["boxes"], props["scores"],
                            1e-4)
        out["stage_rois_found"] = int((hit >= 0).sum())
        ref = torch.from_numpy(record["stage_scores"])
        ref = torch.cat((ref[..., -1:], ref[..., :-1]), -1)  # background first
        found = hit >= 0
        out["stage_score_diff_max"] = max(float((probs[hit[found]] - ref[t][found]).abs().max())
                                          for t, ((_, probs),) in enumerate(stages))

        # the mask stages in order on the detections matched to mmdet's (inference's chain)
        ref_scores = torch.from_numpy(record["scores"])
        ref_labels = torch.from_numpy(record["labels"]).long() + 1
        det = parity._match(torch.from_numpy(record["boxes"]), ref_scores, boxes, scores, 1e-3,
                            ref_labels, labels)
        idx = det[det >= 0]
        mask_context = CascadeContext(feats, batch.image_sizes, semantic_feat=semantic_feat)
        x = head.mask_roi_features(mask_context, boxes_to_rois([boxes[idx]]).to(feats[0]))
        probs = []
        for t, mask_head in enumerate(head.mask_heads):
            f = head.mask_head_features(t, mask_context, x)
            probs.append(mask_head.probabilities(mask_head.logits(f), labels[idx]))
    first = (det[:8] >= 0).nonzero().flatten()  # of mmdet's first 8, those glimpse found
    ref_stage = torch.from_numpy(record["stage_masks"])[:, first]
    out["stage_mask_diff_max"] = max(float((p[first] - r).abs().max())
                                     for p, r in zip(probs, ref_stage))
    size = tuple(image.shape[-2:])
    mmdet3 = torch.from_numpy(record["masks"])[det >= 0]
    out["last_stage_mask_iou_min"] = float(_mask_iou(paste_masks(probs[-1], boxes[idx], size),
                                                     mmdet3).min())
    ensemble = _mask_iou(paste_masks(sum(probs) / len(probs), boxes[idx], size), mmdet3)
    out["ensemble_vs_mmdet3_iou"] = (float(ensemble.min()), float(ensemble.mean()))
    return out


def _htc_check(out: dict) -> None:
    parity._check(out)
    assert out.get("semantic_rel", 0.0) < 1e-4, out
    assert out["stage_rois_found"] == 48 and out["stage_score_diff_max"] < 1e-4, out
    assert out["stage_mask_diff_max"] < 1e-4, out
    assert out["last_stage_mask_iou_min"] > 0.99, out


@pytest.mark.parametrize("family", FAMILIES)
def test_slim_htc_matches_mmdet(family, tmp_path):
    path = parity.FIXTURES / f"{family}.npz"
    if not path.is_file():
        pytest.skip(f"{path} missing: regenerate with make_fixtures.py in the oracle venv")
    _htc_check(_htc_compare(family, np.load(path), full=False, tmp_path=tmp_path))


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_r50_htc_matches_mmdet(family, tmp_path):
    if not parity.FULL_DIR or not (Path(parity.FULL_DIR) / f"{family}.npz").is_file():
        pytest.skip("set GLIMPSE_MMDET_PARITY_DIR to the folder of make_fixtures.py --full")
    _htc_check(_htc_compare(family, np.load(Path(parity.FULL_DIR) / f"{family}.npz"),
                            full=True, tmp_path=tmp_path))


def test_htc_r50_mmdet_names():
    """HTC's own tensors under mmdetection 3.3.0's names (its ``model.state_dict()`` keys):
    ``conv_res`` in mask stages 2 and 3, the semantic branch inside the RoI head."""
    with torch.device("meta"):
        names = set(mmdet_key_map(zoo.build("htc_r50_fpn")).values())
        plain = set(mmdet_key_map(zoo.build("htc_without_semantic_r50_fpn")).values())
    semantic = ({f"roi_head.semantic_head.{m}.conv.{p}" for m in
                 [f"lateral_convs.{i}" for i in range(5)] + [f"convs.{j}" for j in range(4)]
                 + ["conv_embedding"] for p in ("weight", "bias")}
                | {"roi_head.semantic_head.conv_logits.weight",
                   "roi_head.semantic_head.conv_logits.bias"})
    conv_res = {f"roi_head.mask_head.{t}.conv_res.conv.{p}" for t in (1, 2)
                for p in ("weight", "bias")}
    assert names - plain == semantic
    assert conv_res <= plain and not any(".0.conv_res." in n for n in plain)
    assert {"roi_head.bbox_head.2.fc_cls.weight", "roi_head.mask_head.2.conv_logits.weight",
            "roi_head.mask_head.0.upsample.weight"} <= plain


def test_htc_checkpoint_into_htc_without_semantic_is_refused(tmp_path):
    """The wrong model for the file: one line naming the first semantic tensor."""
    model = zoo.build("htc_slim_fpn", 3)
    path = tmp_path / "htc.pth"
    torch.save({"state_dict": glimpse_to_mmdet(model.state_dict(), model),
                "meta": {"mmdet_version": "3.3.0"}}, path)
    with pytest.raises(CheckpointError, match=r"htc\.pth: unexpected tensor roi_head\."
                                              r"semantic_head\.conv_embedding\.conv\.bias .*"
                                              r"model htc_without_semantic_slim_fpn"):
        zoo.build("htc_without_semantic_slim_fpn", 3, checkpoint=path)


@pytest.mark.parametrize("family", FAMILIES)
def test_htc_round_trip_is_exact(family):
    model = zoo.build(f"{family}_slim_fpn", 3)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for t in model.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g))
    state = model.state_dict()
    back = mmdet_to_glimpse(glimpse_to_mmdet(state, model), model)
    assert back.keys() == state.keys() and all(torch.equal(back[k], state[k]) for k in state)
