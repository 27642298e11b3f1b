"""CARAFE: reference vs mmcv's golden tensors and a naive loop; compiled kernels vs reference."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import glimpse.ops
from glimpse.ops import _ext, carafe, carafe_ref

REPO = Path(__file__).resolve().parents[2]


def ext_carafe(features, masks, k, g, s):
    return torch.ops.glimpse.carafe(features, masks, k, g, s)


IMPLS = [
    pytest.param(carafe_ref, id="ref"),
    pytest.param(ext_carafe, id="ext", marks=pytest.mark.ext),
]


def naive_carafe(features: torch.Tensor, masks: torch.Tensor, k: int, g: int, s: int):
    """Direct transcription of the CARAFE formula, one output pixel and tap at a time."""
    n, c, h, w = features.shape
    r, cg = (k - 1) // 2, c // g
    out = torch.zeros(n, c, h * s, w * s, dtype=features.dtype)
    for b in range(n):
        for yo in range(h * s):
            for xo in range(w * s):
                for ky in range(k):
                    for kx in range(k):
                        y, x = yo // s + ky - r, xo // s + kx - r
                        if not (0 <= y < h and 0 <= x < w):
                            continue  # out-of-range taps are skipped, not renormalised
                        for gi in range(g):
                            weight = masks[b, gi * k * k + ky * k + kx, yo, xo]
                            chans = slice(gi * cg, (gi + 1) * cg)
                            out[b, chans, yo, xo] += weight * features[b, chans, y, x]
    return out


def random_inputs(n, c, h, w, k, g, s, dtype=torch.float32, grad=False):
    features = torch.randn(n, c, h, w, dtype=dtype)
    masks = torch.randn(n, g * k * k, h * s, w * s, dtype=dtype).sigmoid()
    return features.requires_grad_(grad), masks.requires_grad_(grad)


# ----------------------------------------------------------------------------- golden tensors


@pytest.fixture
def golden(shared_data: Path) -> dict[str, torch.Tensor]:
    root = shared_data / "carafe-reference"
    shapes = {
        "feat": (2, 64, 3, 3),
        "mask": (2, 100, 6, 6),
        "output": (2, 64, 6, 6),
        "feat_grad": (2, 64, 3, 3),
        "mask_grad": (2, 100, 6, 6),
    }
    out = {}
    for name, shape in shapes.items():
        path = root / f"carafe_{name}.bin"
        if not path.is_file():
            pytest.skip(f"{path} not found")
        out[name] = torch.from_numpy(np.fromfile(path, dtype="<f4").reshape(shape))
    return out


@pytest.mark.data
@pytest.mark.parametrize("impl", IMPLS)
def test_matches_mmcv_golden_tensors(impl, golden):
    features = golden["feat"].clone().requires_grad_()
    masks = golden["mask"].clone().requires_grad_()
    out = impl(features, masks, 5, 4, 2)
    out.backward(torch.ones_like(out))
    # mmcv's own test uses atol=1e-3; the tensors agree to float32 rounding.
    torch.testing.assert_close(out.detach(), golden["output"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.grad, golden["feat_grad"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(masks.grad, golden["mask_grad"], atol=1e-5, rtol=1e-5)


# ----------------------------------------------------------------------------- reference


@pytest.mark.parametrize(
    "n,c,h,w,k,g,s",
    [(1, 2, 3, 4, 1, 1, 1), (2, 4, 3, 3, 3, 2, 2), (1, 4, 2, 5, 5, 4, 3), (1, 3, 4, 2, 7, 1, 2),
     (1, 2, 1, 1, 3, 1, 4)],
)
def test_reference_matches_naive_loop(n, c, h, w, k, g, s):
    features, masks = random_inputs(n, c, h, w, k, g, s, dtype=torch.float64)
    expected = naive_carafe(features, masks, k, g, s)
    torch.testing.assert_close(carafe_ref(features, masks, k, g, s), expected)


def test_uniform_kernel_is_box_filter_with_zero_border():
    # With every weight 1/k^2 and s = 1, CARAFE is a k x k mean filter with zero padding.
    features = torch.randn(1, 3, 6, 7, dtype=torch.float64)
    masks = torch.full((1, 9, 6, 7), 1 / 9, dtype=torch.float64)
    weight = torch.full((3, 1, 3, 3), 1 / 9, dtype=torch.float64)
    expected = torch.nn.functional.conv2d(features, weight, padding=1, groups=3)
    torch.testing.assert_close(carafe_ref(features, masks, 3, 1, 1), expected)


@pytest.mark.parametrize("impl", IMPLS)
def test_gradcheck(impl):
    # ~100 elements: gradcheck's cost grows with the square of the input size.
    features, masks = random_inputs(1, 4, 2, 3, 3, 2, 2, dtype=torch.float64, grad=True)
    assert torch.autograd.gradcheck(lambda f, m: impl(f, m, 3, 2, 2), (features, masks))


# ----------------------------------------------------------------------------- compiled kernels

SHAPES = [
    # n, c, h, w, k, g, s
    (2, 8, 5, 7, 1, 1, 1),
    (1, 6, 4, 3, 3, 1, 2),
    (2, 8, 3, 3, 5, 4, 2),  # every 5x5 window crosses the border
    (1, 4, 6, 5, 7, 2, 3),
    (1, 8, 2, 9, 3, 4, 4),
    (3, 2, 1, 1, 5, 1, 2),
    (1, 16, 9, 21, 5, 1, 2),  # several register blocks per row plus a tail
    (1, 4, 7, 40, 3, 2, 1),
    (1, 12, 5, 25, 5, 1, 2),  # forward: a two-vector block, a single vector and a tail per row
    (2, 9, 9, 8, 5, 3, 2),  # 3 channels per group: below the forward's channel block
    # backward: source rows in pairs, a single last row (H = 11: row blocks of 8, then 3 rows),
    # 8 channels per register block plus a 4-channel tail, rows ending in a partial vector
    (1, 12, 11, 13, 5, 1, 2),
    (2, 24, 17, 9, 5, 2, 2),  # two groups of 12 channels, one row in the last row block
    (1, 8, 10, 33, 5, 1, 2),  # one whole channel block; four vectors and a partial one per row
    (1, 10, 6, 6, 3, 1, 2),  # kernel 3: the mask gradient's generic path, row pairs of kernel 3
    (1, 8, 5, 6, 5, 1, 4),  # scale 4
]


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("n,c,h,w,k,g,s", SHAPES)
def test_ext_matches_reference(n, c, h, w, k, g, s, dtype):
    features, masks = random_inputs(n, c, h, w, k, g, s, dtype=dtype, grad=True)
    out = ext_carafe(features, masks, k, g, s)
    grad = torch.randn_like(out)
    gf, gm = torch.autograd.grad(out, (features, masks), grad)
    ref = carafe_ref(features, masks, k, g, s)
    rgf, rgm = torch.autograd.grad(ref, (features, masks), grad)
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {}
    torch.testing.assert_close(out, ref, **tol)
    torch.testing.assert_close(gf, rgf, **tol)
    torch.testing.assert_close(gm, rgm, **tol)


# The shapes the models run (kernel 5, scale 2), with fewer channels so that the reference fits:
# an FPN level with an odd width (its rows end in a partial vector) and the mask head's 14x14 RoI
# features at batch 512, each from channels-last inputs as a convolution may produce them.
MODEL_SHAPES = [(2, 20, 25, 19, 5, 1, 2), (512, 6, 14, 14, 5, 1, 2), (1, 16, 13, 16, 5, 2, 2)]


@pytest.mark.ext
@pytest.mark.parametrize("n,c,h,w,k,g,s", MODEL_SHAPES)
def test_ext_model_shapes_channels_last(n, c, h, w, k, g, s):
    features, masks = random_inputs(n, c, h, w, k, g, s)
    cl_f = features.to(memory_format=torch.channels_last).requires_grad_()
    cl_m = masks.to(memory_format=torch.channels_last).requires_grad_()
    out = ext_carafe(cl_f, cl_m, k, g, s)
    grad = torch.randn_like(out)
    gf, gm = torch.autograd.grad(out, (cl_f, cl_m), grad)
    f64 = features.double().requires_grad_()
    m64 = masks.double().requires_grad_()
    ref = carafe_ref(f64, m64, k, g, s)
    rgf, rgm = torch.autograd.grad(ref, (f64, m64), grad.double())
    for got, want in ((out, ref), (gf, rgf), (gm, rgm)):
        torch.testing.assert_close(got.double(), want, atol=1e-5, rtol=1e-5)


# bfloat16 / float16 on CPU: inputs in the dtype, float32 accumulation, one rounding at the end.
# Against the float64 reference on the same (already rounded) inputs, every output and gradient is
# then within half a unit in the last place, a relative 2**-9 (bfloat16) or 2**-12 (float16): the
# tolerance is twice that, plus an atol far above the float32 accumulation error. Accumulating in
# the reduced dtype instead would fail it.
REDUCED_TOL = {torch.bfloat16: {"rtol": 2**-8, "atol": 1e-5},
               torch.float16: {"rtol": 2**-11, "atol": 1e-5}}


@pytest.mark.ext
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,c,h,w,k,g,s", SHAPES)
def test_ext_reduced_precision_matches_float64_reference(n, c, h, w, k, g, s, dtype):
    features, masks = random_inputs(n, c, h, w, k, g, s, dtype=dtype, grad=True)
    out = ext_carafe(features, masks, k, g, s)
    grad = torch.randn_like(out)
    gf, gm = torch.autograd.grad(out, (features, masks), grad)
    assert out.dtype == gf.dtype == gm.dtype == dtype
    f64 = features.detach().double().requires_grad_()
    m64 = masks.detach().double().requires_grad_()
    ref = carafe_ref(f64, m64, k, g, s)
    rgf, rgm = torch.autograd.grad(ref, (f64, m64), grad.double())
    for got, want in ((out, ref), (gf, rgf), (gm, rgm)):
        torch.testing.assert_close(got.double(), want, **REDUCED_TOL[dtype])


@pytest.mark.parametrize("disable", ["0", "1"])
def test_autocast_bfloat16(monkeypatch, disable):
    # Under CPU autocast a convolution gives bfloat16 features and the softmax float32 masks.
    monkeypatch.setenv("GLIMPSE_DISABLE_EXT", disable)
    features = torch.randn(2, 8, 5, 6).bfloat16().requires_grad_()
    masks = torch.rand(2, 9, 10, 12, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = carafe(features, masks, 3, 1, 2)
    assert out.dtype == torch.bfloat16
    out.float().square().sum().backward()
    assert features.grad.dtype == torch.bfloat16 and masks.grad.dtype == torch.float32
    ref = carafe_ref(features.detach().double(), masks.detach().bfloat16().double(), 3, 1, 2)
    uses_ext = disable == "0" and _ext.available("carafe", "cpu", torch.bfloat16)
    # The reference's einsum rounds its partial products to bfloat16: looser.
    tol = REDUCED_TOL[torch.bfloat16] if uses_ext else {"rtol": 2**-5, "atol": 1e-2}
    torch.testing.assert_close(out.double(), ref, **tol)


@pytest.mark.ext
def test_ext_double_backward():
    features, masks = random_inputs(1, 2, 2, 2, 3, 1, 2, dtype=torch.float64, grad=True)
    assert torch.autograd.gradgradcheck(lambda f, m: ext_carafe(f, m, 3, 1, 2), (features, masks))


@pytest.mark.ext
def test_opcheck():
    features, masks = random_inputs(2, 4, 3, 4, 3, 2, 2, grad=True)
    torch.library.opcheck(torch.ops.glimpse.carafe.default, (features, masks, 3, 2, 2))
    grad = torch.randn(2, 4, 6, 8)
    torch.library.opcheck(torch.ops.glimpse.carafe_backward.default,
                          (grad, features.detach(), masks.detach(), 3, 2, 2))


@pytest.mark.ext
def test_ext_uses_threads_consistently():
    # Two threads split the work by rows; the result must not depend on the split.
    features, masks = random_inputs(2, 8, 11, 13, 5, 2, 2)
    torch.set_num_threads(1)
    one = ext_carafe(features, masks, 5, 2, 2)
    torch.set_num_threads(2)
    try:
        two = ext_carafe(features, masks, 5, 2, 2)
    finally:
        torch.set_num_threads(1)
    torch.testing.assert_close(one, two, atol=0, rtol=0)


# ----------------------------------------------------------------------------- public function


@pytest.mark.parametrize("disable", ["0", "1"])
def test_public_function_dispatch(monkeypatch, disable):
    monkeypatch.setenv("GLIMPSE_DISABLE_EXT", disable)
    calls = []
    real_ref = glimpse.ops.carafe.__globals__["carafe_ref"]
    monkeypatch.setitem(glimpse.ops.carafe.__globals__, "carafe_ref",
                        lambda *a: calls.append(1) or real_ref(*a))
    features, masks = random_inputs(1, 4, 3, 3, 3, 1, 2)
    out = carafe(features, masks, 3, 1, 2)
    torch.testing.assert_close(out, real_ref(features, masks, 3, 1, 2), atol=1e-5, rtol=1e-5)
    uses_ext = disable == "0" and "cpu" in glimpse.ops.kernel_status()["ops"]["carafe"]
    assert calls == ([] if uses_ext else [1])


def test_kernel_status_reports_what_is_built(monkeypatch):
    status = glimpse.ops.kernel_status()
    assert set(status) == {"loaded", "version", "disabled_by_env", "reason", "ops"}
    assert set(status["ops"]) == {"carafe", "masked_conv2d", "roi_align"}
    if status["loaded"]:
        assert "cpu" in status["ops"]["carafe"] and status["reason"] is None
    monkeypatch.setenv("GLIMPSE_DISABLE_EXT", "1")
    assert glimpse.ops.kernel_status()["disabled_by_env"]
    assert not _ext.available("carafe", "cpu", torch.float32)


def test_import_without_kernels_falls_back():
    code = (
        "import sys; sys.modules['glimpse_kernels'] = None\n"  # makes `import glimpse_kernels` fail
        "import torch, glimpse.ops as o\n"
        "s = o.kernel_status(); assert not s['loaded'] and 'glimpse_kernels' in s['reason'], s\n"
        "f = torch.randn(1, 4, 3, 3, requires_grad=True); m = torch.rand(1, 9, 6, 6)\n"
        "o.carafe(f, m, 3, 1, 2).sum().backward(); assert f.grad is not None\n"
        "x = torch.randn(1, 2, 4, 4); w = torch.randn(3, 2, 3, 3)\n"
        "assert o.masked_conv2d(x, torch.ones(1, 4, 4), w, None, 1).shape == (1, 3, 4, 4)\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize(
    "features_shape,masks_shape,k,g,s,match",
    [
        ((1, 4, 3, 3), (1, 16, 6, 6), 4, 1, 2, "odd"),
        ((1, 4, 3, 3), (1, 0, 6, 6), 0, 1, 2, "odd"),
        ((1, 6, 3, 3), (1, 36, 6, 6), 3, 4, 2, "divisible"),
        ((1, 4, 3, 3), (1, 10, 6, 6), 3, 1, 2, "9 channels"),
        ((1, 4, 3, 3), (1, 9, 6, 5), 3, 1, 2, r"\(6, 6\)"),
        ((1, 4, 3, 3), (1, 9, 3, 3), 3, 1, 2, "scale_factor"),
        ((4, 3, 3), (1, 9, 6, 6), 3, 1, 2, "4-D"),
        ((1, 4, 3, 3), (9, 6, 6), 3, 1, 2, "4-D"),
        ((2, 4, 3, 3), (1, 9, 6, 6), 3, 1, 2, "batch"),
        ((1, 4, 3, 3), (1, 9, 3, 3), 3, 1, 0, "scale_factor"),
        ((1, 4, 3, 3), (1, 9, 6, 6), 3, 0, 2, "group_size"),
    ],
)
@pytest.mark.parametrize("fn", [carafe, carafe_ref])
def test_argument_errors(fn, features_shape, masks_shape, k, g, s, match):
    with pytest.raises(ValueError, match=match):
        fn(torch.randn(features_shape), torch.rand(masks_shape), k, g, s)


@pytest.mark.parametrize("fn", [carafe, carafe_ref])
def test_dtype_and_device_mismatch(fn):
    features, masks = random_inputs(1, 4, 3, 3, 3, 1, 2)
    with pytest.raises(ValueError, match="float64"):
        fn(features, masks.double(), 3, 1, 2)
    with pytest.raises(ValueError, match="meta"):
        fn(features, masks.to("meta"), 3, 1, 2)


@pytest.mark.ext
def test_compiled_op_checks_arguments_too():
    with pytest.raises(RuntimeError, match="odd"):
        ext_carafe(torch.randn(1, 4, 3, 3), torch.rand(1, 16, 6, 6), 4, 1, 2)


@pytest.mark.parametrize("fn", [carafe, carafe_ref])
@pytest.mark.parametrize("n,h,w", [(0, 3, 4), (2, 0, 4), (1, 3, 0)])
def test_empty_inputs(fn, n, h, w):
    features, masks = random_inputs(n, 4, h, w, 3, 2, 2, grad=True)
    out = fn(features, masks, 3, 2, 2)
    assert out.shape == (n, 4, 2 * h, 2 * w)
    out.sum().backward()
    assert features.grad.shape == features.shape and masks.grad.shape == masks.shape


@pytest.mark.parametrize("fn", [carafe, carafe_ref])
def test_no_channels(fn):
    features, masks = random_inputs(1, 0, 3, 4, 3, 2, 2, grad=True)
    out = fn(features, masks, 3, 2, 2)
    assert out.shape == (1, 0, 6, 8)
    out.sum().backward()
    assert torch.count_nonzero(masks.grad) == 0


@pytest.mark.parametrize("fn", [carafe, carafe_ref])
def test_channels_last_and_non_contiguous(fn):
    features, masks = random_inputs(2, 8, 5, 6, 3, 2, 2, dtype=torch.float64)
    expected = fn(features, masks, 3, 2, 2)
    cl = fn(features.to(memory_format=torch.channels_last),
            masks.to(memory_format=torch.channels_last), 3, 2, 2)
    # Non-contiguous views holding the same values.
    f_nc = torch.randn(2, 16, 5, 6, dtype=torch.float64)[:, ::2]
    f_nc.copy_(features)
    m_nc = masks.transpose(2, 3).contiguous().transpose(2, 3)
    nc = fn(f_nc, m_nc, 3, 2, 2)
    torch.testing.assert_close(cl, expected)
    torch.testing.assert_close(nc, expected)


def test_flop_count_matches_paper_formula():
    # Reassembly costs 2 * s^2 * k^2 * C FLOPs per input location (CARAFE §3.3; reference §2.6).
    features, masks = random_inputs(2, 8, 5, 6, 5, 1, 2)
    with FlopCounterMode(display=False) as counter:
        carafe(features, masks, 5, 1, 2)
    assert counter.get_total_flops() == 2 * 4 * 25 * 8 * (2 * 5 * 6)


@pytest.mark.ext
def test_flop_count_includes_backward():
    features, masks = random_inputs(2, 8, 5, 6, 5, 1, 2, grad=True)
    with FlopCounterMode(display=False) as counter:
        ext_carafe(features, masks, 5, 1, 2).sum().backward()
    assert counter.get_total_flops() == 3 * 2 * 4 * 25 * 8 * (2 * 5 * 6)


@pytest.mark.slow
def test_torch_compile_fullgraph():
    features, masks = random_inputs(2, 8, 5, 6, 5, 2, 2, grad=True)
    compiled = torch.compile(carafe, fullgraph=True)
    out = compiled(features, masks, 5, 2, 2)
    gf, gm = torch.autograd.grad(out.square().sum(), (features, masks))
    ref = carafe_ref(features, masks, 5, 2, 2)
    rgf, rgm = torch.autograd.grad(ref.square().sum(), (features, masks))
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(gf, rgf, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(gm, rgm, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("n,c,h,w,k,g,s", SHAPES)
def test_cuda_matches_cpu(n, c, h, w, k, g, s, dtype):
    features, masks = random_inputs(n, c, h, w, k, g, s, dtype=torch.float64, grad=True)
    out = carafe_ref(features, masks, k, g, s)
    grad = torch.randn_like(out)
    gf, gm = torch.autograd.grad(out, (features, masks), grad)
    fc = features.detach().to("cuda", dtype).requires_grad_()
    mc = masks.detach().to("cuda", dtype).requires_grad_()
    out_c = carafe(fc, mc, k, g, s)
    gfc, gmc = torch.autograd.grad(out_c, (fc, mc), grad.to("cuda", dtype))
    tol = {torch.float16: 2e-2, torch.bfloat16: 1e-1}.get(dtype, 1e-5)
    for got, want in ((out_c, out), (gfc, gf), (gmc, gm)):
        torch.testing.assert_close(got.double().cpu(), want, atol=tol * k * k, rtol=tol)


@pytest.mark.cuda
@pytest.mark.ext
def test_cuda_gradcheck_and_opcheck():
    features, masks = random_inputs(1, 4, 2, 3, 3, 2, 2, dtype=torch.float64, grad=True)
    fc, mc = (t.detach().cuda().requires_grad_() for t in (features, masks))
    assert "cuda" in glimpse.ops.kernel_status()["ops"]["carafe"]
    assert torch.autograd.gradcheck(lambda f, m: ext_carafe(f, m, 3, 2, 2), (fc, mc))
    torch.library.opcheck(torch.ops.glimpse.carafe.default, (fc, mc, 3, 2, 2))


# ----------------------------------------------------------------------------- CUDA build


@pytest.mark.slow
def test_cuda_sources_compile_and_link(tmp_path):
    """Builds the CUDA variant here (no GPU needed) and loads it in a fresh process.

    Objects go to kernels/build/cuda-check (git-ignored) so that a rerun only rebuilds what
    changed; the first build takes several minutes on two cores.
    """
    from torch.utils.cpp_extension import CUDA_HOME

    # torch guesses CUDA_HOME from the nvcc on PATH (/usr/local/bin -> /usr/local), which has no
    # libcudart; the toolkit proper is /usr/local/cuda.
    cuda_home = os.environ.get("CUDA_HOME") or (
        "/usr/local/cuda" if Path("/usr/local/cuda/bin/nvcc").exists() else CUDA_HOME)
    if cuda_home is None:
        pytest.skip("no CUDA toolkit (nvcc) found")
    env = dict(os.environ, GLIMPSE_FORCE_CUDA="1", MAX_JOBS="1", CUDA_HOME=cuda_home,
               TORCH_CUDA_ARCH_LIST="8.0;9.0", OMP_NUM_THREADS="1")
    build = subprocess.run(
        [sys.executable, "setup.py", "build_ext", "--build-temp",
         str(REPO / "kernels" / "build" / "cuda-check"), "--build-lib", str(tmp_path / "lib")],
        cwd=REPO / "kernels", env=env, capture_output=True, text=True, timeout=3000,
    )
    assert build.returncode == 0, build.stdout[-4000:] + build.stderr[-4000:]
    (library,) = (tmp_path / "lib" / "glimpse_kernels").glob("_C*.so")
    # load_library dlopens with RTLD_NOW, so every symbol (ATen, c10_cuda, cudart) must resolve.
    check = (
        "import torch, sys\n"
        f"torch.ops.load_library({str(library)!r})\n"
        "has = torch._C._dispatch_has_kernel_for_dispatch_key\n"
        "for op in ('carafe', 'carafe_backward', 'masked_conv2d'):\n"
        "    assert has('glimpse::' + op, 'CUDA') and has('glimpse::' + op, 'CPU'), op\n"
    )
    loaded = subprocess.run([sys.executable, "-c", check], env=env, capture_output=True,
                            text=True, timeout=300)
    assert loaded.returncode == 0, loaded.stderr[-4000:]
