"""roi_align: a hand-computed example, the reference and the compiled kernels against
torchvision's op (the kernels to the bit, forward and backward), gradients, errors."""

from __future__ import annotations

import pytest
import torch
from torchvision.ops import roi_align as tv_roi_align

from glimpse.ops import kernel_status, roi_align, roi_align_ref

needs_kernel = pytest.mark.skipif(
    "cpu" not in kernel_status()["ops"]["roi_align"] or kernel_status()["disabled_by_env"],
    reason="glimpse_kernels built without glimpse::roi_align (make setup rebuilds it)")

# (aligned, sampling_ratio, output size)
SETTINGS = [(True, 0, (7, 7)), (False, 2, (7, 7)), (True, 2, (3, 5)), (False, 0, (14, 14))]


def _rois(num: int, size: tuple[int, int], scale: float, g: torch.Generator,
          dtype=torch.float32) -> torch.Tensor:
    """Random boxes of every scale, some crossing or outside the border, plus degenerate ones."""
    h, w = size[0] / scale, size[1] / scale
    xy = torch.rand(num, 2, generator=g) * torch.tensor([w * 1.2, h * 1.2]) - 0.1 * w
    wh = torch.rand(num, 2, generator=g) * torch.tensor([w, h]) * 0.8
    boxes = torch.cat((xy, xy + wh), 1)
    boxes[0] = torch.tensor([3.0, 3.0, 3.0, 3.0])  # empty
    boxes[1] = torch.tensor([-50.0, -50.0, -20.0, -30.0])  # outside
    index = torch.randint(0, 2, (num, 1), generator=g).float()
    return torch.cat((index, boxes), 1).to(dtype)


def test_hand_computed_ramp():
    """Bilinear sampling of a linear ramp is exact: each bin is the mean of its sample x's."""
    feat = torch.arange(6.0).expand(1, 1, 4, 6).contiguous()  # value = x
    # aligned shifts by -0.5: x in [0, 4), two bins of width 2, 2 samples each at x 0.5, 1.5 and
    # 2.5, 3.5 -> means 1 and 3
    rois = torch.tensor([[0.0, 0.5, 0.5, 4.5, 2.5]])
    for fn in (roi_align_ref, roi_align):
        out = fn(feat, rois, (1, 2), 1.0, 2, True)
        torch.testing.assert_close(out, torch.tensor([[[[1.0, 3.0]]]]))


@pytest.mark.parametrize("aligned,sampling_ratio,size", SETTINGS)
def test_reference_matches_torchvision(aligned, sampling_ratio, size):
    g = torch.Generator().manual_seed(1)
    feat = torch.randn(2, 3, 9, 11, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(12, (9, 11), 0.25, g, torch.float64)
    ours = roi_align_ref(feat, rois, size, 0.25, sampling_ratio, aligned)
    theirs = tv_roi_align(feat, rois, size, 0.25, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs)
    grad = torch.randn(theirs.shape, generator=g, dtype=torch.float64)
    (g_ours,) = torch.autograd.grad(ours, feat, grad)
    (g_theirs,) = torch.autograd.grad(theirs, feat, grad)
    torch.testing.assert_close(g_ours, g_theirs)


@needs_kernel
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("aligned,sampling_ratio,size", SETTINGS)
def test_kernel_equals_torchvision_to_the_bit(aligned, sampling_ratio, size, dtype):
    g = torch.Generator().manual_seed(2)
    feat = torch.randn(2, 16, 20, 24, generator=g).to(dtype).requires_grad_()
    rois = _rois(40, (20, 24), 0.125, g, dtype)
    ours = roi_align(feat, rois, size, 0.125, sampling_ratio, aligned)
    theirs = tv_roi_align(feat, rois, size, 0.125, sampling_ratio, aligned)
    assert torch.equal(ours, theirs)
    grad = torch.randn(theirs.shape, generator=g).to(dtype)
    (g_ours,) = torch.autograd.grad(ours, feat, grad)
    (g_theirs,) = torch.autograd.grad(theirs, feat, grad)
    assert torch.equal(g_ours, g_theirs)


@needs_kernel
def test_kernel_threads_agree():
    g = torch.Generator().manual_seed(3)
    feat = torch.randn(2, 40, 16, 16, generator=g, requires_grad=True)
    rois = _rois(30, (16, 16), 0.25, g)
    grads = []
    for threads in (1, 2):
        torch.set_num_threads(threads)
        out = roi_align(feat, rois, 7, 0.25, 0, True)
        grads.append(torch.autograd.grad(out.square().sum(), feat)[0])
    torch.set_num_threads(1)
    assert torch.equal(grads[0], grads[1])


@needs_kernel
def test_gradcheck_and_double_backward():
    g = torch.Generator().manual_seed(4)
    feat = torch.randn(2, 2, 6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    rois = _rois(5, (6, 7), 0.5, g, torch.float64)

    def fn(x):
        return torch.ops.glimpse.roi_align(x, rois, 0.5, 3, 2, 0, True)

    assert torch.autograd.gradcheck(fn, (feat,))
    assert torch.autograd.gradgradcheck(fn, (feat,))


@needs_kernel
def test_opcheck():
    g = torch.Generator().manual_seed(5)
    feat = torch.randn(2, 3, 8, 8, generator=g, requires_grad=True)
    rois = _rois(6, (8, 8), 0.5, g)
    torch.library.opcheck(torch.ops.glimpse.roi_align.default, (feat, rois, 0.5, 7, 7, 0, True))
    grad = torch.randn(6, 3, 7, 7, generator=g)
    torch.library.opcheck(torch.ops.glimpse.roi_align_backward.default,
                          (grad, rois, 0.5, 7, 7, 2, 3, 8, 8, 0, True))


@pytest.mark.parametrize("fn", [roi_align, roi_align_ref])
def test_no_rois(fn):
    feat = torch.randn(1, 4, 5, 5, requires_grad=True)
    out = fn(feat, torch.zeros(0, 5), 7, 1.0, 0, True)
    assert out.shape == (0, 4, 7, 7)
    out.sum().backward()
    assert torch.count_nonzero(feat.grad) == 0


@pytest.mark.parametrize("fn", [roi_align, roi_align_ref])
def test_bad_input(fn):
    with pytest.raises(ValueError, match="rois must be"):
        fn(torch.randn(1, 2, 4, 4), torch.zeros(3, 4), 7)
    with pytest.raises(ValueError, match="input must be 4-D"):
        fn(torch.randn(2, 4, 4), torch.zeros(3, 5), 7)
    with pytest.raises(ValueError, match="output_size"):
        fn(torch.randn(1, 2, 4, 4), torch.zeros(3, 5), 0)
