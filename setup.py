"""The C++/CUDA extension build for fawkes_fast (everything else is in pyproject.toml).

The C++/CUDA extension `fawkes_fast._C` (fused SSIM + tanh-space Adam ops) is built with
torch.utils.cpp_extension. CPU sources are always compiled; the .cu sources are added when the
installed torch has CUDA and a CUDA toolkit is found (CUDA_HOME / nvcc).

    pip install --no-build-isolation -e .

Environment knobs:
  FAWKES_FAST_NATIVE=0      do not add -march=native (default: on for x86_64/aarch64 builds; the
                            built .so is then tied to CPUs with the build machine's ISA)
  FAWKES_FAST_NO_CUDA=1     build the CPU-only extension even with a CUDA torch
  FAWKES_FAST_FORCE_CUDA=1  build the CUDA sources even if torch.cuda.is_available() is False
                            (needs a CUDA torch and CUDA_HOME; e.g. building on a GPU-less node)
  TORCH_CUDA_ARCH_LIST      as usual for torch extensions
"""
from __future__ import annotations

import glob
import os
import platform

from setuptools import find_packages, setup

try:
    import torch
    from torch.utils.cpp_extension import CUDA_HOME, BuildExtension, CppExtension, CUDAExtension
except ImportError as e:  # pragma: no cover
    raise SystemExit("fawkes_fast needs torch installed first (pip install torch), then "
                     "`pip install --no-build-isolation -e .`") from e

HERE = os.path.dirname(os.path.abspath(__file__))


def _want_cuda() -> bool:
    if os.environ.get("FAWKES_FAST_NO_CUDA", "0") == "1":
        return False
    if torch.version.cuda is None or CUDA_HOME is None:
        return False
    return torch.cuda.is_available() or os.environ.get("FAWKES_FAST_FORCE_CUDA", "0") == "1"


def _extension():
    cpp = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    cu = sorted(glob.glob(os.path.join("csrc", "*.cu")))
    cxx = ["-O3", "-fopenmp", "-fno-math-errno"]
    if os.environ.get("FAWKES_FAST_NATIVE", "1") != "0" and platform.machine() in ("x86_64", "AMD64", "aarch64"):
        cxx.append("-march=native")
    link = ["-fopenmp"]
    if _want_cuda():
        nvcc = ["-O3", "--expt-relaxed-constexpr", "-lineinfo"]
        return CUDAExtension("fawkes_fast._C", cpp + cu, include_dirs=[os.path.join(HERE, "csrc")],
                             extra_compile_args={"cxx": cxx, "nvcc": nvcc}, extra_link_args=link)
    return CppExtension("fawkes_fast._C", cpp, include_dirs=[os.path.join(HERE, "csrc")],
                        extra_compile_args={"cxx": cxx}, extra_link_args=link)


# Metadata, dependencies and the console script are in pyproject.toml; this file adds what a
# declarative file cannot: the extension, and the shipped data folder `models/` installed as
# the package `fawkes_fast.models`.
setup(
    packages=find_packages(include=["fawkes_fast", "fawkes_fast.*"]) + ["fawkes_fast.models"],
    package_dir={"fawkes_fast.models": "models"},
    package_data={"fawkes_fast.models": ["*.npz", "*.json", "*.pt"], "fawkes_fast.serve": ["page/*.html"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
