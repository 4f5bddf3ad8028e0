"""Builds vllm_pod._C (the fused POD kernel) with torch's cpp_extension and ninja.

Targets sm_90a (H100/H200) and sm_80 (A100) unless TORCH_CUDA_ARCH_LIST says otherwise; needs nvcc,
not a GPU. One .cu per (dtype, head dim) instantiation so the build runs in parallel.
"""

import glob
import os
import sys

from setuptools import find_packages, setup

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # vllm_pod.build_paths, pre-install

os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")

from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # noqa: E402

from vllm_pod.build_paths import cute_include_dir  # noqa: E402

# The Hopper prefill tile (wgmma) is built into the sm_90a code when CuTe's headers are found
# (FlashInfer, a vLLM dependency, ships them); POD_WGMMA_PREFILL=0 builds the mma.sync tile only.
# POD_NVCC_FLAGS: extra flags for diagnosis builds, e.g. "-DPOD_TRACE=1" (docs/tuning.md).
extra_flags = os.environ.get("POD_NVCC_FLAGS", "").split()
include_dirs = [os.path.abspath("csrc")]
if "9.0a" in os.environ["TORCH_CUDA_ARCH_LIST"] and os.environ.get("POD_WGMMA_PREFILL", "1") != "0":
    cute = cute_include_dir()
    if cute is None:
        print("vllm-pod: CuTe headers not found (install flashinfer-python); sm_90a gets the mma.sync "
              "prefill tile", file=sys.stderr)
    else:
        extra_flags.append("-DPOD_WGMMA_PREFILL")
        include_dirs.append(cute)

ext = CUDAExtension(
    name="vllm_pod._C",
    sources=["csrc/pod_attention.cpp", *sorted(glob.glob("csrc/instantiations/*.cu"))],
    include_dirs=include_dirs,
    extra_compile_args={
        "cxx": [*extra_flags, "-O3"],  # torch picks the C++ standard it needs (20 from 2.14)
        "nvcc": [*extra_flags, "-O3", "--use_fast_math", "-lineinfo",
                 "-U__CUDA_NO_HALF_OPERATORS__", "-U__CUDA_NO_HALF_CONVERSIONS__",
                 "-U__CUDA_NO_BFLOAT16_CONVERSIONS__"],
    },
)

setup(
    name="vllm-pod",
    version="0.1.0",
    description="POD-Attention (fused prefill+decode attention) as a vLLM attention backend",
    packages=find_packages(include=["vllm_pod", "vllm_pod.*"]),
    python_requires=">=3.10",
    install_requires=["numpy", "numba"],  # numba: the planner core (vLLM depends on it too)
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"vllm.general_plugins": ["pod = vllm_pod:register"]},
)
