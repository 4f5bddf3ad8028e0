"""Builds vllm_pod._C (the fused POD kernel) with torch's cpp_extension and ninja.

Targets sm_90a (H100/H200) and sm_80 (A100) unless TORCH_CUDA_ARCH_LIST says otherwise; needs nvcc,
not a GPU. One .cu per (dtype, head dim) instantiation so the build runs in parallel.
"""

import glob
import os

from setuptools import find_packages, setup

os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0a")

from torch.utils.cpp_extension import BuildExtension, CUDAExtension  # noqa: E402

ext = CUDAExtension(
    name="vllm_pod._C",
    sources=["csrc/pod_attention.cpp", *sorted(glob.glob("csrc/instantiations/*.cu"))],
    include_dirs=[os.path.abspath("csrc")],
    extra_compile_args={
        "cxx": [*os.environ.get("POD_NVCC_FLAGS", "").split(), "-O3", "-std=c++17"],
        # POD_NVCC_FLAGS: extra flags for tuning builds, e.g. "-DPOD_PREFILL_MTILES=1".
        "nvcc": [*os.environ.get("POD_NVCC_FLAGS", "").split(), "-O3", "-std=c++17", "--use_fast_math", "-lineinfo",
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
    install_requires=["numpy"],
    ext_modules=[ext],
    cmdclass={"build_ext": BuildExtension},
    entry_points={"vllm.general_plugins": ["pod = vllm_pod:register"]},
)
