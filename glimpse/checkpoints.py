"""Checkpoints of glimpse and mmdetection (v2 and v3) loaded into glimpse detectors.

An mmdetection checkpoint is a dict ``{"state_dict": ..., "meta": ...}`` (``meta`` holds the
config text under ``config`` in v2 and ``cfg`` in v3) or a bare state dict. Its tensors map
one to one onto a glimpse model of the same configuration; :func:`mmdet_key_map` gives the
name of every glimpse tensor in mmdetection, part by part:

=====================================  ===============================================
glimpse                                mmdetection
=====================================  ===============================================
``backbone.*`` (ResNet/ResNeXt)        ``backbone.*`` (the same torchvision names)
``neck.lateral_convs.i.*``             ``neck.lateral_convs.i.conv.*``
``neck.fpn_convs.i.*``                 ``neck.fpn_convs.i.conv.*``
``neck.extra_convs.k.*``               ``neck.fpn_convs.<used levels + k>.conv.*``
``rpn_head.conv/cls/reg.*``            ``rpn_head.rpn_conv/rpn_cls/rpn_reg.*`` (v3 RPN alone:
                                       ``bbox_head.rpn_*``; v2's ``rpn_head`` also read)
``roi_head.box_heads.t.fcs.j.*``       ``roi_head.bbox_head[.t].shared_fcs.j.*``
``roi_head.box_heads.t.cls/reg.*``     ``roi_head.bbox_head[.t].fc_cls/fc_reg.*``
``roi_head.mask_heads.t.convs.j.*``    ``roi_head.mask_head[.t].convs.j.conv.*``
``roi_head.mask_heads.t.upsample.0.*`` ``roi_head.mask_head[.t].upsample.*``
``roi_head.mask_heads.t.conv_logits.*`` ``roi_head.mask_head[.t].conv_logits.*``
``head.cls_convs.2j.*`` (RetinaNet)    ``bbox_head.cls_convs.j.conv.*`` (``reg_convs`` too)
``head.retina_cls/retina_reg.*``       ``bbox_head.retina_cls/retina_reg.*``
``rpn_head.*`` / ``head.*`` (GA)       ``rpn_head.*`` / ``bbox_head.*`` (v3 GA-RPN alone:
                                       ``bbox_head.*``), the same names: ``rpn_conv``,
                                       ``conv_loc``, ``conv_shape``, ``feature_adaption``
                                       (``_cls``/``_reg``) ``.conv_offset``/``.conv_adaption``,
                                       ``conv_cls``/``conv_reg``, ``retina_cls``/``retina_reg``;
                                       GA-RetinaNet's towers as RetinaNet's
``roi_head.mask_heads.t.conv_res.0.*`` ``roi_head.mask_head.t.conv_res.conv.*`` (HTC)
``semantic_head.lateral_convs.i.*``    ``roi_head.semantic_head.lateral_convs.i.conv.*``
``semantic_head.convs.j.*``            ``roi_head.semantic_head.convs.j.conv.*``
``semantic_head.conv_embedding.*``     ``roi_head.semantic_head.conv_embedding.conv.*``
``semantic_head.conv_logits.*``        ``roi_head.semantic_head.conv_logits.*``
=====================================  ===============================================

(``[.t]``: cascade stages carry their index, Faster / Mask R-CNN's single head does not. HTC's
semantic branch belongs to the detector in glimpse and to the RoI head in mmdetection; its 183
COCO-stuff logits have no background to move.)

mmdetection's ``FPN_CARAFE`` neck (glimpse FPN with ``extra_in_top_down``) keeps its extra
levels in the same lists as the backbone levels, and CARAFE modules inside glimpse's
``ScaleThenCrop`` adapter lose the wrapper's name (mmcv ``CARAFEPack`` and glimpse ``CARAFE``
name their two convs alike and share the encoder's channel layout and kernel normaliser):

=============================================  ==========================================
glimpse (FPN_CARAFE)                           mmdetection
=============================================  ==========================================
``neck.lateral_convs.i.*``                     ``neck.lateral_convs.i.conv.*``
``neck.extra_convs.k.*`` (P6 conv on C5)       ``neck.lateral_convs.<levels + k>.conv.*``
``neck.fpn_convs.i.*``                         ``neck.fpn_convs.i.conv.*``
``neck.extra_fpn_convs.k.*``                   ``neck.fpn_convs.<levels + k>.conv.*``
``neck.upsamplers.i.module.<conv>.*``          ``neck.upsample_modules.i.<conv>.*``
``roi_head.mask_heads.t.upsample.<conv>.*``    ``roi_head.mask_head[.t].upsample.<conv>.*``
=============================================  ==========================================

(``<conv>``: ``channel_compressor`` or ``content_encoder`` of a CARAFE upsampler; other
upsamplers with parameters have no mapping.)

Label order: mmdetection v2+ puts the background last in the R-CNN classifier (row K of
``fc_cls``), glimpse first (row 0), so those rows are rotated. The class-specific regressor of
v2+ has no background rows (``4K`` outputs, class ``k`` at rows ``4(k-1)..4k-1`` in both
libraries), so its rows stay with their classes unchanged; RPN and RetinaNet classifiers (GA's
too) are sigmoid outputs without a background and keep their layout (channel ``a*K + c``).
mmdetection v1 checkpoints (background first, top-level ``bbox_head``) are refused: mmdetection's
``tools/model_converters/upgrade_model_version.py`` upgrades them.

Caffe-style backbones (MSRA weights, ``style='caffe'``) put the stride on the first 1x1 conv
and read BGR images normalised by mean ``(103.53, 116.28, 123.675)`` and std 1. glimpse models
always read RGB: the loader reverses the input channels of the stem conv and sets the
preprocessor to the same mean in RGB order with std 1, which computes the same function.
:func:`backbone_style` tells the style from the checkpoint's config text (else its file name).

Guided-anchoring heads need no conversion beyond the names: mmcv's ``DeformConv2d`` and
torchvision's ``deform_conv2d`` read the same offset layout (per offset group, per kernel tap
``(dy, dx)``; offset group ``g`` moves input channels ``g C/G..(g+1) C/G - 1``) and the same
``[C_out, C_in, k, k]`` weight without bias; mmcv's ``MaskedConv2d`` is an ``nn.Conv2d`` whose
weight and bias glimpse's masked convolution reads as they are.

Every tensor is accounted for: a tensor missing from the file, one the model has no place
for, or one of the wrong shape raises :class:`CheckpointError` naming the key, the model and
the file. Only BatchNorm's ``num_batches_tracked`` counters are exempt (frozen BN has none,
some files lack them; they do not affect outputs).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from glimpse.backbones.resnet import ResNet
from glimpse.detectors.retinanet import RetinaNet
from glimpse.detectors.two_stage import TwoStageDetector
from glimpse.heads.guided_anchor import GARetinaHead, GuidedAnchorHead
from glimpse.heads.htc import HTCRoIHead
from glimpse.heads.retina import RetinaHead
from glimpse.heads.roi_mask import FCNMaskHead
from glimpse.heads.rpn import RPNHead
from glimpse.heads.semantic import FusedSemanticHead
from glimpse.heads.standard import StandardRoIHead
from glimpse.layers import CARAFE
from glimpse.necks.fpn import FPN, ScaleThenCrop

__all__ = [
    "CAFFE_MEAN_RGB",
    "CAFFE_STD",
    "Checkpoint",
    "CheckpointError",
    "backbone_style",
    "class_names_of",
    "glimpse_to_mmdet",
    "load_checkpoint",
    "mmdet_key_map",
    "mmdet_to_glimpse",
    "read_checkpoint",
]

# mmdet's caffe-style normalisation (mean given in BGR there), here in RGB order.
CAFFE_MEAN_RGB = (123.675, 116.28, 103.53)
CAFFE_STD = (1.0, 1.0, 1.0)

_COUNTER = "num_batches_tracked"
_RCNN_CLS = re.compile(r"^roi_head\.box_heads\.\d+\.cls\.(weight|bias)$")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the model; the message names the file,
    the model and (for tensors) the key."""


class Checkpoint:
    """A checkpoint file read into memory.

    Attributes:
        path: the file.
        state_dict: name -> tensor, as stored.
        meta: mmdetection's ``meta`` dict (empty when absent).
        source: ``"mmdet"`` (a ``state_dict`` / ``meta`` wrapper or mmdetection key names) or
            ``"glimpse"`` (a glimpse training checkpoint or a glimpse state dict).
    """

    def __init__(self, path: Path, state_dict: dict[str, Tensor], meta: dict[str, Any],
                 source: str) -> None:
        self.path = path
        self.state_dict = state_dict
        self.meta = meta
        self.source = source

    @property
    def config_text(self) -> str:
        """mmdetection's config text stored in ``meta`` (v2 ``config``, v3 ``cfg``), or ''."""
        for key in ("cfg", "config"):
            if isinstance(self.meta.get(key), str):
                return self.meta[key]
        return ""


def _looks_like_mmdet(keys: set[str]) -> bool:
    markers = ("neck.lateral_convs.0.conv.weight", "rpn_head.rpn_conv.weight",
               "bbox_head.rpn_conv.weight",
               "bbox_head.retina_cls.weight", "roi_head.bbox_head.fc_cls.weight",
               "roi_head.bbox_head.0.fc_cls.weight")
    return any(m in keys for m in markers)


def read_checkpoint(path: str | os.PathLike, *, trusted: bool = False) -> Checkpoint:
    """Read a glimpse or mmdetection checkpoint on CPU.

    Args:
        path: a ``.pth`` / ``.pt`` file.
        trusted: allow full unpickling. By default only tensors and plain containers are
            read (``torch.load(weights_only=True)``); a file holding other objects (an
            mmengine message hub, say) needs ``trusted=True`` and must come from a source you
            trust.

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: unreadable, or no state dict inside; mmdetection v1 checkpoints.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as exc:  # truncated, corrupt, not torch, or objects beyond weights_only
        hint = "" if trusted else " (if the file is from a trusted source, pass trusted=True)"
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint: {first}{hint}") from exc
    if not isinstance(raw, dict):
        raise CheckpointError(f"{path}: holds a {type(raw).__name__}, not a state dict")
    meta: dict[str, Any] = {}
    source = "glimpse"
    if isinstance(raw.get("state_dict"), Mapping):
        meta = raw.get("meta") if isinstance(raw.get("meta"), dict) else {}
        state, source = dict(raw["state_dict"]), "mmdet"
    elif isinstance(raw.get("model"), Mapping) and "iteration" in raw:
        state = dict(raw["model"])  # glimpse.engine.train checkpoint
    else:
        state = raw
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, Tensor)]
    if bad:
        raise CheckpointError(f"{path}: entry {bad[0]!r} is not a named tensor; not a state dict")
    if str(meta.get("mmdet_version", "")).startswith("1.") or (
            "bbox_head.fc_cls.weight" in state or "bbox_head.0.fc_cls.weight" in state):
        raise CheckpointError(f"{path}: an mmdetection v1 checkpoint (background first, top-level "
                              "bbox_head); upgrade it with mmdetection's tools/model_converters/"
                              "upgrade_model_version.py")
    if source == "glimpse" and _looks_like_mmdet(set(state)):
        source = "mmdet"
    return Checkpoint(path, state, meta, source)


def backbone_style(ckpt: Checkpoint) -> str | None:
    """``"caffe"`` or ``"pytorch"`` for an mmdetection checkpoint, None when unknown.

    From the config text in ``meta`` when stored (``style='caffe'`` in the backbone), else
    from the file name (model-zoo files of caffe-style models contain ``_caffe``).
    """
    if ckpt.source != "mmdet":
        return None
    text = ckpt.config_text
    if text:
        return "caffe" if re.search(r"style\s*=\s*['\"]caffe['\"]", text) else "pytorch"
    return "caffe" if "_caffe" in ckpt.path.name else None


def class_names_of(ckpt: Checkpoint) -> list[str] | None:
    """Class names (labels 1..K in order) stored in an mmdetection checkpoint's meta (v3
    ``dataset_meta.classes``, v2 ``CLASSES``), None when it stores none."""
    dataset_meta = ckpt.meta.get("dataset_meta")
    classes = (dataset_meta.get("classes") if isinstance(dataset_meta, dict) else None
               ) or ckpt.meta.get("CLASSES")
    if isinstance(classes, (list, tuple)) and classes and all(isinstance(c, str)
                                                             for c in classes):
        return list(classes)
    return None


def _error(ckpt_path: Path | str, model_name: str, message: str) -> CheckpointError:
    return CheckpointError(f"{ckpt_path}: {message} (model {model_name})")


def _roi_prefixes(roi_head: nn.Module) -> tuple[str, str]:
    """mmdet module names of the box and mask heads: indexed per stage for cascades."""
    if isinstance(roi_head, StandardRoIHead):
        return "roi_head.bbox_head", "roi_head.mask_head"
    return "roi_head.bbox_head.{t}", "roi_head.mask_head.{t}"


def _neck_rule(neck: nn.Module, rest: str) -> str | None:
    if not isinstance(neck, FPN) or neck.extra_in_top_down:
        return None  # FPN_CARAFE: _carafe_rule; other necks have no mapping yet
    m = re.fullmatch(r"(lateral_convs|fpn_convs|extra_convs)\.(\d+)\.(\w+)", rest)
    if m is None:
        return None
    group, index, param = m.group(1), int(m.group(2)), m.group(3)
    if group == "extra_convs":  # mmdet appends the extra convs to fpn_convs
        group, index = "fpn_convs", len(neck.lateral_convs) + index
    return f"neck.{group}.{index}.conv.{param}"


def _roi_rule(roi_head: nn.Module, rest: str) -> str | None:
    box_prefix, mask_prefix = _roi_prefixes(roi_head)
    m = re.fullmatch(r"box_heads\.(\d+)\.(fcs\.\d+|cls|reg)\.(\w+)", rest)
    if m is not None:
        part = {"cls": "fc_cls", "reg": "fc_reg"}.get(m.group(2), "shared_" + m.group(2))
        return f"{box_prefix.format(t=m.group(1))}.{part}.{m.group(3)}"
    m = re.fullmatch(r"mask_heads\.(\d+)\.(convs\.\d+|upsample\.0|conv_logits)\.(\w+)", rest)
    if m is None:
        return None
    head = roi_head.mask_heads[int(m.group(1))]
    if m.group(2) == "upsample.0" and not (isinstance(head, FCNMaskHead)
                                           and head._default_upsampler):
        return None  # injected upsamplers: _carafe_rule maps CARAFE
    part = {"upsample.0": "upsample", "conv_logits": "conv_logits"}.get(
        m.group(2), m.group(2) + ".conv")
    return f"{mask_prefix.format(t=m.group(1))}.{part}.{m.group(3)}"


_CARAFE_CONV = r"((?:channel_compressor|content_encoder)\.\w+)"


def _carafe_rule(model: nn.Module, key: str) -> str | None:
    """mmdet name of ``key`` in an ``FPN_CARAFE`` neck or a CARAFE mask upsampler (the table
    in the module docstring), None for every other tensor."""
    part, _, rest = key.partition(".")
    neck = getattr(model, "neck", None)
    if part == "neck" and isinstance(neck, FPN) and neck.extra_in_top_down:
        m = re.fullmatch(r"(lateral_convs|fpn_convs|extra_convs|extra_fpn_convs)\.(\d+)\.(\w+)",
                         rest)
        if m is not None:
            group, index = m.group(1), int(m.group(2))
            if group.startswith("extra_"):  # mmdet appends the extra levels to both lists
                group = "lateral_convs" if group == "extra_convs" else "fpn_convs"
                index += len(neck.lateral_convs)
            return f"neck.{group}.{index}.conv.{m.group(3)}"
        m = re.fullmatch(rf"upsamplers\.(\d+)\.module\.{_CARAFE_CONV}", rest)
        up = neck.upsamplers[int(m.group(1))] if m is not None else None
        if isinstance(up, ScaleThenCrop) and isinstance(up.module, CARAFE):
            return f"neck.upsample_modules.{m.group(1)}.{m.group(2)}"
        return None
    if part == "roi_head" and isinstance(model, TwoStageDetector):
        m = re.fullmatch(rf"mask_heads\.(\d+)\.upsample\.{_CARAFE_CONV}", rest)
        if m is not None and isinstance(model.roi_head.mask_heads[int(m.group(1))].upsample,
                                        CARAFE):
            mask_prefix = _roi_prefixes(model.roi_head)[1].format(t=m.group(1))
            return f"{mask_prefix}.upsample.{m.group(2)}"
    return None


# GA heads' own layers keep their mmdet names (towers aside)
_GA_LAYER = re.compile(r"(rpn_conv|conv_loc|conv_shape|conv_cls|conv_reg|retina_cls|retina_reg"
                       r"|feature_adaption(_cls|_reg)?\.(conv_offset|conv_adaption))\.\w+")


def _ga_rule(model: nn.Module, head: GuidedAnchorHead, rest: str) -> str | None:
    """mmdet name of tensor ``rest`` of a guided-anchor head (GA-RPN in a two-stage model, or
    GA-RetinaNet's head)."""
    # mmdet v3's RPN detector calls its head bbox_head, as does every one-stage detector
    prefix = "rpn_head" if getattr(model, "roi_head", None) is not None else "bbox_head"
    m = re.fullmatch(r"(cls_convs|reg_convs)\.(\d+)\.(\w+)", rest)
    if m and isinstance(head, GARetinaHead):  # towers interleave ReLUs: conv j at index 2j
        return f"{prefix}.{m.group(1)}.{int(m.group(2)) // 2}.conv.{m.group(3)}"
    return f"{prefix}.{rest}" if _GA_LAYER.fullmatch(rest) else None


def _htc_rule(model: TwoStageDetector, key: str) -> str | None:
    """mmdet name of HTC's own tensors: the mask heads' ``conv_res`` (a ConvModule there) and
    the fused semantic branch (in mmdet's RoI head), None for any other key."""
    m = re.fullmatch(r"roi_head\.mask_heads\.(\d+)\.conv_res\.0\.(\w+)", key)
    if m is not None:
        return f"roi_head.mask_head.{m.group(1)}.conv_res.conv.{m.group(2)}"
    if not isinstance(model.semantic_head, FusedSemanticHead):
        return None  # an injected semantic branch has no mapping
    m = re.fullmatch(r"semantic_head\.(lateral_convs\.\d+|convs\.\d+|conv_embedding|"
                     r"conv_logits)\.(\w+)", key)
    if m is None:
        return None
    module = m.group(1) if m.group(1) == "conv_logits" else m.group(1) + ".conv"
    return f"roi_head.semantic_head.{module}.{m.group(2)}"


def _mmdet_name(model: nn.Module, key: str) -> str | None:
    """mmdet name of glimpse tensor ``key`` of ``model``, None when the part has no mapping."""
    carafe_name = _carafe_rule(model, key)
    if carafe_name is not None:
        return carafe_name
    part, _, rest = key.partition(".")
    if isinstance(getattr(model, "roi_head", None), HTCRoIHead) and (
            part == "semantic_head" or ".conv_res." in rest):
        return _htc_rule(model, key)
    if part == "backbone":
        return key if isinstance(model.backbone, ResNet) else None
    if part == "neck":
        return _neck_rule(model.neck, rest)
    if part in ("rpn_head", "head") and isinstance(getattr(model, part, None), GuidedAnchorHead):
        return _ga_rule(model, getattr(model, part), rest)
    if part == "rpn_head" and isinstance(model.rpn_head, RPNHead):
        m = re.fullmatch(r"(conv|cls|reg)\.(\w+)", rest)
        # mmdet v3's RPN detector calls its head bbox_head (v2 and two-stage models: rpn_head)
        head = "bbox_head" if model.roi_head is None else "rpn_head"
        return f"{head}.rpn_{m.group(1)}.{m.group(2)}" if m else None
    if part == "roi_head" and isinstance(model, TwoStageDetector):
        return _roi_rule(model.roi_head, rest)
    if part == "head" and isinstance(model.head, RetinaHead):
        m = re.fullmatch(r"(cls_convs|reg_convs)\.(\d+)\.(\w+)", rest)
        if m:  # glimpse towers interleave ReLUs: conv j sits at index 2j
            return f"bbox_head.{m.group(1)}.{int(m.group(2)) // 2}.conv.{m.group(3)}"
        m = re.fullmatch(r"(retina_cls|retina_reg)\.(\w+)", rest)
        return f"bbox_head.{m.group(1)}.{m.group(2)}" if m else None
    return None


def mmdet_key_map(model: nn.Module, model_name: str | None = None) -> dict[str, str]:
    """glimpse state-dict key -> mmdetection key, for every tensor of ``model``.

    Raises:
        CheckpointError: ``model`` (or one of its parts) has no mmdetection layout; the
            message names the first such key.
    """
    name = model_name or type(model).__name__
    if not isinstance(model, (TwoStageDetector, RetinaNet)):
        raise CheckpointError(f"model {name}: no mmdetection layout for a "
                              f"{type(model).__name__}")
    out = {}
    for key in model.state_dict():
        mm = _mmdet_name(model, key)
        if mm is None:
            raise CheckpointError(f"model {name}: tensor {key} has no mmdetection counterpart "
                                  "(this part cannot load mmdetection checkpoints yet)")
        out[key] = mm
    return out


def _rotate_background(t: Tensor, to_glimpse: bool) -> Tensor:
    """Classifier rows: mmdet ``[fg_1..fg_K, bg]`` <-> glimpse ``[bg, fg_1..fg_K]``."""
    return torch.cat((t[-1:], t[:-1])) if to_glimpse else torch.cat((t[1:], t[:1]))


def _stem_key(model: nn.Module) -> str | None:
    return "backbone.conv1.weight" if isinstance(model.backbone, ResNet) else None


def mmdet_to_glimpse(state: Mapping[str, Tensor], model: nn.Module, *,
                     caffe_style: bool = False, path: str | os.PathLike = "<state dict>",
                     model_name: str | None = None) -> dict[str, Tensor]:
    """Convert an mmdetection state dict to ``model``'s key names, label order and channels.

    Args:
        state: mmdetection name -> tensor.
        model: the glimpse model the tensors are for (its structure decides the names).
        caffe_style: reverse the stem conv's input channels (BGR -> RGB).
        path, model_name: named in errors.

    Returns:
        A state dict that ``model.load_state_dict(..., strict=True)`` accepts.

    Raises:
        CheckpointError: a tensor is missing, unexpected or of the wrong shape (the message
            names the mmdetection key, the glimpse key, the model and the file).
    """
    name = model_name or type(model).__name__
    key_map = mmdet_key_map(model, name)
    own = model.state_dict()
    if isinstance(model, TwoStageDetector) and model.roi_head is None:  # v2 RPN file names
        state = {("bbox_head." + k[len("rpn_head."):] if k.startswith("rpn_head.") else k): v
                 for k, v in state.items()}
    inverse = {mm: g for g, mm in key_map.items()}
    unexpected = sorted(k for k in state if k not in inverse
                        and not (k.endswith(_COUNTER) and k.rsplit(".", 1)[0] + ".weight"
                                 in inverse))
    if unexpected:
        raise _error(path, name, f"unexpected tensor {unexpected[0]} (no place in the model; "
                                 f"{len(unexpected)} unexpected in all)")
    out: dict[str, Tensor] = {}
    for g, mm in key_map.items():
        if mm not in state:
            if g.endswith(_COUNTER):
                out[g] = own[g].clone()
                continue
            raise _error(path, name, f"missing tensor {mm} (for {g})")
        t = state[mm]
        if _RCNN_CLS.match(g):
            t = _rotate_background(t, to_glimpse=True)
        if caffe_style and g == _stem_key(model):
            t = t.flip(1)
        if tuple(t.shape) != tuple(own[g].shape):
            raise _error(path, name, f"tensor {mm} has shape {tuple(t.shape)}, the model's "
                                     f"{g} {tuple(own[g].shape)}")
        out[g] = t
    return out


def glimpse_to_mmdet(state: Mapping[str, Tensor], model: nn.Module, *,
                     caffe_style: bool = False) -> dict[str, Tensor]:
    """The inverse of :func:`mmdet_to_glimpse`: ``model``'s state dict under mmdetection's
    names, background last, (``caffe_style``) stem channels in BGR order."""
    out = {}
    stem = _stem_key(model)
    for g, mm in mmdet_key_map(model).items():
        t = state[g]
        if _RCNN_CLS.match(g):
            t = _rotate_background(t, to_glimpse=False)
        if caffe_style and g == stem:
            t = t.flip(1)
        out[mm] = t
    return out


def load_checkpoint(model: nn.Module, checkpoint: str | os.PathLike | Checkpoint, *,
                    model_name: str | None = None, style: str | None = None,
                    trusted: bool = False) -> Checkpoint:
    """Load a glimpse or mmdetection checkpoint into ``model`` (all tensors or an error).

    mmdetection checkpoints are converted by :func:`mmdet_to_glimpse`; for a caffe-style one
    (``style``, else :func:`backbone_style`) the preprocessor switches to caffe normalisation.
    The model's backbone must have been built with the same style (``zoo.build`` does this).

    Args:
        model: a glimpse detector.
        checkpoint: a file, or a :class:`Checkpoint` already read.
        model_name: named in errors (default the class name).
        style: ``"pytorch"`` or ``"caffe"``; default from the checkpoint, else pytorch.
        trusted: see :func:`read_checkpoint`.

    Returns:
        The :class:`Checkpoint` read.

    Raises:
        FileNotFoundError, CheckpointError: see :func:`read_checkpoint` and
        :func:`mmdet_to_glimpse`; also a backbone style that disagrees with the checkpoint.
    """
    ckpt = (checkpoint if isinstance(checkpoint, Checkpoint)
            else read_checkpoint(checkpoint, trusted=trusted))
    name = model_name or type(model).__name__
    if ckpt.source == "glimpse":
        state = ckpt.state_dict
        own = model.state_dict()
        for key in sorted(own):
            if key not in state:
                raise _error(ckpt.path, name, f"missing tensor {key}")
        for key in sorted(state):
            if key not in own:
                raise _error(ckpt.path, name, f"unexpected tensor {key}")
            if tuple(state[key].shape) != tuple(own[key].shape):
                raise _error(ckpt.path, name, f"tensor {key} has shape "
                                              f"{tuple(state[key].shape)}, the model's "
                                              f"{tuple(own[key].shape)}")
        model.load_state_dict(state)
        return ckpt
    found = backbone_style(ckpt)
    style = style or found or "pytorch"
    if style not in ("pytorch", "caffe"):
        raise ValueError(f"style must be 'pytorch' or 'caffe', got {style!r}")
    if found is not None and found != style:
        raise _error(ckpt.path, name, f"the checkpoint's backbone is {found}-style, "
                                      f"style={style!r} was asked for")
    backbone_style_of_model = getattr(model.backbone, "style", style)
    if backbone_style_of_model != style:
        raise _error(ckpt.path, name, f"the model's backbone is {backbone_style_of_model}-style "
                                      f"but the checkpoint is {style}-style; build the model "
                                      f"with style={style!r}")
    model.load_state_dict(mmdet_to_glimpse(ckpt.state_dict, model, caffe_style=style == "caffe",
                                           path=ckpt.path, model_name=name))
    if style == "caffe":
        model.preprocessor.mean, model.preprocessor.std = CAFFE_MEAN_RGB, CAFFE_STD
    return ckpt
