"""``python -m glimpse bench carafe``: the compiled CARAFE op against the pure-PyTorch reference.

Times forward and forward+backward of ``torch.ops.glimpse.carafe`` and of
:func:`glimpse.ops.carafe_ref` in the same run, with 1 and 2 threads, at the shapes the models use
(kernel 5, one group, scale 2: mmdet's FPN_CARAFE and CARAFE mask head): the FPN top-down
upsamplings of a 1216x800 batch of two (P5, P4 and P3 sized inputs) and the mask head's 14x14 RoI
features upsampled to 28x28 at 512 RoIs. Each call allocates its fresh output, as in a model.

Next to each time it reports the achieved GFLOP/s and GB/s and two floors, both measured in the
same run with the same thread count:

* ``floor_ms``, the machine's floor: max(bytes moved / bandwidth of a copy into an existing
  256 MB buffer, FLOPs / float32 2048^2 matmul throughput);
* ``fresh_alloc_floor_ms``: the same with the bandwidth of a copy into a fresh allocation
  (``clone``), which on CPU includes the first-touch page faults of the new memory.

The reference is timed only where its unfolded features fit in ``REFERENCE_LIMIT_BYTES``.
Peak memory of one forward+backward is measured in a fresh process per implementation (CPU:
growth of the resident-set high-water mark; CUDA: the caching allocator's peak). The machines are
shared and noisy: only same-run ratios mean anything.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch

__all__ = ["run"]

# (N, C, H, W) inputs: FPN top-down upsamplings of two 1216x800 images (the bulk of a
# faster_rcnn_r50_fpn_carafe step: P3->P2 is 16x and P4->P3 4x the P5->P4 work) and the mask head.
FPN_SHAPES = [(2, 256, 50, 76), (2, 256, 100, 152)]
MODEL_SHAPES = [(2, 256, 25, 38), *FPN_SHAPES, (512, 256, 14, 14)]
QUICK_SHAPES = [(1, 64, 25, 38)]
# The reference materialises k*k-times larger unfolded features; skip it beyond this size.
REFERENCE_LIMIT_BYTES = 2**30
KERNEL, GROUPS, SCALE = 5, 1, 2  # mmdet FPN_CARAFE: up_kernel=5, up_group=1, scale_factor=2


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


_CLOCK = time.perf_counter


def _median_seconds(fn: Callable[[], object], repeats: int, device: str) -> float:
    fn()  # warm-up: allocator, lazy initialisation
    _sync(device)
    times = []
    for _ in range(repeats):
        start = _CLOCK()
        fn()
        _sync(device)
        times.append(_CLOCK() - start)
    return statistics.median(times)


def _machine_floor(device: str, repeats: int) -> tuple[float, float, float]:
    """(clone GB/s, copy GB/s, float32 matmul GFLOP/s) on ``device``; GB/s count bytes read +
    written. ``copy`` writes into an existing buffer: the plain memory bandwidth. ``clone``
    writes a freshly allocated tensor, so on CPU it also pays the first-touch page faults."""
    src = torch.empty(64 * 2**20, device=device).uniform_()  # 256 MB, far beyond any cache
    dst = torch.empty_like(src)
    nbytes = 2 * src.numel() * 4
    clone_s = _median_seconds(src.clone, repeats, device)
    copy_s = _median_seconds(lambda: dst.copy_(src), repeats, device)
    a = torch.randn(2048, 2048, device=device)
    b = torch.randn(2048, 2048, device=device)
    mm_s = _median_seconds(lambda: a @ b, repeats, device)
    return nbytes / clone_s / 1e9, nbytes / copy_s / 1e9, 2 * 2048**3 / mm_s / 1e9


def _inputs(shape, device: str, dtype=torch.float32):
    n, c, h, w = shape
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(shape, generator=gen, dtype=dtype)
    masks = torch.randn(n, KERNEL**2 * GROUPS, h * SCALE, w * SCALE, generator=gen, dtype=dtype)
    masks = masks.view(n, GROUPS, KERNEL**2, h * SCALE, w * SCALE).softmax(2).view_as(masks)
    return features.to(device).requires_grad_(), masks.to(device).requires_grad_()


def _reference_fits(shape) -> bool:
    n, c, h, w = shape
    return 4 * n * c * KERNEL**2 * h * w <= REFERENCE_LIMIT_BYTES


def _impls() -> dict[str, Callable]:
    from glimpse.ops import carafe_ref, kernel_status

    impls = {"reference": carafe_ref}
    if kernel_status()["loaded"]:
        impls["compiled"] = torch.ops.glimpse.carafe
    return impls


def _cost(shape) -> tuple[int, int, int, int]:
    """(forward FLOPs, forward bytes, backward FLOPs, backward bytes) at float32."""
    n, c, h, w = shape
    out = n * c * h * w * SCALE**2
    feat, mask = n * c * h * w, n * KERNEL**2 * GROUPS * h * w * SCALE**2
    flops = 2 * out * KERNEL**2
    # forward reads features and masks and writes the output; backward reads grad_output,
    # features and masks and writes both gradients.
    return flops, 4 * (feat + mask + out), 2 * flops, 4 * (out + 2 * feat + 2 * mask)


def _peak_memory_mb(impl: str, shape, device: str) -> float:
    """Extra peak memory of one forward+backward, measured in a fresh process."""
    code = (
        "import json, sys, torch\n"
        "from glimpse.bench.carafe import _measure_peak\n"
        f"print(json.dumps(_measure_peak({impl!r}, {tuple(shape)!r}, {device!r})))\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                            timeout=1800)
    if result.returncode != 0:
        raise RuntimeError(f"peak-memory run of {impl} {shape} failed:\n{result.stderr[-2000:]}")
    return float(json.loads(result.stdout.strip().splitlines()[-1]))


def _rss_high_water_kb() -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    raise RuntimeError("VmHWM not found in /proc/self/status")


def _measure_peak(impl: str, shape, device: str) -> float:
    torch.set_num_threads(1)
    fn = _impls()[impl]
    # A tiny warm-up run first, so that lazy initialisation is not counted as the op's memory.
    tiny_f, tiny_m = _inputs((1, 4, 3, 3), device)
    torch.autograd.grad(fn(tiny_f, tiny_m, KERNEL, GROUPS, SCALE).sum(), (tiny_f, tiny_m))
    features, masks = _inputs(shape, device)
    grad = torch.ones(features.shape[0], features.shape[1], features.shape[2] * SCALE,
                      features.shape[3] * SCALE, device=device)
    if device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        base = _rss_high_water_kb() * 1024
    out = fn(features, masks, KERNEL, GROUPS, SCALE)
    torch.autograd.grad(out, (features, masks), grad)
    if device == "cuda":
        torch.cuda.synchronize()
        return (torch.cuda.max_memory_allocated() - base) / 2**20
    return (_rss_high_water_kb() * 1024 - base) / 2**20


def run(shapes, threads: list[int], repeats: int, device: str = "cpu",
        memory: bool = True):
    """Returns (table as a pandas DataFrame, machine description dict)."""
    import pandas as pd

    impls = _impls()
    rows, machine = [], {"device": device, "torch": torch.__version__}
    for nthreads in threads:
        torch.set_num_threads(nthreads)
        clone_gbps, copy_gbps, mm_gflops = _machine_floor(device, repeats)
        machine[f"clone_GBps_{nthreads}t"] = round(clone_gbps, 2)
        machine[f"copy_GBps_{nthreads}t"] = round(copy_gbps, 2)
        machine[f"matmul_GFLOPs_{nthreads}t"] = round(mm_gflops, 1)
        for shape in shapes:
            fwd_flops, fwd_bytes, bwd_flops, bwd_bytes = _cost(shape)
            timed = {k: f for k, f in impls.items() if k != "reference" or _reference_fits(shape)}
            features, masks = _inputs(shape, device)
            grad = torch.ones(features.shape[0], features.shape[1], features.shape[2] * SCALE,
                              features.shape[3] * SCALE, device=device)
            times = {}
            for name, fn in timed.items():
                def forward(fn=fn):
                    with torch.no_grad():
                        return fn(features, masks, KERNEL, GROUPS, SCALE)

                def forward_backward(fn=fn):
                    out = fn(features, masks, KERNEL, GROUPS, SCALE)
                    return torch.autograd.grad(out, (features, masks), grad)

                times[name, "forward"] = _median_seconds(forward, repeats, device)
                times[name, "forward+backward"] = _median_seconds(forward_backward, repeats,
                                                                  device)
            for (name, mode), seconds in times.items():
                flops = fwd_flops if mode == "forward" else fwd_flops + bwd_flops
                nbytes = fwd_bytes if mode == "forward" else fwd_bytes + bwd_bytes
                compute = flops / (mm_gflops * 1e9)
                floor = max(nbytes / (copy_gbps * 1e9), compute)
                fresh_floor = max(nbytes / (clone_gbps * 1e9), compute)
                ref = times.get(("reference", mode), float("nan"))
                rows.append({
                    "shape": "x".join(map(str, shape)),
                    "threads": nthreads,
                    "impl": name,
                    "pass": mode,
                    "ms": seconds * 1e3,
                    "speedup_vs_ref": ref / seconds,
                    "GFLOPs": flops / seconds / 1e9,
                    "GBps": nbytes / seconds / 1e9,
                    "floor_ms": floor * 1e3,
                    "x_floor": seconds / floor,
                    "fresh_alloc_floor_ms": fresh_floor * 1e3,
                    "x_fresh_alloc_floor": seconds / fresh_floor,
                })
            del features, masks, grad
    table = pd.DataFrame(rows)
    if memory:
        peaks = {(name, "x".join(map(str, s))): _peak_memory_mb(name, s, device)
                 for name in impls for s in shapes if name != "reference" or _reference_fits(s)}
        table["peak_MB_fwd_bwd"] = [peaks[r.impl, r.shape] for r in table.itertuples()]
    return table, machine
