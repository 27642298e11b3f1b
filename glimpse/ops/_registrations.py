"""Fake kernels, autograd formulas and FLOP formulas of the compiled glimpse::* operators.

Imported by ``glimpse.ops._ext`` only after ``glimpse_kernels`` loaded (the schemas come from its
TORCH_LIBRARY block). Fake kernels give torch.compile output shapes without running anything;
the outputs of the real kernels are always contiguous, and so are these.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import register_flop_formula

__all__: list[str] = []

# ----------------------------------------------------------------------------- carafe


@torch.library.register_fake("glimpse::carafe")
def _carafe_fake(features, masks, kernel_size, group_size, scale_factor):
    n, c, h, w = features.shape
    return features.new_empty((n, c, h * scale_factor, w * scale_factor))


@torch.library.register_fake("glimpse::carafe_backward")
def _carafe_backward_fake(grad_output, features, masks, kernel_size, group_size, scale_factor):
    return features.new_empty(features.shape), masks.new_empty(masks.shape)


def _carafe_setup_context(ctx, inputs, output):
    features, masks, kernel_size, group_size, scale_factor = inputs
    ctx.save_for_backward(features, masks)
    ctx.params = (kernel_size, group_size, scale_factor)


def _carafe_backward(ctx, grad_output):
    features, masks = ctx.saved_tensors
    grad_features, grad_masks = torch.ops.glimpse.carafe_backward(
        grad_output, features, masks, *ctx.params
    )
    return grad_features, grad_masks, None, None, None


torch.library.register_autograd(
    "glimpse::carafe", _carafe_backward, setup_context=_carafe_setup_context
)


def _carafe_backward_setup_context(ctx, inputs, output):
    grad_output, features, masks, kernel_size, group_size, scale_factor = inputs
    ctx.save_for_backward(grad_output, features, masks)
    ctx.params = (kernel_size, group_size, scale_factor)


def _carafe_double_backward(ctx, grad_grad_features, grad_grad_masks):
    # carafe_backward is bilinear: grad_features = Bf(grad_output, masks) and
    # grad_masks = Bm(grad_output, features), where <v, Bf(g, m)> = <carafe(v, m), g> and
    # <v, Bm(g, f)> = <carafe(f, v), g>. So every vector-Jacobian product is a carafe or a
    # carafe_backward call.
    grad_output, features, masks = ctx.saved_tensors
    params = ctx.params
    d_grad = d_features = d_masks = None
    if grad_grad_features is not None:
        d_grad = torch.ops.glimpse.carafe(grad_grad_features, masks, *params)
        d_masks = torch.ops.glimpse.carafe_backward(grad_output, grad_grad_features, masks,
                                                     *params)[1]
    if grad_grad_masks is not None:
        term = torch.ops.glimpse.carafe(features, grad_grad_masks, *params)
        d_grad = term if d_grad is None else d_grad + term
        d_features = torch.ops.glimpse.carafe_backward(grad_output, features, grad_grad_masks,
                                                        *params)[0]
    return d_grad, d_features, d_masks, None, None, None


torch.library.register_autograd(
    "glimpse::carafe_backward", _carafe_double_backward,
    setup_context=_carafe_backward_setup_context,
)


@register_flop_formula(torch.ops.glimpse.carafe)
def _carafe_flop(features_shape, masks_shape, kernel_size, group_size, scale_factor, *args,
                 out_shape=None, **kwargs) -> int:
    # One multiply-add per tap and output element (CARAFE §3.3; 2 FLOPs per multiply-add).
    n, c, h, w = features_shape
    return 2 * n * c * h * w * scale_factor**2 * kernel_size**2


@register_flop_formula(torch.ops.glimpse.carafe_backward)
def _carafe_backward_flop(grad_shape, features_shape, masks_shape, kernel_size, group_size,
                          scale_factor, *args, out_shape=None, **kwargs) -> int:
    # Feature gradient and mask gradient each cost as much as the forward.
    return 2 * _carafe_flop(features_shape, masks_shape, kernel_size, group_size, scale_factor)


# ----------------------------------------------------------------------------- masked_conv2d


@torch.library.register_fake("glimpse::masked_conv2d")
def _masked_conv2d_fake(features, mask, weight, bias, padding):
    n, _, h, w = features.shape
    ho = h + 2 * padding[0] - weight.shape[2] + 1
    wo = w + 2 * padding[1] - weight.shape[3] + 1
    return features.new_empty((n, weight.shape[0], ho, wo))


def _masked_conv2d_setup_context(ctx, inputs, output):
    features, mask, weight, bias, padding = inputs
    ctx.save_for_backward(features, mask, weight)
    ctx.padding = tuple(padding)
    ctx.has_bias = bias is not None


def _masked_conv2d_backward(ctx, grad_output):
    # The op equals conv2d(features) with unmasked outputs zeroed, so its gradient is conv2d's
    # gradient of the masked grad_output.
    features, mask, weight = ctx.saved_tensors
    keep = (mask > 0).unsqueeze(1)
    grad = grad_output.masked_fill(~keep, 0)
    grad_features = grad_weight = grad_bias = None
    if ctx.needs_input_grad[0]:
        grad_features = torch.nn.grad.conv2d_input(features.shape, weight, grad,
                                                   padding=ctx.padding)
    if ctx.needs_input_grad[2]:
        grad_weight = torch.nn.grad.conv2d_weight(features, weight.shape, grad,
                                                  padding=ctx.padding)
    if ctx.has_bias and ctx.needs_input_grad[3]:
        grad_bias = grad.sum((0, 2, 3))
    return grad_features, None, grad_weight, grad_bias, None


torch.library.register_autograd(
    "glimpse::masked_conv2d", _masked_conv2d_backward,
    setup_context=_masked_conv2d_setup_context,
)


@register_flop_formula(torch.ops.glimpse.masked_conv2d)
def _masked_conv2d_flop(features_shape, mask_shape, weight_shape, bias_shape, padding, *args,
                        out_shape=None, **kwargs) -> int:
    # Shapes cannot tell how many pixels are masked in, so this counts the dense convolution: an
    # upper bound, and the exact cost of the plain conv2d the op replaces.
    co, c, kh, kw = weight_shape
    n, _, ho, wo = out_shape
    return 2 * n * co * ho * wo * c * kh * kw


# ----------------------------------------------------------------------------- roi_align


@torch.library.register_fake("glimpse::roi_align")
def _roi_align_fake(input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio,
                    aligned):
    return input.new_empty((rois.shape[0], input.shape[1], pooled_height, pooled_width))


@torch.library.register_fake("glimpse::roi_align_backward")
def _roi_align_backward_fake(grad, rois, spatial_scale, pooled_height, pooled_width, batch_size,
                             channels, height, width, sampling_ratio, aligned):
    return grad.new_empty((batch_size, channels, height, width))


def _roi_align_setup_context(ctx, inputs, output):
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = inputs
    ctx.save_for_backward(rois)
    ctx.input_shape = tuple(input.shape)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_backward(ctx, grad_output):
    (rois,) = ctx.saved_tensors
    spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned = ctx.params
    grad_input = torch.ops.glimpse.roi_align_backward(
        grad_output, rois, spatial_scale, pooled_height, pooled_width, *ctx.input_shape,
        sampling_ratio, aligned)
    # RoIAlign is not differentiable in the box coordinates (torchvision neither)
    return grad_input, None, None, None, None, None, None


torch.library.register_autograd(
    "glimpse::roi_align", _roi_align_backward, setup_context=_roi_align_setup_context
)


def _roi_align_backward_setup_context(ctx, inputs, output):
    grad, rois, spatial_scale, pooled_height, pooled_width = inputs[:5]
    sampling_ratio, aligned = inputs[9:]
    ctx.save_for_backward(rois)
    ctx.params = (spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned)


def _roi_align_double_backward(ctx, grad_grad_input):
    # roi_align_backward is the transpose of the linear map roi_align, so its own
    # vector-Jacobian product is roi_align again.
    (rois,) = ctx.saved_tensors
    d_grad = torch.ops.glimpse.roi_align(grad_grad_input, rois, *ctx.params)
    return (d_grad,) + (None,) * 10


torch.library.register_autograd(
    "glimpse::roi_align_backward", _roi_align_double_backward,
    setup_context=_roi_align_backward_setup_context,
)
