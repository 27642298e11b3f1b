"""``python -m glimpse bench ga``: GA-RPN against RPN inference time, same run.

The paper finds GA-RPN a little slower than RPN although it scores far fewer anchors (its
location-threshold table, 7.8-8.2 fps against RPN's; the feature adaption's deformable
convolution runs at every location). This times both proposal networks on one image, the same
backbone and FPN, random weights (no downloads), one image per forward, runs interleaved
(RPN, GA-RPN, GA-RPN, RPN, ...) and medians compared; only the same-run ratio counts.

What random weights would leave to chance is fixed:

* the regression layers (RPN's ``reg``, GA's ``conv_reg`` and ``conv_shape``) are zeroed, so
  proposals are the anchors (GA's: squares of 8x the stride);
* GA-RPN's location branch keeps a chosen fraction of the locations (``kept``, over all levels):
  the bias of its shared 1x1 location conv is shifted so that exactly the locations scoring
  above the ``1 - kept`` quantile of this image pass ``loc_filter_thr``. 29.4% is what the
  paper's trained GA-RPN keeps at ``loc_filter_thr = 0.01`` (22,274 of 75,583 locations, about
  10% of RPN's anchors), 100% its ``loc_filter_thr = 0`` row.

Both keep mmdet's test settings for an RPN alone: 2000 proposals per level before NMS (0.7),
1000 per image.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd
import torch
from torch import Tensor, nn

from glimpse.bench.detectors import BenchCase, _interleaved
from glimpse.bench.timing import torch_threads

__all__ = ["KEPT_FRACTIONS", "MODELS", "run", "set_kept_fraction"]

# (RPN, GA-RPN, input height, width): slim at the cpu profile's 256 px, R-50 at 800x1216
MODELS = {"slim": ("rpn_slim_fpn", "ga_rpn_slim_fpn", 256, 256),
          "r50": ("rpn_r50_fpn", "ga_rpn_r50_fpn", 800, 1216)}
KEPT_FRACTIONS = (0.294, 1.0)


@torch.no_grad()
def set_kept_fraction(model: nn.Module, image: Tensor, kept: float) -> float:
    """Shift the location bias of GA-RPN ``model`` so that it keeps the ``kept`` fraction of
    the locations of ``image`` (over all levels) at its ``loc_filter_thr``.

    Returns:
        the fraction kept afterwards (ties can keep a few more).
    """
    if not 0.0 < kept <= 1.0:
        raise ValueError(f"kept must lie in (0, 1], got {kept}")
    head = model.rpn_head
    was_training = model.training
    model.eval()
    try:
        logits = torch.cat([x.flatten() for x in head(model.features(
            model.preprocessor([image]).tensor)).loc_preds])
        thr = head.anchoring.loc_filter_thr
        if kept < 1.0:
            cut = torch.quantile(logits.double(), 1.0 - kept).item()
        else:  # every location: a margin below the lowest logit
            cut = logits.min().item() - 1.0
        head.conv_loc.bias += math.log(thr / (1.0 - thr)) - cut
        scores = torch.cat([x.flatten() for x in head(model.features(
            model.preprocessor([image]).tensor)).loc_preds]).sigmoid()
        return float((scores >= thr).float().mean())
    finally:
        model.train(was_training)


def _zero(model: nn.Module, names: Sequence[str]) -> nn.Module:
    with torch.no_grad():
        for name in names:
            for p in model.get_submodule(name).parameters():
                p.zero_()
    return model


def _inference(model: nn.Module, image: Tensor):
    def forward():
        with torch.inference_mode():
            return model([image])
    return forward


def run(backbones: Sequence[str] = ("slim", "r50"), kept: Sequence[float] = KEPT_FRACTIONS,
        repeats: int = 5, threads: int = 1, warmup: int = 1, quick: bool = False
        ) -> pd.DataFrame:
    """Time RPN and GA-RPN inference for every backbone of :data:`MODELS` and kept fraction.

    Args:
        backbones: keys of :data:`MODELS`.
        kept: fractions of locations GA-RPN keeps.
        repeats: timed runs per side (medians compared).
        threads: torch intra-op threads.
        warmup: untimed runs per side first.
        quick: R-50 at 384x576 instead of 800x1216.

    Returns:
        one row per (backbone, kept): ``rpn``, ``ga_rpn``, ``input``, ``kept`` (measured),
        ``rpn_s``, ``ga_rpn_s``, ``ratio`` (GA-RPN / RPN), ``rpn_proposals``,
        ``ga_rpn_proposals``.
    """
    from glimpse import zoo

    unknown = sorted(set(backbones) - set(MODELS))
    if unknown:
        raise ValueError(f"backbones: unknown {unknown}; choose from {sorted(MODELS)}")
    if repeats < 1 or threads < 1:
        raise ValueError(f"repeats and threads must be >= 1, got {repeats} and {threads}")
    rows = []
    with torch_threads(threads):
        for key in backbones:
            rpn_name, ga_name, h, w = MODELS[key]
            if quick and key == "r50":
                h, w = 384, 576
            image = torch.rand(3, h, w, generator=torch.Generator().manual_seed(0))
            scale = {"image_scale": (max(h, w), min(h, w))}
            torch.manual_seed(0)
            rpn = _zero(zoo.build(rpn_name, **scale), ["rpn_head.reg"]).eval()
            for fraction in kept:
                torch.manual_seed(0)
                ga = _zero(zoo.build(ga_name, **scale),
                           ["rpn_head.conv_reg", "rpn_head.conv_shape"]).eval()
                measured = set_kept_fraction(ga, image, fraction)
                # the timed pair: GA-RPN on the first side, RPN as the baseline
                case = BenchCase(key, "inference", _inference(ga, image), _inference(rpn, image),
                                 input=f"{h}x{w}")
                ga_s, rpn_s = _interleaved(case, repeats, warmup)
                rows.append({"backbone": key, "rpn": rpn_name, "ga_rpn": ga_name,
                             "input": f"{h}x{w}", "kept": measured, "rpn_s": rpn_s,
                             "ga_rpn_s": ga_s, "ratio": ga_s / rpn_s,
                             "rpn_proposals": len(case.torchvision_fn()[0]["boxes"]),
                             "ga_rpn_proposals": len(case.glimpse_fn()[0]["boxes"])})
                print(f"{key:5s} kept {measured:5.3f}  RPN {rpn_s:7.3f}s  GA-RPN {ga_s:7.3f}s  "
                      f"ratio {ga_s / rpn_s:5.2f}", flush=True)
    return pd.DataFrame(rows)
