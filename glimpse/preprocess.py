"""Image geometry shared by data and models: keep-ratio resize, normalisation, padding to a size
divisor, batching (mmdetection's test/train pipeline inside the model), and the inverse mapping
of predictions back to original pixels.

Models (detectors, segmentors) take images at their original resolution
(``list[Tensor[3, H, W]]`` in [0, 1]) and return boxes, masks and maps in those pixels, so the
dataset, the evaluator and the notebooks never see the network's input scale. A neutral module:
data and models both import it, it imports neither.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from glimpse.structures import Detection, Target

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "rescale_size",
    "resize_image",
    "resize_image_mmcv",
    "resize_target",
    "normalize",
    "pad_batch",
    "pad_semantic_maps",
    "ImageBatch",
    "DetectionPreprocessor",
    "paste_masks",
]

# mmdetection's pytorch-style normalisation, in 0..255 units (to_rgb=True).
IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def rescale_size(size: tuple[int, int], scale: tuple[int, int]) -> tuple[tuple[int, int], float]:
    """Keep-ratio target size, as mmcv's ``rescale_size``.

    Args:
        size: (height, width) of the input image.
        scale: (long edge, short edge) bound, e.g. (1333, 800).

    Returns:
        ((new_height, new_width), factor): the largest size that fits both bounds.
    """
    h, w = size
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return (int(h * factor + 0.5), int(w * factor + 0.5)), factor


def resize_image(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize of [C, H, W] (or [B, C, H, W]) to ``size = (height, width)``."""
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    batched = image.dim() == 4
    out = F.interpolate(image if batched else image[None], size=size, mode="bilinear",
                        align_corners=False)
    return out if batched else out[0]


def _cv2_linear_taps(src: int, dst: int, clamp: bool) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Source indices and 11-bit fixed-point weights of OpenCV's INTER_LINEAR along one axis.

    Positions and fractions are float32 and weights ``round(w * 2048)``, as OpenCV computes
    them. OpenCV clamps the fraction to 0 at the x borders only; rows just clip the index.
    """
    pos = ((torch.arange(dst, dtype=torch.float64) + 0.5) * (1.0 / (dst / src)) - 0.5).float()
    first = torch.floor(pos)
    frac = pos - first
    first = first.long()
    if clamp:
        outside = (first < 0) | (first >= src - 1)
        frac = torch.where(outside, torch.zeros_like(frac), frac)
        first = torch.where(first < 0, torch.zeros_like(first), first)
    w0 = torch.round((1.0 - frac) * 2048).long()
    w1 = torch.round(frac * 2048).long()
    return first.clamp(0, src - 1), (first + 1).clamp(0, src - 1), w0, w1


def resize_image_mmcv(image: Tensor, size: tuple[int, int]) -> Tensor:
    """Bilinear resize bit-exact with mmdetection's test pipeline (mmcv ``imrescale``: OpenCV
    ``INTER_LINEAR`` on uint8), without OpenCV.

    OpenCV's uint8 path weights pixels with 11-bit fixed-point coefficients and rounds the
    vertical pass in two truncating steps (its SIMD kernel, what x86/ARM builds run), so it
    differs from float bilinear by up to one grey level (mean 0.27 at 1333x800).

    Args:
        image: [C, H, W] float in [0, 1] holding uint8 values / 255 (as decoded images are).
        size: (height, width) of the output.

    Returns:
        [C, height, width] float, uint8 values / 255.
    """
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    pixels = torch.round(image * 255).long()
    x0, x1, wx0, wx1 = (t.to(image.device) for t in _cv2_linear_taps(
        image.shape[-1], size[1], clamp=True))
    y0, y1, wy0, wy1 = (t.to(image.device) for t in _cv2_linear_taps(
        image.shape[-2], size[0], clamp=False))
    rows = pixels[..., x0] * wx0 + pixels[..., x1] * wx1  # [C, H, width], x2048
    top, bottom = rows[..., y0, :], rows[..., y1, :]
    out = (((top >> 4) * wy0[:, None] >> 16) + ((bottom >> 4) * wy1[:, None] >> 16) + 2) >> 2
    return out.clamp(0, 255).to(image.dtype) / 255.0


def resize_target(target: Target, old_size: tuple[int, int], new_size: tuple[int, int]) -> Target:
    """Rescale boxes (per-axis factors), masks and semantic maps (nearest) to ``new_size``."""
    sy, sx = new_size[0] / old_size[0], new_size[1] / old_size[1]
    out: Target = dict(target)  # type: ignore[assignment]
    scale = torch.tensor([sx, sy, sx, sy])
    for key in ("boxes", "boxes_ignore", "proposals"):
        if key in out:
            out[key] = out[key] * scale.to(out[key])
    if "masks" in out:
        masks = out["masks"]
        out["masks"] = (F.interpolate(masks[None].float(), size=new_size, mode="nearest")[0]
                        .to(masks.dtype) if masks.numel() else masks.new_zeros(
                            (masks.shape[0], *new_size)))
    if "sem_seg" in out:
        seg = out["sem_seg"]
        out["sem_seg"] = F.interpolate(seg[None, None].float(), size=new_size,
                                       mode="nearest")[0, 0].to(seg.dtype)
    return out


def normalize(image: Tensor, mean: Sequence[float] = IMAGENET_MEAN,
              std: Sequence[float] = IMAGENET_STD) -> Tensor:
    """[B or none, 3, H, W] image in [0, 1] -> (255 * image - mean) / std."""
    shape = (-1, 1, 1)
    m = torch.as_tensor(mean, dtype=image.dtype, device=image.device).view(shape)
    s = torch.as_tensor(std, dtype=image.dtype, device=image.device).view(shape)
    return (image * 255.0 - m) / s


def pad_batch(images: Sequence[Tensor], size_divisor: int = 32,
              pad_value: float = 0.0) -> tuple[Tensor, list[tuple[int, int]]]:
    """Stack [C, H_i, W_i] images into [B, C, H, W], padding bottom/right to ``size_divisor``.

    Returns:
        (batch, sizes): the padded batch and each image's (height, width) before padding.
    """
    if len(images) == 0:
        raise ValueError("pad_batch needs at least one image")
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    h = max(s[0] for s in sizes)
    w = max(s[1] for s in sizes)
    h = (h + size_divisor - 1) // size_divisor * size_divisor
    w = (w + size_divisor - 1) // size_divisor * size_divisor
    batch = images[0].new_full((len(images), images[0].shape[0], h, w), pad_value)
    for i, im in enumerate(images):
        batch[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return batch, sizes


def pad_semantic_maps(targets: Sequence[Target], size: tuple[int, int],
                      ignore_index: int = 255) -> Tensor:
    """Stack the targets' ``sem_seg`` maps into CPU int64 [B, H, W], padding bottom/right with
    ``ignore_index`` to ``size`` (the padded batch's (height, width)).

    mmdet pads each map to its image's pad shape with 255 but pads a batch with 0 (a class)
    when collating; glimpse pads both with the ignore value.
    """
    out = torch.full((len(targets), *size), ignore_index, dtype=torch.long)
    for i, t in enumerate(targets):
        seg = t.get("sem_seg")
        if seg is None:
            raise ValueError(f"target {i} (image_id {t.get('image_id', '?')}): a semantic head "
                             "needs 'sem_seg' maps (COCO: stuffthingmaps beside the images)")
        if seg.shape[0] > size[0] or seg.shape[1] > size[1]:
            raise ValueError(f"target {i}: sem_seg {tuple(seg.shape)} exceeds the batch {size}")
        out[i, : seg.shape[0], : seg.shape[1]] = seg.to(device="cpu", dtype=torch.long)
    return out


@dataclass
class ImageBatch:
    """A padded, normalised batch and the geometry needed to undo it.

    Attributes:
        tensor: [B, 3, H, W] normalised images, zero-padded bottom/right.
        image_sizes: (height, width) of each resized image before padding (mmdet ``img_shape``).
        pad_sizes: (height, width) of each resized image padded alone to the size divisor
            (mmdet ``pad_shape``; anchors beyond it are invalid).
        original_sizes: (height, width) of each input image.
        targets: the targets mapped to the resized frame (train mode), else None.
        proposals: [P_i, 4] xyxy proposals in the resized frame (Fast R-CNN), else None.
    """

    tensor: Tensor
    image_sizes: list[tuple[int, int]]
    pad_sizes: list[tuple[int, int]]
    original_sizes: list[tuple[int, int]]
    targets: list[Target] | None = None
    proposals: list[Tensor] | None = None

    def scale_factors(self, index: int) -> tuple[float, float]:
        """(x, y) factors from original to resized pixels of image ``index``."""
        (h, w), (oh, ow) = self.image_sizes[index], self.original_sizes[index]
        return w / ow, h / oh


_RESIZERS = {"torch": resize_image, "mmcv": resize_image_mmcv}


class DetectionPreprocessor(nn.Module):
    """Keep-ratio resize, pytorch-style normalisation and padding, as mmdetection's pipeline.

    Args:
        image_scale: (long edge, short edge) bound of the resize (1333x800 in the papers).
        size_divisor: pad height and width to a multiple of this (32; 64 with CARAFE's FPN).
        mean: per-channel mean in 0..255 units (RGB, mmdet's pytorch style).
        std: per-channel std in 0..255 units.
        resize: ``"torch"`` (float bilinear, glimpse's default) or ``"mmcv"`` (bit-exact with
            mmdetection's uint8 OpenCV resize, :func:`resize_image_mmcv`; for comparing with
            mmdetection at the test scale).
    """

    def __init__(
        self,
        image_scale: tuple[int, int] = (1333, 800),
        size_divisor: int = 32,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        resize: str = "torch",
    ) -> None:
        super().__init__()
        if resize not in _RESIZERS:
            raise ValueError(f"resize must be one of {sorted(_RESIZERS)}, got {resize!r}")
        self.resize = resize
        if len(image_scale) != 2 or min(image_scale) <= 0:
            raise ValueError(f"image_scale must be two positive ints, got {image_scale}")
        if size_divisor <= 0:
            raise ValueError(f"size_divisor must be positive, got {size_divisor}")
        self.image_scale = (int(image_scale[0]), int(image_scale[1]))
        self.size_divisor = int(size_divisor)
        self.mean = tuple(float(m) for m in mean)
        self.std = tuple(float(s) for s in std)

    def forward(
        self,
        images: Sequence[Tensor],
        targets: Sequence[Target] | None = None,
        proposals: Sequence[Tensor] | None = None,
    ) -> ImageBatch:
        """Resize, normalise and pad ``images``; map ``targets`` / ``proposals`` alongside.

        Args:
            images: ``B`` tensors [3, H_i, W_i], float in [0, 1], original resolution.
            targets: optional per-image targets in original pixels.
            proposals: optional per-image [P_i, >=4] xyxy proposals in original pixels (extra
                columns such as scores are dropped).

        Returns:
            :class:`ImageBatch`.
        """
        self._check_inputs(images, targets, proposals)
        resized, image_sizes, originals, new_targets, new_props = [], [], [], [], []
        for i, image in enumerate(images):
            size = (int(image.shape[-2]), int(image.shape[-1]))
            new_size, _ = rescale_size(size, self.image_scale)
            resized.append(normalize(_RESIZERS[self.resize](image, new_size), self.mean,
                                     self.std))
            originals.append(size)
            image_sizes.append(new_size)
            if targets is not None:
                target = targets[i]
                if "proposals" in target:  # drop score columns before scaling
                    target = {**target, "proposals": target["proposals"][:, :4]}
                new_targets.append(resize_target(target, size, new_size))
            if proposals is not None:
                box = proposals[i][:, :4].to(image)
                scale = box.new_tensor([new_size[1] / size[1], new_size[0] / size[0]] * 2)
                new_props.append(box * scale)
        tensor, _ = pad_batch(resized, self.size_divisor)
        d = self.size_divisor
        pad_sizes = [((h + d - 1) // d * d, (w + d - 1) // d * d) for h, w in image_sizes]
        if targets is not None and all("proposals" in t for t in new_targets) and not new_props:
            new_props = [t["proposals"] for t in new_targets]
        return ImageBatch(tensor, image_sizes, pad_sizes, originals,
                          new_targets if targets is not None else None, new_props or None)

    @staticmethod
    def _check_inputs(images, targets, proposals) -> None:
        if len(images) == 0:
            raise ValueError("detector got an empty list of images")
        for i, image in enumerate(images):
            if not isinstance(image, Tensor) or image.dim() != 3 or image.shape[0] != 3:
                shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
                raise ValueError(f"image {i}: expected a [3, H, W] tensor, got {shape}")
            if not image.is_floating_point():
                raise ValueError(f"image {i}: expected float values in [0, 1], got {image.dtype}")
            if image.shape[1] == 0 or image.shape[2] == 0:
                raise ValueError(f"image {i}: empty image of shape {tuple(image.shape)}")
        for name, seq in (("targets", targets), ("proposals", proposals)):
            if seq is not None and len(seq) != len(images):
                raise ValueError(f"got {len(images)} images but {len(seq)} {name}")
        for i, t in enumerate(targets or ()):
            boxes = t.get("boxes")
            labels = t.get("labels")
            tag = f"target {i} (image_id {t.get('image_id', '?')})"
            if boxes is None or labels is None:
                raise ValueError(f"{tag}: needs 'boxes' and 'labels'")
            if boxes.dim() != 2 or boxes.shape[-1] != 4 or labels.shape != boxes.shape[:1]:
                raise ValueError(f"{tag}: boxes {tuple(boxes.shape)} / labels "
                                 f"{tuple(labels.shape)} do not match [N, 4] / [N]")
            if labels.numel() and int(labels.min()) < 1:
                raise ValueError(f"{tag}: labels must be 1..K (0 is background)")
            if not torch.isfinite(boxes).all():
                raise ValueError(f"{tag}: non-finite box coordinates")
            seg = t.get("sem_seg")
            if seg is not None and tuple(seg.shape) != tuple(images[i].shape[1:]):
                raise ValueError(f"{tag}: sem_seg of shape {tuple(seg.shape)} does not match "
                                 f"the {images[i].shape[1]}x{images[i].shape[2]} image")

    def postprocess(self, detections: Sequence[dict[str, Tensor]], batch: ImageBatch,
                    mask_threshold: float = 0.5) -> list[Detection]:
        """Map detections from the resized frame back to original pixels.

        Args:
            detections: per-image dicts with ``boxes`` [D, 4] (resized frame), ``scores``,
                ``labels`` and optionally ``mask_probs`` [D, M, M] (probabilities inside each
                box).
            batch: the batch the detections were computed on.
            mask_threshold: binarisation threshold of pasted masks (0.5, mmdet ``>=``).

        Returns:
            One :class:`~glimpse.structures.Detection` per image; ``masks`` are uint8
            [D, H, W] at the original resolution when ``mask_probs`` was given.
        """
        out: list[Detection] = []
        for i, det in enumerate(detections):
            sx, sy = batch.scale_factors(i)
            oh, ow = batch.original_sizes[i]
            boxes = det["boxes"] / det["boxes"].new_tensor([sx, sy, sx, sy])
            boxes = torch.stack((boxes[:, 0].clamp(0, ow), boxes[:, 1].clamp(0, oh),
                                 boxes[:, 2].clamp(0, ow), boxes[:, 3].clamp(0, oh)), dim=1)
            result: Detection = {"boxes": boxes, "labels": det["labels"], "scores": det["scores"]}
            if "mask_probs" in det:
                result["masks"] = paste_masks(det["mask_probs"], boxes, (oh, ow), mask_threshold)
            out.append(result)
        return out


def paste_masks(mask_probs: Tensor, boxes: Tensor, image_size: tuple[int, int],
                threshold: float = 0.5) -> Tensor:
    """Paste per-box mask probabilities into full images (mmdet v2 ``_do_paste_mask``).

    Each [M, M] mask is stretched over its box: the image pixel whose centre is ``(x + 0.5,
    y + 0.5)`` reads the mask bilinearly at ``((x + 0.5 - x1) / (x2 - x1)) * M`` (grid_sample,
    align_corners=False, zero outside), then ``>= threshold``. Only the box's neighbourhood is
    sampled, so memory stays O(box area) per mask.

    Args:
        mask_probs: [D, M, M] probabilities.
        boxes: [D, 4] xyxy boxes in the target image's pixels.
        image_size: (height, width) of the target image.
        threshold: binarisation threshold.

    Returns:
        uint8 [D, height, width] binary masks.
    """
    h, w = image_size
    out = torch.zeros((boxes.shape[0], h, w), dtype=torch.uint8, device=boxes.device)
    for i in range(boxes.shape[0]):
        x1, y1, x2, y2 = (float(v) for v in boxes[i])
        # pixel range touched by the box, one pixel of margin for bilinear spill
        c0, r0 = max(int(x1) - 1, 0), max(int(y1) - 1, 0)
        c1, r1 = min(int(x2) + 2, w), min(int(y2) + 2, h)
        if c1 <= c0 or r1 <= r0 or x2 <= x1 or y2 <= y1:
            continue
        xs = (torch.arange(c0, c1, device=boxes.device, dtype=torch.float32) + 0.5 - x1)
        ys = (torch.arange(r0, r1, device=boxes.device, dtype=torch.float32) + 0.5 - y1)
        gx = xs / (x2 - x1) * 2 - 1
        gy = ys / (y2 - y1) * 2 - 1
        grid = torch.stack(torch.broadcast_tensors(gx[None, :], gy[:, None]), dim=-1)  # [h, w, 2]
        pasted = F.grid_sample(mask_probs[i][None, None].float(), grid[None],
                               align_corners=False)[0, 0]
        out[i, r0:r1, c0:c1] = (pasted >= threshold).to(torch.uint8)
    return out
