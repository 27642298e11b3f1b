"""Build glimpse_kernels: the compiled glimpse::* operators (CPU always, CUDA when possible).

    pip install --no-build-isolation --no-deps -e kernels/

CUDA kernels are built when a CUDA toolkit is found and either a GPU is visible or
``GLIMPSE_FORCE_CUDA=1`` (to check that they compile on a machine without a GPU). Set
``TORCH_CUDA_ARCH_LIST`` (e.g. ``"8.0;9.0"``) and ``MAX_JOBS`` to bound the build.
``GLIMPSE_FORCE_CPU=1`` skips CUDA even when a GPU is present.
"""

from __future__ import annotations

import glob
import os

import torch
from setuptools import setup
from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))


def _with_cuda() -> bool:
    if os.environ.get("GLIMPSE_FORCE_CPU", "0") == "1":
        return False
    wanted = torch.cuda.is_available() or os.environ.get("GLIMPSE_FORCE_CUDA", "0") == "1"
    return wanted and CUDA_HOME is not None


def _sources(pattern: str) -> list[str]:
    # Relative paths: setuptools refuses absolute ones in editable installs.
    return sorted(os.path.relpath(p, HERE) for p in glob.glob(os.path.join(HERE, pattern)))


def _extension():
    sources = _sources("csrc/*.cpp") + _sources("csrc/cpu/*.cpp")
    # -fopenmp: at::parallel_for is a header template that parallelises only under OpenMP; the
    # runtime is the libgomp torch already loaded (same soname), so torch.set_num_threads applies.
    cxx = ["-O3", "-fopenmp", "-Wall", "-Wno-unknown-pragmas", "-Wno-psabi"]
    kwargs = dict(
        name="glimpse_kernels._C",
        sources=sources,
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
        py_limited_api=False,
    )
    if _with_cuda():
        kwargs["sources"] = sources + _sources("csrc/cuda/*.cu")
        kwargs["extra_compile_args"]["nvcc"] = ["-O3", "--expt-relaxed-constexpr"]
        kwargs["define_macros"] = [("GLIMPSE_WITH_CUDA", "1")]
        return CUDAExtension(**kwargs)
    return CppExtension(**kwargs)


setup(
    name="glimpse_kernels",
    version="0.1.0",
    description="Compiled CPU/CUDA operators for glimpse (CARAFE, masked convolution)",
    packages=["glimpse_kernels"],
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension.with_options(no_python_abi_suffix=False)},
    zip_safe=False,
)
