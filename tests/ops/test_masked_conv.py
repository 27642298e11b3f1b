"""masked_conv2d: equals conv2d(x) * mask; compiled kernel vs reference; gradients; errors."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from glimpse.ops import masked_conv2d, masked_conv2d_ref


def ext_masked_conv2d(x, mask, weight, bias, padding):
    p = (padding, padding) if isinstance(padding, int) else padding
    return torch.ops.glimpse.masked_conv2d(x, mask, weight, bias, list(p))


IMPLS = [
    pytest.param(masked_conv2d_ref, id="ref"),
    pytest.param(masked_conv2d, id="public"),
    pytest.param(ext_masked_conv2d, id="ext", marks=pytest.mark.ext),
]

CASES = [
    # n, c, h, w, co, kh, kw, padding, keep probability
    (1, 3, 6, 7, 4, 3, 3, 1, 0.3),
    (2, 4, 5, 5, 2, 1, 1, 0, 0.5),
    (2, 2, 8, 6, 3, 3, 5, (1, 2), 0.2),
    (1, 5, 7, 9, 6, 3, 3, 0, 1.0),
    (3, 2, 4, 4, 2, 3, 3, 1, 0.0),  # all-zero mask
]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,c,h,w,co,kh,kw,padding,keep", CASES)
def test_equals_conv_times_mask(impl, n, c, h, w, co, kh, kw, padding, keep, dtype):
    x = torch.randn(n, c, h, w, dtype=dtype)
    weight = torch.randn(co, c, kh, kw, dtype=dtype)
    bias = torch.randn(co, dtype=dtype)
    dense = F.conv2d(x, weight, bias, padding=padding)
    mask = (torch.rand(n, *dense.shape[2:]) < keep).to(dtype)
    out = impl(x, mask, weight, bias, padding)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, dense * mask[:, None], **tol)
    if keep == 0.0:
        assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("impl", IMPLS)
def test_bool_mask_without_bias(impl):
    x = torch.randn(2, 3, 5, 6)
    weight = torch.randn(4, 3, 3, 3)
    mask = torch.rand(2, 5, 6) > 0.5
    expected = F.conv2d(x, weight, padding=1) * mask[:, None]
    torch.testing.assert_close(impl(x, mask, weight, None, 1), expected, atol=1e-5, rtol=1e-5)


def test_four_d_mask_is_accepted():
    x = torch.randn(1, 2, 4, 4)
    weight = torch.randn(3, 2, 3, 3)
    mask = torch.rand(1, 1, 4, 4) > 0.5
    torch.testing.assert_close(masked_conv2d(x, mask, weight, None, 1),
                               masked_conv2d_ref(x, mask[:, 0], weight, None, 1))


@pytest.mark.parametrize("impl", IMPLS)
def test_gradients_match_masked_dense_conv(impl):
    x = torch.randn(2, 3, 5, 4, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(2, dtype=torch.float64, requires_grad=True)
    mask = torch.rand(2, 5, 4) > 0.4
    assert torch.autograd.gradcheck(lambda a, b, c: impl(a, mask, b, c, 1), (x, weight, bias))


@pytest.mark.parametrize("impl", IMPLS)
def test_empty_inputs(impl):
    out = impl(torch.randn(0, 3, 5, 5), torch.ones(0, 5, 5), torch.randn(2, 3, 3, 3), None, 1)
    assert out.shape == (0, 2, 5, 5)
    out = impl(torch.randn(2, 3, 0, 5), torch.ones(2, 0, 5), torch.randn(2, 3, 1, 3), None, (0, 1))
    assert out.shape == (2, 2, 0, 5)


@pytest.mark.parametrize("fn", [masked_conv2d, masked_conv2d_ref])
def test_channels_last_and_non_contiguous(fn):
    x = torch.randn(2, 4, 6, 5)
    weight = torch.randn(3, 4, 3, 3)
    mask = torch.rand(2, 6, 5) > 0.5
    expected = fn(x, mask, weight, None, 1)
    got = fn(x.to(memory_format=torch.channels_last), mask.transpose(1, 2).contiguous().mT,
             weight.to(memory_format=torch.channels_last), None, 1)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize(
    "x_shape,mask_shape,w_shape,bias_shape,padding,match",
    [
        ((3, 5, 5), (1, 5, 5), (2, 3, 3, 3), None, 1, "4-D"),
        ((1, 3, 5, 5), (1, 5, 5), (2, 3, 3), None, 1, "4-D"),
        ((1, 3, 5, 5), (5, 5), (2, 3, 3, 3), None, 1, "mask must be"),
        ((1, 3, 5, 5), (1, 4, 4), (2, 3, 3, 3), None, 1, r"\(1, 5, 5\)"),
        ((1, 3, 5, 5), (1, 5, 5), (2, 4, 3, 3), None, 1, "input channels"),
        ((1, 3, 5, 5), (1, 5, 5), (2, 3, 3, 3), (3,), 1, "bias"),
        ((1, 3, 5, 5), (1, 5, 5), (2, 3, 3, 3), None, -1, "non-negative"),
        ((1, 3, 2, 2), (1, 0, 0), (2, 3, 5, 5), None, 0, "larger"),
    ],
)
def test_argument_errors(x_shape, mask_shape, w_shape, bias_shape, padding, match):
    bias = None if bias_shape is None else torch.randn(bias_shape)
    with pytest.raises(ValueError, match=match):
        masked_conv2d(torch.randn(x_shape), torch.ones(mask_shape), torch.randn(w_shape), bias,
                      padding)


def test_dtype_mismatch():
    with pytest.raises(ValueError, match="float64"):
        masked_conv2d(torch.randn(1, 2, 4, 4), torch.ones(1, 4, 4),
                      torch.randn(1, 2, 1, 1, dtype=torch.float64), None, 0)


@pytest.mark.ext
def test_opcheck():
    x = torch.randn(2, 3, 5, 4, requires_grad=True)
    weight = torch.randn(2, 3, 3, 3, requires_grad=True)
    bias = torch.randn(2, requires_grad=True)
    mask = torch.rand(2, 5, 4) > 0.5
    torch.library.opcheck(torch.ops.glimpse.masked_conv2d.default, (x, mask, weight, bias, [1, 1]))


@pytest.mark.ext
def test_flop_formula_counts_the_dense_convolution():
    x, weight = torch.randn(2, 3, 5, 4), torch.randn(6, 3, 3, 3)
    with FlopCounterMode(display=False) as counter:
        ext_masked_conv2d(x, torch.rand(2, 5, 4) > 0.5, weight, None, 1)
    assert counter.get_total_flops() == 2 * 2 * 6 * 5 * 4 * 3 * 3 * 3


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_cuda_matches_cpu(dtype):
    x = torch.randn(2, 8, 9, 7, dtype=torch.float64)
    weight = torch.randn(5, 8, 3, 3, dtype=torch.float64)
    bias = torch.randn(5, dtype=torch.float64)
    mask = torch.rand(2, 9, 7) > 0.6
    expected = masked_conv2d_ref(x, mask, weight, bias, 1)
    got = masked_conv2d(*(t.to("cuda", dtype) for t in (x,)), mask.cuda(),
                        weight.to("cuda", dtype), bias.to("cuda", dtype), 1)
    tol = {torch.float16: 5e-2, torch.bfloat16: 3e-1}.get(dtype, 1e-5)
    torch.testing.assert_close(got.double().cpu(), expected, atol=tol * 10, rtol=tol)


def test_dense_path_above_the_break_even(monkeypatch):
    """Above DENSE_ABOVE_DENSITY kept pixels (CPU) the dense conv + selection runs: same result
    and gradients; at or below it the kernel (when built) or the reference runs."""
    from glimpse.ops import masked_conv as module

    assert 0.0 < module.DENSE_ABOVE_DENSITY < 1.0
    calls = []
    reference = module.masked_conv2d_ref
    monkeypatch.setattr(module, "masked_conv2d_ref",
                        lambda *a, **k: calls.append(1) or reference(*a, **k))
    x = torch.randn(1, 3, 10, 10, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, 3, dtype=torch.float64, requires_grad=True)
    keep = math.floor(module.DENSE_ABOVE_DENSITY * 100)  # the most pixels still on the kernel
    for kept, dense in ((keep, False), (keep + 1, True)):
        calls.clear()
        mask = torch.zeros(100, dtype=torch.bool)
        mask[torch.randperm(100)[:kept]] = True
        mask = mask.view(1, 10, 10)
        out = module.masked_conv2d(x, mask, weight, None, 1)
        torch.testing.assert_close(out, F.conv2d(x, weight, padding=1) * mask[:, None])
        compiled = module._ext.available("masked_conv2d", "cpu", torch.float64)
        assert bool(calls) == (dense or not compiled)
        if dense:
            assert torch.autograd.gradcheck(
                lambda a, b: module.masked_conv2d(a, mask, b, None, 1), (x, weight))
