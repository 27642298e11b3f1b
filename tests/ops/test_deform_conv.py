"""glimpse.ops.deform_conv2d against torchvision.ops.deform_conv2d (the reference) in float64:
outputs and the gradients of x, offsets and weight, with samples inside, across and beyond the
map borders, several offset groups, odd and degenerate sizes, and an empty batch."""

import pytest
import torch
from torchvision.ops import deform_conv2d as torchvision_deform_conv2d

from glimpse.ops import deform_conv2d, deform_conv2d_sampled

CASES = [  # B, C_in, C_out, H, W, k, padding, offset groups, offset scale (pixels)
    (2, 8, 6, 9, 11, 3, 1, 4, 2.0),
    (1, 4, 3, 7, 5, 3, 1, 1, 6.0),     # many samples beyond the border
    (3, 6, 5, 1, 1, 3, 1, 2, 0.7),     # a 1x1 map
    (1, 4, 2, 6, 8, 1, 0, 2, 1.5),     # 1x1 kernel
    (2, 3, 4, 8, 8, 5, 2, 1, 1.0),     # 5x5 kernel
    (1, 2, 2, 5, 6, 3, 0, 1, 0.0),     # no padding, zero offsets: an ordinary convolution
]


def _inputs(b, c_in, c_out, h, w, k, pad, groups, scale, seed=0):
    g = torch.Generator().manual_seed(seed)
    h_out, w_out = h + 2 * pad - k + 1, w + 2 * pad - k + 1
    x = torch.randn(b, c_in, h, w, generator=g, dtype=torch.float64)
    off = torch.randn(b, 2 * groups * k * k, h_out, w_out, generator=g, dtype=torch.float64)
    weight = torch.randn(c_out, c_in, k, k, generator=g, dtype=torch.float64)
    return x, off * scale, weight


@pytest.mark.parametrize("case", CASES)
def test_sampled_equals_torchvision(case):
    x, off, weight = _inputs(*case)
    pad = case[6]
    ins = [t.clone().requires_grad_() for t in (x, off, weight)]
    ref_ins = [t.clone().requires_grad_() for t in (x, off, weight)]
    out = deform_conv2d_sampled(*ins, padding=pad)
    ref = torchvision_deform_conv2d(*ref_ins, padding=pad)
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grad_out = torch.randn_like(ref)
    grads = torch.autograd.grad(out, ins, grad_out)
    ref_grads = torch.autograd.grad(ref, ref_ins, grad_out)
    for name, got, want in zip(("x", "offset", "weight"), grads, ref_grads):
        if name == "offset" and case[-1] == 0.0:
            # at integer sample points the offset gradient is one-sided, and which side depends
            # on rounding in the coordinate transform: not comparable there
            continue
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9, msg=f"grad of {name}")


def test_cpu_dispatch_uses_sampled_path_and_matches_in_float32():
    x, off, weight = (t.float() for t in _inputs(2, 8, 4, 10, 12, 3, 1, 4, 3.0, seed=1))
    torch.testing.assert_close(deform_conv2d(x, off, weight, padding=1),
                               torchvision_deform_conv2d(x, off, weight, padding=1),
                               rtol=1e-5, atol=1e-5)


def test_integer_offsets_shift_an_ordinary_convolution():
    # every tap moved by (+1, -2) pixels equals a convolution of the shifted, zero-filled map
    x, _, weight = _inputs(1, 3, 2, 8, 9, 3, 1, 1, 0.0, seed=2)
    off = torch.zeros(1, 18, 8, 9, dtype=torch.float64)
    off[:, 0::2], off[:, 1::2] = 1.0, -2.0
    # out[y, x] = sum_ij w[i, j] X[y + i, x + j - 3] with X zero outside the map
    margin = 4
    padded = torch.nn.functional.pad(x, (margin,) * 4)
    window = padded[..., margin:margin + 8 + 2, margin - 3:margin - 3 + 9 + 2]
    want = torch.nn.functional.conv2d(window, weight)
    torch.testing.assert_close(deform_conv2d_sampled(x, off, weight, padding=1), want)


def test_empty_batch_keeps_the_graph():
    x, off, weight = _inputs(0, 4, 2, 5, 5, 3, 1, 1, 1.0)
    weight.requires_grad_()
    out = deform_conv2d_sampled(x, off, weight, padding=1)
    assert out.shape == (0, 2, 5, 5)
    out.sum().backward()
    assert torch.count_nonzero(weight.grad) == 0


@pytest.mark.parametrize("bad, match", [
    ({"weight": torch.zeros(2, 5, 3, 3)}, "input channels"),
    ({"offset": torch.zeros(1, 17, 6, 6)}, "does not fit"),
    ({"offset": torch.zeros(1, 18, 5, 6)}, "does not fit"),
    ({"offset": torch.zeros(1, 54, 6, 6)}, "offset groups"),
])
def test_bad_shapes_are_named(bad, match):
    args = {"x": torch.zeros(1, 4, 6, 6), "offset": torch.zeros(1, 18, 6, 6),
            "weight": torch.zeros(2, 4, 3, 3), **bad}
    with pytest.raises(ValueError, match=match):
        deform_conv2d_sampled(args["x"], args["offset"], args["weight"], padding=1)
