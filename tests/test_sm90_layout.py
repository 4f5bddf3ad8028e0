"""The Hopper prefill tile's swizzled shared-memory layout and wgmma descriptor strides, checked
against CuTe on the host (nvcc and FlashInfer's CUTLASS headers; no GPU)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from vllm_pod.build_paths import cute_include_dir

ROOT = Path(__file__).resolve().parents[1]


def nvcc() -> str | None:
    cuda = os.environ.get("CUDA_HOME", "/usr/local/cuda")
    path = Path(cuda) / "bin" / "nvcc"
    return str(path) if path.exists() else shutil.which("nvcc")


@pytest.mark.skipif(nvcc() is None or cute_include_dir() is None, reason="needs nvcc and CuTe headers")
def test_sw128_layout_and_descriptors_match_cute(tmp_path):
    exe = tmp_path / "layout_check"
    subprocess.run([nvcc(), "-std=c++17", "-DPOD_WGMMA_PREFILL", f"-I{cute_include_dir()}",
                    f"-I{ROOT / 'csrc'}", "-gencode=arch=compute_90a,code=sm_90a",
                    str(ROOT / "tests" / "sm90" / "layout_check.cu"), "-o", str(exe)],
                   check=True, capture_output=True, text=True, timeout=600)
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-2000:]
    assert "0 failures" in run.stdout
